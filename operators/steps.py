"""Bytewax operators of the hot path: decode, normalize, detect and alert.

Each operator takes and gives micro-batches (one Bytewax item per series and
source batch), so the runtime's per-item cost is paid once per batch. State is
kept per series in picklable objects; snapshots are deep copies.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.alerting import AlertPolicy, AlertState, apply_policy
from operators.calibrate import calibrate
from operators.decode import decode_batch
from operators.detectors import Detector, make_detector
from operators.detectors.robust import Flatline, Gap, repeat_runs
from operators.events import (
    Alert,
    DeadLetter,
    DetectedBatch,
    RawBatch,
    ScoredBatch,
    SeriesBatch,
)
from operators.metrics import ALERTS, Progress, count_dead_letter, step_metrics
from operators.normalize import Normalizer
from operators.serde import SENSORS, WireFormat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeOut:
    """Streams out of :func:`decode`: readings keyed by series, and dead letters."""

    oks: KeyedStream[SeriesBatch]
    errs: Stream[DeadLetter]


@operator
def decode(
    step_id: str, up: Stream[RawBatch], flow_name: str, fmt: WireFormat = SENSORS
) -> DecodeOut:
    """Decode raw batches into per-series batches; bad messages become dead letters.

    Args:
        step_id: Unique id.
        up: Raw micro-batches from a source.
        flow_name: Name of the flow, for metrics.
        fmt: Field names of the wire format.

    """
    progress = Progress(flow_name)
    metrics = step_metrics(flow_name, "decode")

    def _decode(raw: RawBatch) -> list[SeriesBatch | DeadLetter]:
        started = time.perf_counter()
        out = decode_batch(raw, fmt)
        metrics.observe(len(raw), len(raw) - len(out.errs), time.perf_counter() - started)
        progress.add(len(raw), len(out.errs))
        for err in out.errs:
            count_dead_letter(flow_name, err.step, err.reason)
        return [*out.oks, *out.errs]

    items = op.flat_map("decode", up, _decode)
    split = op.branch("split", items, lambda x: isinstance(x, SeriesBatch))
    oks: Stream[SeriesBatch] = split.trues  # type: ignore[assignment]
    errs: Stream[DeadLetter] = split.falses  # type: ignore[assignment]
    return DecodeOut(op.key_on("by_series", oks, lambda b: b.series), errs)


@dataclass
class NormalizeState:
    """One series' normalizer and the latest event time accepted."""

    normalizer: Normalizer
    last_ts_ms: int | None = None


class _NormalizeLogic(StatefulBatchLogic[SeriesBatch, SeriesBatch | DeadLetter, NormalizeState]):
    def __init__(self, state: NormalizeState, flow_name: str) -> None:
        self.state = state
        self.flow_name = flow_name

    def on_batch(
        self, values: list[SeriesBatch]
    ) -> tuple[Iterable[SeriesBatch | DeadLetter], bool]:
        out: list[SeriesBatch | DeadLetter] = []
        for batch in values:
            out.extend(normalize_batch(self.state, batch, self.flow_name))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> NormalizeState:
        return copy.deepcopy(self.state)


def normalize_batch(
    state: NormalizeState, batch: SeriesBatch, flow_name: str
) -> list[SeriesBatch | DeadLetter]:
    """Scale one series' batch; readings not after the latest accepted time become dead letters.

    Returns:
        The normalized readings (first, when any are left) and one dead letter
        per reading out of event-time order.

    """
    out: list[SeriesBatch | DeadLetter] = []
    last = state.last_ts_ms
    before = np.maximum.accumulate(
        np.concatenate(([np.iinfo(np.int64).min if last is None else last], batch.ts_ms))
    )[:-1]
    keep = batch.ts_ms > before
    if not keep.all():
        for i in np.flatnonzero(~keep).tolist():
            reason = (
                f"field 'ts': expected a time after {int(before[i])} ms for series "
                f"{batch.series!r}, got {int(batch.ts_ms[i])} ms (duplicate or out of order)"
            )
            offset = -1 if batch.offsets is None else int(batch.offsets[i])
            raw = batch.raw[i] if batch.raw else None
            out.append(
                DeadLetter(
                    batch.origin,
                    batch.partition,
                    offset,
                    batch.series.encode(),
                    raw,
                    "normalize",
                    reason,
                )
            )
            count_dead_letter(flow_name, "normalize", reason)
        batch = _take(batch, keep)
    if len(batch):
        state.last_ts_ms = int(batch.ts_ms[-1])
        normalized = state.normalizer.transform_many(batch.values)
        out.insert(0, dataclasses.replace(batch, normalized=normalized))
    return out


