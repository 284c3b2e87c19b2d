"""In-process Bytewax source of simulated messages, partitioned like Kafka.

:class:`SimulatorSource` feeds a flow the exact bytes the ``vigil-generate``
CLI would produce to a topic, for any simulator (sensors, metrics, bears): each
message goes to partition ``crc32(key) % partitions`` (librdkafka's default
``consistent_random`` partitioner for keyed messages) with offsets counting
from 0 in each partition. Its resume state is the next offset of a partition; a resumed
partition regenerates the deterministic stream and skips to that offset.

Example:
    >>> from bytewax.dataflow import Dataflow
    >>> import bytewax.operators as op
    >>> from bytewax.testing import TestingSink, run_main
    >>> from generators.sensors import SensorSimConfig
    >>> out = []
    >>> flow = Dataflow("demo")
    >>> batches = op.input("in", flow, SimulatorSource(SensorSimConfig(count=50), partitions=2))
    >>> op.output("out", op.map("n", batches, len), TestingSink(out))
    >>> run_main(flow)
    >>> sum(out)
    50

"""

from __future__ import annotations

import logging
import time
import zlib
from datetime import UTC, datetime, timedelta

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from generators.simkit import SimChunk, Simulation
from operators.events import RawBatch

logger = logging.getLogger(__name__)

ORIGIN = "simulator"
# When paced, a batch waits for more messages at most this long after its first is due.
MAX_BATCH_DELAY_S = 0.05


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a keyed message: ``crc32(key) % partitions``.

    This is librdkafka's default partitioner for keyed messages, so a topic
    written by the CLI holds each series in the same partition.

    Example:
        >>> [partition_of(str(i).encode(), 4) for i in range(5)]
        [1, 3, 1, 3, 0]

    """
    return zlib.crc32(key) % partitions


class _SimPartition(StatefulSourcePartition[RawBatch, int]):
    """One partition: the shared stream filtered to this partition's series."""

    def __init__(
        self,
        sim: Simulation,
        index: int,
        series: list[int],
        resume: int,
        batch_size: int,
        rate: float,
    ) -> None:
        self.index = index
        self.batch_size = batch_size
        self.rate = rate
        self.next_offset = resume
        self.encoder = sim.encoder()
        self.series = np.array(series, dtype=np.int64)
        self.chunks = sim.chunks() if series else iter(())
        self.keys: list[bytes] = []
        self.values: list[bytes] = []
        self.positions: list[int] = []  # index of each pending message in the whole stream
        self.pos = 0
        self.done = not self._load(resume)
        # Pace against the position reached, so a resumed partition carries on at once.
        first = self.positions[0] if self.positions else 0
        self.anchor = time.monotonic() - (first / rate if rate > 0 else 0.0)

    def _next_own(self) -> tuple[SimChunk, list[int]] | None:
        """The next chunk's events of this partition and their positions in the stream."""
        chunk = next(self.chunks, None)
        if chunk is None:
            return None
        mask = np.isin(chunk.series, self.series)
        return chunk.take(mask), (chunk.start + np.flatnonzero(mask)).tolist()

    def _load(self, skip: int) -> bool:
        """Encode the next chunk holding more than ``skip`` of this partition's messages.

        Messages before it, and the first ``skip`` in it, are skipped without
        encoding. False at the end of the stream.
        """
        while (own := self._next_own()) is not None:
            chunk, positions = own
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            keys, values = self.encoder.encode(chunk)
            self.keys, self.values = keys[skip:], values[skip:]
            self.positions = positions[skip:]
            self.pos = 0
            return True
        return False

    def _due(self, i: int) -> float:
        return self.anchor + self.positions[i] / self.rate

    def next_batch(self) -> list[RawBatch]:
        """Up to ``batch_size`` messages (only those due, when paced)."""
        if self.pos >= len(self.values) and (self.done or not self._load(0)):
            self.done = True
            raise StopIteration
        end = min(self.pos + self.batch_size, len(self.values))
        if self.rate > 0:
            now = time.monotonic()
            lo, hi = self.pos, end
            while lo < hi:  # first pending message not yet due
                mid = (lo + hi) // 2
                if self._due(mid) <= now:
                    lo = mid + 1
                else:
                    hi = mid
            end = lo
        if end == self.pos:
            return []
        n = end - self.pos
        batch = RawBatch(
            ORIGIN,
            self.index,
            tuple(self.keys[self.pos : end]),
            tuple(self.values[self.pos : end]),
            tuple(range(self.next_offset, self.next_offset + n)),
        )
        self.pos = end
        self.next_offset += n
        return [batch]

    def next_awake(self) -> datetime | None:
        """When the pending messages fill a batch or have waited long enough (unpaced: ``None``)."""
        if self.rate <= 0 or self.pos >= len(self.values):
            return None
        full = min(self.pos + self.batch_size, len(self.values)) - 1
        due = min(self._due(full), self._due(self.pos) + MAX_BATCH_DELAY_S)
        wait = due - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(wait, 0.0))

    def snapshot(self) -> int:
        """The next offset of this partition."""
        return self.next_offset


class SimulatorSource(FixedPartitionedSource[RawBatch, int]):
    """A simulator as a partitioned Bytewax source of :class:`RawBatch`.

    Args:
        cfg: Simulator settings, such as a
            :class:`~generators.sensors.SensorSimConfig` or a
            :class:`~generators.metrics.MetricSimConfig` or a
            :class:`~generators.bears.BearSimConfig` (their ``count``
            bounds the whole source; 0: endless).
        partitions: Number of partitions, like a topic's.
        batch_size: Most messages per emitted batch.
        rate: Events per second across the whole source, paced by the wall
            clock (each message is due at its position in the stream divided
            by ``rate``; a batch is emitted when full or when its first message
            has waited ``MAX_BATCH_DELAY_S``); 0 emits as fast as the flow
            takes them.

    Raises:
        ValueError: for a bad argument or simulator setting.

    """

    def __init__(
        self,
        cfg: Simulation,
        *,
        partitions: int = 4,
        batch_size: int = 1000,
        rate: float = 0.0,
    ) -> None:
        cfg.validate()
        if partitions < 1:
            msg = f"simulator source: expected partitions >= 1, got {partitions}"
            raise ValueError(msg)
        if batch_size < 1:
            msg = f"simulator source: expected batch_size >= 1, got {batch_size}"
            raise ValueError(msg)
        if not rate >= 0:
            msg = f"simulator source: expected rate >= 0 events/s, got {rate}"
            raise ValueError(msg)
        self.cfg = cfg
        self.partitions = partitions
        self.batch_size = batch_size
        self.rate = rate

    def list_parts(self) -> list[str]:
        """Every partition, ``"0"`` to ``str(partitions - 1)``."""
        return [str(i) for i in range(self.partitions)]

    def series_of(self, partition: int) -> list[int]:
        """Indices of the series whose messages go to ``partition``."""
        return [
            i
            for i, sid in enumerate(self.cfg.series_ids)
            if partition_of(sid.encode(), self.partitions) == partition
        ]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SimPartition:
        """Build partition ``for_part``, skipping to offset ``resume_state``."""
        index = int(for_part)
        if resume_state:
            logger.info("simulator partition %d resumes at offset %d", index, resume_state)
        return _SimPartition(
            self.cfg,
            index,
            self.series_of(index),
            resume_state or 0,
            self.batch_size,
            self.rate,
        )
