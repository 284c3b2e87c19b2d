"""Bytewax operators of the frame flow: decode frames, score them per target, and their records.

``score_frames`` is keyed by target, so one worker owns each target's
warm-up. A target that the bank does not know yet learns its references from
the stream: its first ``references`` usable frames (header rules) are held in
the step's state and then indexed and calibrated in one go
(:meth:`operators.framepipe.FramePipeline.index`); they come out as skipped
("reference ..."), every later frame is scored. A target indexed beforehand
(``vigil-frames index``) is scored from its first frame. The pipeline (the
onnxruntime session and the Milvus client) is opened once per process when
the flow starts, never held in state; the state is only the warm-up frames,
so a crash during the warm-up resumes it.

Records (JSON, one per message or line):

* alert: ``{"alert_id", "frame_id", "camera", "target", "ut", "score",
  "threshold", "severity", "reason", "boxes": [{"x0", "y0", "x1", "y1",
  "score"}], "truth": [...]}`` for each anomalous frame;
* result: ``{"frame_id", "camera", "target", "ut", "score", "threshold",
  "is_anomaly", "boxes", "skipped"}`` for every frame (``score`` null when skipped).
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.events import DeadLetter, RawBatch
from operators.framecodec import decode_frame
from operators.frameimage import FrameDecodeError, FrameLimits
from operators.framepipe import FramePipeline
from operators.frames import Box, Frame, ScoredFrame
from operators.metrics import ALERTS, EVENTS, Progress, count_dead_letter

logger = logging.getLogger(__name__)

_NAMESPACE = uuid.UUID("6f1f4f5e-3a6b-4c55-9d2e-7a1c0b9e2f11")
#: A frame scoring this many thresholds or more is critical.
CRITICAL_FACTOR = 2.0


@dataclass(frozen=True)
class DecodeFramesOut:
    """Streams out of :func:`decode_frames`."""

    oks: Stream[Frame]
    errs: Stream[DeadLetter]


@operator
def decode_frames(
    step_id: str, up: Stream[RawBatch], flow_name: str, limits: FrameLimits
) -> DecodeFramesOut:
    """Decode frame messages; every bad one becomes a dead letter with its reason.

    Args:
        step_id: Unique id.
        up: Raw micro-batches.
        flow_name: Name of the flow, for metrics.
        limits: What decoding accepts (sizes, reference folders).

    """
    progress = Progress(flow_name)
    events = EVENTS.labels(flow=flow_name, step=step_id)

    def _decode(raw: RawBatch) -> list[Frame | DeadLetter]:
        out: list[Frame | DeadLetter] = []
        dead = 0
        for key, value, offset in zip(raw.keys, raw.values, raw.offsets, strict=True):
            try:
                if value is None:
                    raise FrameDecodeError("value", "expected a frame message, got a tombstone")
                frame = decode_frame(value, limits=limits)
            except FrameDecodeError as err:
                reason = str(err)
                out.append(
                    DeadLetter(raw.origin, raw.partition, offset, key, value, "decode", reason)
                )
                count_dead_letter(flow_name, "decode", reason)
                dead += 1
                continue
            out.append(
                dataclasses.replace(
                    frame, origin=raw.origin, partition=raw.partition, offset=offset
                )
            )
        events.inc(len(raw))
        progress.add(len(raw), dead)
        return out

    items = op.flat_map("decode", up, _decode)
    split = op.branch("split", items, lambda x: isinstance(x, Frame))
    oks: Stream[Frame] = split.trues  # type: ignore[assignment]
    errs: Stream[DeadLetter] = split.falses  # type: ignore[assignment]
    return DecodeFramesOut(oks, errs)


@dataclass
class WarmUp:
    """A target's reference frames collected so far (picklable step state)."""

    frames: list[Frame] = field(default_factory=list)


class SharedPipeline:
    """One :class:`FramePipeline` per process, opened on first use, shared by worker threads.

    Args:
        opener: Builds and opens the pipeline (called once, when the flow runs).

    """

    def __init__(self, opener: Callable[[], FramePipeline]) -> None:
        self._opener = opener
        self._pipeline: FramePipeline | None = None
        self.lock = threading.Lock()

    def get(self) -> FramePipeline:
        """The pipeline; call with :attr:`lock` held."""
        if self._pipeline is None:
            self._pipeline = self._opener()
            # The bank's client must be closed before the interpreter goes (Lite flushes then).
            atexit.register(self.close)
        return self._pipeline

    def close(self) -> None:
        """Close the bank, if open (idempotent)."""
        with self.lock:
            pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.bank.close()