def _take(batch: SeriesBatch, keep: np.ndarray) -> SeriesBatch:
    idx = np.flatnonzero(keep).tolist()
    return dataclasses.replace(
        batch,
        ts_ms=batch.ts_ms[keep],
        values=batch.values[keep],
        labels=tuple(batch.labels[i] for i in idx),
        offsets=None if batch.offsets is None else batch.offsets[keep],
        raw=tuple(batch.raw[i] for i in idx) if batch.raw else (),
        channels=None if batch.channels is None else batch.channels[keep],
    )


@dataclass(frozen=True)
class NormalizeOut:
    """Streams out of :func:`normalize`."""

    oks: KeyedStream[SeriesBatch]
    errs: Stream[DeadLetter]


@operator
def normalize(
    step_id: str,
    up: KeyedStream[SeriesBatch],
    make: Callable[[], Normalizer],
    flow_name: str,
) -> NormalizeOut:
    """Scale each series with its own normalizer; reject readings out of event-time order.

    Args:
        step_id: Unique id.
        up: Per-series batches.
        make: A zero-argument callable building a fresh normalizer.
        flow_name: Name of the flow, for metrics.

    """

    def builder(resume: NormalizeState | None) -> _NormalizeLogic:
        return _NormalizeLogic(resume or NormalizeState(make()), flow_name)

    items = op.stateful_batch("normalize", up, builder)
    split = op.branch("split", items, lambda kv: isinstance(kv[1], SeriesBatch))
    oks: KeyedStream[SeriesBatch] = split.trues  # type: ignore[assignment]
    errs = op.map("errs", split.falses, lambda kv: kv[1])
    return NormalizeOut(oks, errs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DetectConfig:
    """What the detect step scores.

    Attributes:
        detector: Registered name of the value detector.
        stuck: Also score runs of identical raw values (a stuck sensor).
        gap: Also score gaps in event time (missing readings).
        options: Constructor options of the value detector, as ``(name, value)``
            pairs (for example ``(("flagged", "clip"),)``).

    """

    detector: str
    stuck: bool = True
    gap: bool = True
    options: tuple[tuple[str, Any], ...] = ()

    def feature_names(self) -> tuple[str, ...]:
        """Names of the scored features, in index order."""
        names = ["value"]
        if self.stuck:
            names.append("stuck")
        if self.gap:
            names.append("gap")
        return tuple(names)


@dataclass
class DetectState:
    """One series' detectors and the latest event time scored."""

    value: Detector
    stuck: Flatline | None
    gap: Gap | None
    last_ts_ms: int | None = None


def detect_batch(cfg: DetectConfig, state: DetectState, batch: SeriesBatch) -> DetectedBatch:
    """Score one normalized batch with every configured feature (pure; updates ``state``)."""
    if batch.normalized is None:
        msg = f"detect: expected a normalized batch for series {batch.series!r}, got raw values"
        raise ValueError(msg)
    n = len(batch)
    start = batch.ts_ms[0] if state.last_ts_ms is None else state.last_ts_ms
    intervals = np.diff(np.concatenate(([start], batch.ts_ms))) / 1000.0
    # The first reading of a series has no interval to judge.
    first = 1 if state.last_ts_ms is None else 0
    state.value.observe_intervals(intervals[first:])
    raw_scores = state.value.score_learn_many(batch.normalized)
    columns = [calibrate(state.value.calibrator, raw_scores)]
    details = [raw_scores]
    if state.stuck is not None:
        last = state.stuck.last
        prev = np.concatenate(([np.nan if last is None else last], batch.values[:-1]))
        runs = repeat_runs(batch.values == prev, state.stuck.run)
        columns.append(calibrate(Flatline.calibrator, state.stuck.score_learn_many(batch.values)))
        details.append((runs + 1).astype(np.float64))
    if state.gap is not None:
        gap_scores = np.zeros(n)
        gap_scores[first:] = state.gap.score_learn_many(intervals[first:])
        columns.append(calibrate(Gap.calibrator, gap_scores))
        details.append(intervals)
    state.last_ts_ms = int(batch.ts_ms[-1]) if n else state.last_ts_ms
    stacked = np.vstack(columns)
    features = np.argmax(stacked, axis=0).astype(np.int8)
    cols = np.arange(n)
    return DetectedBatch(
        batch=batch,
        raw_scores=raw_scores,
        scores=stacked[features, cols],
        features=features,
        feature_names=cfg.feature_names(),
        detector=cfg.detector,
        details=np.vstack(details)[features, cols],
        parts=state.value.explain(),
    )


class _DetectLogic(StatefulBatchLogic[SeriesBatch, DetectedBatch, DetectState]):
    def __init__(self, cfg: DetectConfig, state: DetectState) -> None:
        self.cfg = cfg
        self.state = state

    def on_batch(self, values: list[SeriesBatch]) -> tuple[Iterable[DetectedBatch], bool]:
        return [detect_batch(self.cfg, self.state, b) for b in values], StatefulBatchLogic.RETAIN

    def snapshot(self) -> DetectState:
        return copy.deepcopy(self.state)


def new_detect_state(cfg: DetectConfig) -> DetectState:
    """Fresh detectors for one series."""
    return DetectState(
        value=make_detector(cfg.detector, dict(cfg.options)),
        stuck=Flatline() if cfg.stuck else None,
        gap=Gap() if cfg.gap else None,
    )


@operator
def detect(
    step_id: str, up: KeyedStream[SeriesBatch], cfg: DetectConfig
) -> KeyedStream[DetectedBatch]:
    """Score each series with its own detectors (score before learn).

    Args:
        step_id: Unique id.
        up: Normalized per-series batches.
        cfg: Detector name and extra features.

    """
    make_detector(cfg.detector, dict(cfg.options))  # fail at build time on a bad setting

    def builder(resume: DetectState | None) -> _DetectLogic:
        return _DetectLogic(cfg, resume or new_detect_state(cfg))

    return op.stateful_batch("detect", up, builder)


class _AlertLogic(StatefulBatchLogic[DetectedBatch, ScoredBatch, AlertState]):
    def __init__(self, policy: AlertPolicy, state: AlertState, flow_name: str) -> None:
        self.policy = policy
        self.state = state
        self.flow_name = flow_name

    def on_batch(self, values: list[DetectedBatch]) -> tuple[Iterable[ScoredBatch], bool]:
        out = [apply_policy(self.policy, self.state, d) for d in values]
        for scored in out:
            for a in scored.alerts:
                ALERTS.labels(flow=self.flow_name, severity=a.severity).inc()
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> AlertState:
        return copy.deepcopy(self.state)


@operator
def alert(
    step_id: str, up: KeyedStream[DetectedBatch], policy: AlertPolicy, flow_name: str
) -> Stream[ScoredBatch]:
    """Apply the alert policy per series.

    Args:
        step_id: Unique id.
        up: Scored per-series batches.
        policy: Threshold, persistence, cool-down and severity.
        flow_name: Name of the flow, for metrics.

    Returns:
        Scored batches with their alerts (unkeyed).

    """
    policy.validate()

    def builder(resume: AlertState | None) -> _AlertLogic:
        return _AlertLogic(policy, resume or AlertState(), flow_name)

    scored = op.stateful_batch("policy", up, builder)
    return op.key_rm("unkey", scored)


def alerts_of(step_id: str, up: Stream[ScoredBatch]) -> Stream[Alert]:
    """The alerts raised in each scored batch, one item per alert."""
    return op.flat_map(step_id, up, lambda s: s.alerts)
