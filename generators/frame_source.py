"""In-process Bytewax source of simulated telescope frames, partitioned like Kafka.

:class:`FrameSimulatorSource` feeds a flow the exact bytes
:func:`generators.telescope.iter_messages` produces (and ``vigil-generate
frames`` would produce to a topic), as :class:`~operators.events.RawBatch`
items: each camera's frames go to partition ``crc32(camera) % partitions``
(:func:`generators.source.partition_of`, librdkafka's default partitioner),
with offsets counting from 0 in each partition. A partition plans and renders
only its own cameras' frames. Frames are few and large, so a batch holds a
handful. The resume state is a partition's next offset: a resumed partition
plans the frames before it (cheap) without rendering them.

Example:
    >>> from bytewax.dataflow import Dataflow
    >>> import bytewax.operators as op
    >>> from bytewax.testing import TestingSink, run_main
    >>> from generators.telescope import TelescopeSimConfig
    >>> cfg = TelescopeSimConfig(count=5, cameras=("a", "b"), width=32, height=32, stars=5)
    >>> out = []
    >>> flow = Dataflow("demo")
    >>> batches = op.input("in", flow, FrameSimulatorSource(cfg, partitions=2))
    >>> op.output("out", op.map("n", batches, len), TestingSink(out))
    >>> run_main(flow)
    >>> sum(out)
    5

"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from generators.framesim import FramePlan
from generators.source import ORIGIN, partition_of
from generators.telescope import FrameStream, TelescopeSimConfig
from operators.events import RawBatch
from operators.framecodec import ENCODINGS

__all__ = ["FrameSimulatorSource"]

logger = logging.getLogger(__name__)


class _FramePartition(StatefulSourcePartition[RawBatch, int]):
    """One partition: the frames of its cameras, rendered and encoded as they are due."""

    def __init__(
        self,
        source: FrameSimulatorSource,
        index: int,
        cameras: list[int],
        resume: int,
    ) -> None:
        self.index = index
        self.source = source
        self.next_offset = resume
        self.stream = FrameStream(source.cfg, cameras)
        plans = self.stream.plans if cameras else iter(())
        for _ in range(resume):  # plan, without rendering, the frames already delivered
            if next(plans, None) is None:
                break
        self.plans = plans
        self.pending: FramePlan | None = next(plans, None)
        # Pace against the position reached, so a resumed partition carries on at once.
        first = self.pending.position if self.pending is not None else 0
        rate = source.fps
        self.anchor = time.monotonic() - (first / rate if rate > 0 else 0.0)

    def _due(self, plan: FramePlan) -> float:
        return self.anchor + plan.position / self.source.fps

    def next_batch(self) -> list[RawBatch]:
        """Up to ``batch_size`` frames (only those due, when paced)."""
        if self.pending is None:
            raise StopIteration
        src = self.source
        keys: list[bytes] = []
        values: list[bytes] = []
        now = time.monotonic()
        while self.pending is not None and len(values) < src.batch_size:
            if src.fps > 0 and self._due(self.pending) > now:
                break
            key, value = self.stream.message(self.pending, src.encoding, src.ref_dir)
            keys.append(key)
            values.append(value)
            self.pending = next(self.plans, None)
        if not values:
            return []
        offsets = tuple(range(self.next_offset, self.next_offset + len(values)))
        self.next_offset += len(values)
        return [RawBatch(ORIGIN, self.index, tuple(keys), tuple(values), offsets)]

    def next_awake(self) -> datetime | None:
        """When the next frame is due (unpaced: ``None``)."""
        if self.source.fps <= 0 or self.pending is None:
            return None
        wait = self._due(self.pending) - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(wait, 0.0))

    def snapshot(self) -> int:
        """The next offset of this partition."""
        return self.next_offset


class FrameSimulatorSource(FixedPartitionedSource[RawBatch, int]):
    """The telescope simulator as a partitioned Bytewax source of :class:`RawBatch`.

    Args:
        cfg: Simulator settings (``count`` bounds the whole source; 0: endless).
        partitions: Number of partitions, like a topic's.
        batch_size: Most frames per emitted batch.
        fps: Frames per second across the whole source, paced by the wall
            clock (frame ``i`` of the stream is due ``i / fps`` seconds after
            the start); 0 emits as fast as frames are rendered.
        encoding: Payload of each message: ``"png"``, ``"fits"`` or ``"ref"``.
        ref_dir: Folder of the frame files of ``"ref"`` messages.

    Raises:
        ValueError: for a bad argument or simulator setting.

    """

    def __init__(
        self,
        cfg: TelescopeSimConfig,
        *,
        partitions: int = 1,
        batch_size: int = 4,
        fps: float = 0.0,
        encoding: str = "png",
        ref_dir: Path | None = None,
    ) -> None:
        cfg.validate()
        who = "frame simulator source"
        if partitions < 1:
            raise ValueError(f"{who}: expected partitions >= 1, got {partitions}")
        if batch_size < 1:
            raise ValueError(f"{who}: expected batch_size >= 1, got {batch_size}")
        if not 0.0 <= fps < float("inf"):
            raise ValueError(f"{who}: expected fps >= 0 frames/s, got {fps}")
        if encoding not in ENCODINGS:
            raise ValueError(f"{who}: expected an encoding in {ENCODINGS}, got {encoding!r}")
        if encoding == "ref" and ref_dir is None:
            raise ValueError(f"{who}: encoding 'ref' needs ref_dir, the folder of the frame files")
        self.cfg = cfg
        self.partitions = partitions
        self.batch_size = batch_size
        self.fps = fps
        self.encoding = encoding
        self.ref_dir = ref_dir

    def list_parts(self) -> list[str]:
        """Every partition, ``"0"`` to ``str(partitions - 1)``."""
        return [str(i) for i in range(self.partitions)]

    def cameras_of(self, partition: int) -> list[int]:
        """Indices of the cameras whose frames go to ``partition``."""
        return [
            i
            for i, cam in enumerate(self.cfg.cameras)
            if partition_of(cam.encode(), self.partitions) == partition
        ]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FramePartition:
        """Build partition ``for_part``, skipping to offset ``resume_state``."""
        index = int(for_part)
        if resume_state:
            logger.info("frame simulator partition %d resumes at offset %d", index, resume_state)
        return _FramePartition(self, index, self.cameras_of(index), resume_state or 0)