class _ScoreLogic(StatefulBatchLogic[Frame, ScoredFrame, WarmUp]):
    def __init__(self, shared: SharedPipeline, references: int, state: WarmUp) -> None:
        self.shared = shared
        self.references = references
        self.state = state

    def on_batch(self, values: list[Frame]) -> tuple[Iterable[ScoredFrame], bool]:
        out: list[ScoredFrame] = []
        with self.shared.lock:
            pipeline = self.shared.get()
            for frame in values:
                out.append(self._one(pipeline, frame))
        return out, StatefulBatchLogic.RETAIN

    def _one(self, pipeline: FramePipeline, frame: Frame) -> ScoredFrame:
        if pipeline.model(frame.target) is not None:
            return pipeline.score(frame)
        _, unusable = pipeline.usable([frame])
        if unusable:
            return skipped(frame, unusable[0][1])
        self.state.frames.append(frame)
        n = len(self.state.frames)
        if n < self.references:
            return skipped(frame, f"reference: warm-up frame {n} of {self.references}")
        pipeline.index(frame.target, self.state.frames)
        self.state.frames = []
        return skipped(frame, f"reference: warm-up frame {n} of {n}; target indexed")

    def snapshot(self) -> WarmUp:
        return WarmUp(list(self.state.frames))


@operator
def score_frames(
    step_id: str, up: Stream[Frame], shared: SharedPipeline, references: int
) -> Stream[ScoredFrame]:
    """Score frames against their target's references (warming up unknown targets).

    Args:
        step_id: Unique id.
        up: Decoded frames.
        shared: The process's pipeline.
        references: Usable frames an unknown target collects before it is indexed.

    """
    if references < 5:
        msg = f"{step_id}: expected references >= 5, got {references}"
        raise ValueError(msg)
    keyed: KeyedStream[Frame] = op.key_on("by_target", up, lambda f: f.target)

    def builder(resume: WarmUp | None) -> _ScoreLogic:
        return _ScoreLogic(shared, references, resume or WarmUp())

    scored = op.stateful_batch("score", keyed, builder)
    return op.key_rm("unkey", scored)


def skipped(frame: Frame, reason: str) -> ScoredFrame:
    """A frame routed away unscored, with the reason."""
    nan = float("nan")
    return ScoredFrame(frame, nan, nan, is_anomaly=False, anomaly_map=None, skipped=reason)


def frame_alert_id(frame: Frame) -> str:
    """Stable alert id: ``uuid5`` of camera and frame id (a replay gives the same id).

    Example:
        >>> from datetime import datetime, timezone
        >>> import numpy as np
        >>> from operators.frames import FrameHeader
        >>> h = FrameHeader(2, 2, datetime(2024, 9, 1, tzinfo=timezone.utc), "M31", 0, 0, 60, 0,
        ...                 7200, 10, 48, 9, 90)
        >>> f = Frame("cam1-000007", "cam1", h, np.zeros((2, 2), np.uint16))
        >>> frame_alert_id(f) == frame_alert_id(f)
        True

    """
    return str(uuid.uuid5(_NAMESPACE, f"{frame.camera}\x1f{frame.frame_id}"))


def _box(b: Box) -> dict[str, Any]:
    return {"x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1, "score": round(b.score, 3)}


def _truth(frame: Frame) -> list[list[Any]]:
    return [[b.x0, b.y0, b.x1, b.y1, b.kind] for b in frame.truth]


def alert_reason(item: ScoredFrame) -> str:
    """Why the frame alerted: its regions, where, and how far above the threshold."""
    regions = ", ".join(
        f"x {b.x0}-{b.x1} y {b.y0}-{b.y1} ({b.score / item.threshold:.1f}x)" for b in item.boxes[:5]
    )
    more = f" and {len(item.boxes) - 5} more" if len(item.boxes) > 5 else ""
    return (
        f"patches unlike any reference of {item.frame.target!r} at the same place: "
        f"score {item.score:.2f} > threshold {item.threshold:.2f} (leave-one-out, "
        f"{len(item.boxes)} region(s): {regions}{more})"
    )


def alert_message(item: ScoredFrame) -> tuple[bytes, bytes]:
    """The alert of an anomalous frame as ``(key, JSON bytes)``, keyed by its alert id."""
    f = item.frame
    severity = "critical" if item.score >= CRITICAL_FACTOR * item.threshold else "warning"
    ALERTS.labels(flow="frames", severity=severity).inc()
    aid = frame_alert_id(f)
    record = {
        "alert_id": aid,
        "frame_id": f.frame_id,
        "camera": f.camera,
        "target": f.target,
        "ut": f.header.ut.isoformat(),
        "score": round(item.score, 4),
        "threshold": round(item.threshold, 4),
        "severity": severity,
        "reason": alert_reason(item),
        "boxes": [_box(b) for b in item.boxes],
        "truth": _truth(f) or None,
    }
    return aid.encode(), orjson.dumps(record)


def result_message(item: ScoredFrame) -> tuple[bytes, bytes]:
    """Every frame's decision as ``(key, JSON bytes)``, keyed by camera."""
    f = item.frame
    record = {
        "frame_id": f.frame_id,
        "camera": f.camera,
        "target": f.target,
        "ut": f.header.ut.isoformat(),
        "score": None if item.skipped else round(item.score, 4),
        "threshold": None if item.skipped else round(item.threshold, 4),
        "is_anomaly": item.is_anomaly,
        "boxes": [_box(b) for b in item.boxes],
        "skipped": item.skipped,
        "truth": _truth(f) or None,
        "unusable": f.unusable,
    }
    return f.camera.encode(), orjson.dumps(record)
