"""Per-series steps: the functions every flow scores a series with, and operators keyed by series.

The pure functions (:func:`normalize_batch`, :func:`detect_batch`,
:func:`alert_counted`) update one series' state with one batch of its
readings; the sharded path of :mod:`operators.shards` calls them. The
operators (:func:`decode`, :func:`normalize`, :func:`alert`) key Bytewax state
by series, as the window-model flows do. Each takes and gives micro-batches
(one Bytewax item per series and source batch); snapshots are deep copies.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.alerting import AlertPolicy, AlertState, apply_policy
from operators.calibrate import calibrate
from operators.decode import Decoded, decode_batch
from operators.detectors import Detector, make_detector
from operators.detectors.robust import SMALL_BATCH, Flatline, Gap, repeat_runs
from operators.events import (
    Alert,
    DeadLetter,
    DetectedBatch,
    FloatArray,
    IntArray,
    RawBatch,
    Scored,
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


class _WithErrs(Protocol):
    @property
    def errs(self) -> Sequence[DeadLetter]: ...


D = TypeVar("D", bound=_WithErrs)


def counted_decoder(flow_name: str, fmt: WireFormat) -> Callable[[RawBatch], Decoded]:
    """:func:`~operators.decode.decode_batch`, counted: step metrics, progress, dead letters.

    One per decode step (its progress line and metrics are the worker's).
    """
    return counted(flow_name, lambda raw: decode_batch(raw, fmt))


def counted(flow_name: str, decode: Callable[[RawBatch], D]) -> Callable[[RawBatch], D]:
    """``decode``, counted: step metrics, progress, dead letters (see :func:`counted_decoder`)."""
    progress = Progress(flow_name)
    metrics = step_metrics(flow_name, "decode")

    def _decode(raw: RawBatch) -> D:
        started = time.perf_counter()
        out = decode(raw)
        metrics.observe(len(raw), len(raw) - len(out.errs), time.perf_counter() - started)
        progress.add(len(raw), len(out.errs))
        for err in out.errs:
            count_dead_letter(flow_name, err.step, err.reason)
        return out

    return _decode


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
    counted = counted_decoder(flow_name, fmt)

    def _decode(raw: RawBatch) -> list[SeriesBatch | DeadLetter]:
        out = counted(raw)
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
    if not _in_order(state.last_ts_ms, batch.ts_ms):
        batch = _reject_out_of_order(state.last_ts_ms, batch, flow_name, out)
    if len(batch):
        state.last_ts_ms = int(batch.ts_ms[-1])
        normalized = state.normalizer.transform_many(batch.values)
        out.insert(0, _with_normalized(batch, normalized))
    return out


def _in_order(last: int | None, ts_ms: IntArray) -> bool:
    """Whether every time is after the previous one and after ``last``: nothing to reject."""
    n = len(ts_ms)
    if n and last is not None and ts_ms[0] <= last:
        return False
    return n < 2 or bool((ts_ms[1:] > ts_ms[:-1]).all())


def _reject_out_of_order(
    last: int | None, batch: SeriesBatch, flow_name: str, out: list[SeriesBatch | DeadLetter]
) -> SeriesBatch:
    """Append a dead letter to ``out`` per reading not after every earlier one; the rest."""
    before = np.maximum.accumulate(
        np.concatenate(([np.iinfo(np.int64).min if last is None else last], batch.ts_ms))
    )[:-1]
    keep = batch.ts_ms > before
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
    return _take(batch, keep)


def _with_normalized(batch: SeriesBatch, normalized: FloatArray) -> SeriesBatch:
    # The constructor itself: ``dataclasses.replace`` costs more than the scaling of a reading.
    return SeriesBatch(
        batch.series,
        batch.ts_ms,
        batch.values,
        batch.labels,
        batch.origin,
        batch.partition,
        batch.offsets,
        batch.raw,
        normalized,
        batch.channels,
    )


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
    intervals = _intervals(state.last_ts_ms, batch.ts_ms)
    # The first reading of a series has no interval to judge.
    first = 1 if state.last_ts_ms is None else 0
    state.value.observe_intervals(intervals[first:])
    raw_scores = state.value.score_learn_many(batch.normalized)
    stuck = gap = None
    if state.stuck is not None:
        # The run lengths from the detector's state before it learns these values.
        run = _run_lengths(batch.values, state.stuck.last, state.stuck.run)
        stuck = (state.stuck.score_learn_many(batch.values), run)
    if state.gap is not None:
        gap_raw = np.zeros(n)
        gap_raw[first:] = state.gap.score_learn_many(intervals[first:])
        gap = (gap_raw, intervals)
    state.last_ts_ms = int(batch.ts_ms[-1]) if n else state.last_ts_ms
    scores, features, details = pick_features(state.value.calibrator, raw_scores, stuck, gap)
    return DetectedBatch(
        batch=batch,
        raw_scores=raw_scores,
        scores=scores,
        features=features.astype(np.int8),
        feature_names=cfg.feature_names(),
        detector=cfg.detector,
        details=details,
        parts=state.value.explain(),
    )


def _intervals(last_ts_ms: int | None, ts_ms: IntArray) -> FloatArray:
    """Seconds since the previous reading (0 for a series' first reading)."""
    start = ts_ms[0] if last_ts_ms is None else last_ts_ms
    if 0 < len(ts_ms) <= SMALL_BATCH:  # arrays cost more than arithmetic on a reading or two
        ts = ts_ms.tolist()
        prev = [int(start), *ts[:-1]]
        return np.array([(b - a) / 1000.0 for a, b in zip(prev, ts, strict=True)])
    return np.diff(np.concatenate(([start], ts_ms))) / 1000.0


def _run_lengths(values: FloatArray, last: float | None, carried: int) -> IntArray:
    """Readings in the run of identical values that each value ends (1 for a new value).

    Args:
        values: Raw values, in order.
        last: The value before them (``None`` for a new series).
        carried: Repeats in the run still open before the first value.

    """
    prev = np.concatenate(([np.nan if last is None else last], values[:-1]))
    return repeat_runs(values == prev, carried) + 1


#: A feature's raw scores and the detail an alert's reason quotes, per reading.
Feature = tuple[FloatArray, FloatArray | IntArray]


def pick_features(
    calibrator: str, value_raw: FloatArray, stuck: Feature | None, gap: Feature | None
) -> tuple[FloatArray, IntArray, FloatArray]:
    """Calibrate each feature's raw scores and pick each reading's highest.

    Args:
        calibrator: The value detector's calibrator.
        value_raw: The value detector's raw scores.
        stuck: The stuck feature's raw scores and run lengths, if scored.
        gap: The gap feature's raw scores and intervals, if scored.

    Returns:
        Per reading: the calibrated score of its most anomalous feature (the first
        of equal maxima, as per series), that feature's index, and its detail.

    """
    extras = [
        (feature, name)
        for feature, name in ((stuck, Flatline.calibrator), (gap, Gap.calibrator))
        if feature is not None
    ]
    n = len(value_raw)
    calibrated = np.empty((1 + len(extras), n))
    details = np.empty_like(calibrated)
    calibrated[0] = calibrate(calibrator, value_raw)
    details[0] = value_raw
    if extras:
        # The extra features' raw scores are calibrated together.
        raw = np.vstack([feature[0] for feature, _ in extras])
        calibrated[1:] = _calibrate_rows([name for _, name in extras], raw)
        details[1:] = np.vstack([feature[1] for feature, _ in extras])
    features = calibrated.argmax(axis=0)
    cols = np.arange(n)
    return calibrated[features, cols], features, details[features, cols]


def _calibrate_rows(names: list[str], raw: FloatArray) -> FloatArray:
    """Each row of ``raw`` through its calibrator; neighbouring rows that share one in one call."""
    out = np.empty_like(raw)
    start = 0
    for stop in range(1, len(names) + 1):
        if stop == len(names) or names[stop] != names[start]:
            out[start:stop] = calibrate(names[start], raw[start:stop])
            start = stop
    return out


def new_detect_state(cfg: DetectConfig) -> DetectState:
    """Fresh detectors for one series."""
    return DetectState(
        value=make_detector(cfg.detector, dict(cfg.options)),
        stuck=Flatline() if cfg.stuck else None,
        gap=Gap() if cfg.gap else None,
    )


def alert_counted(
    policy: AlertPolicy, state: AlertState, det: DetectedBatch, flow_name: str
) -> ScoredBatch:
    """:func:`~operators.alerting.apply_policy`, with each alert counted by severity."""
    scored = apply_policy(policy, state, det)
    for a in scored.alerts:
        ALERTS.labels(flow=flow_name, severity=a.severity).inc()
    return scored


class _AlertLogic(StatefulBatchLogic[DetectedBatch, ScoredBatch, AlertState]):
    def __init__(self, policy: AlertPolicy, state: AlertState, flow_name: str) -> None:
        self.policy = policy
        self.state = state
        self.flow_name = flow_name

    def on_batch(self, values: list[DetectedBatch]) -> tuple[Iterable[ScoredBatch], bool]:
        out = [alert_counted(self.policy, self.state, d, self.flow_name) for d in values]
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


def alerts_of(step_id: str, up: Stream[Scored]) -> Stream[Alert]:
    """The alerts raised in each scored batch, one item per alert."""
    return op.flat_map(step_id, up, lambda s: s.alerts)
