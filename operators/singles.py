"""Scoring many series of one reading each, as the per-series steps would.

With thousands of series a source batch holds one reading of most of them, and
the per-series functions of :mod:`operators.steps` then spend their time on
arrays of one element: an interval array, a row of calibrated scores per
feature, an argmax, a dozen small allocations per reading. Here all the
one-reading batches of a shard are scored together:

* per series, in plain floats: the event-time check, the normalizer, the
  interval, and each detector's per-event ``score_one`` then ``learn_one``
  (the forms the detector contract holds equal to the batch forms);
* once for all of them: each feature's calibration (one array call per
  feature) and the choice of the most anomalous feature;
* per series again: the alert policy, with the full function only for a
  reading at or above the threshold (an ordinary reading only resets the
  persistence count and joins the expected range).

A value detector that reports parts (:meth:`Detector.explain`) or listens to
the readings' spacing (:meth:`Detector.observe_intervals`) has no per-event
form of those, so its series keep the per-series path
(:func:`fast_singles_for`). A reading out of event-time order also goes that
way, which writes its dead letter. A test feeds the same streams through both
paths and compares every output and the state left behind.

Example:
    >>> from operators.detectors import make_detector
    >>> [fast_singles_for(make_detector(name, {})) for name in ("robust-z", "context")]
    [True, False]

"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from operators.alerting import AlertPolicy, AlertState
from operators.detectors import Detector
from operators.events import (
    DeadLetter,
    DetectedBatch,
    ScoredBatch,
    SeriesBatch,
)
from operators.steps import (
    DetectConfig,
    DetectState,
    NormalizeState,
    alert_counted,
    pick_features,
)


def fast_singles_for(detector: Detector) -> bool:
    """Whether series scored by ``detector`` can take the one-reading path."""
    kind = type(detector)
    return kind.explain is Detector.explain and kind.observe_intervals is Detector.observe_intervals


Entry = tuple[NormalizeState, DetectState, AlertState, SeriesBatch]
Output = ScoredBatch | DeadLetter


@dataclass(slots=True)
class _Scored:
    """One reading's features before calibration, and where its output goes."""

    slot: int
    alert: AlertState
    batch: SeriesBatch
    value_raw: float
    stuck_raw: float
    gap_raw: float
    run: int
    interval: float


def score_singles(
    entries: list[Entry],
    detect: DetectConfig,
    policy: AlertPolicy,
    flow_name: str,
    slow: Callable[[Entry], list[Output]],
) -> list[Output]:
    """Score batches of one reading each, in order; updates their series' states.

    A series may come more than once: its readings are taken in entry order.

    Args:
        entries: Per batch, its series' normalize, detect and policy states and
            the batch of one reading.
        detect: What the detect step scores (the detectors are in the states).
        policy: The alert policy.
        flow_name: Name of the flow, for the alert counter.
        slow: The per-series path, for a reading out of event-time order (it
            writes the dead letter and leaves the detectors and policy alone).

    Returns:
        What the per-series path gives for each entry, in entry order.

    """
    slots: list[list[Output]] = [[] for _ in entries]
    done: list[_Scored] = []
    for i, entry in enumerate(entries):
        norm, det, alert, batch = entry
        ts = int(batch.ts_ms[0])
        last = norm.last_ts_ms
        if last is not None and ts <= last:
            slots[i] = slow(entry)
            continue
        norm.last_ts_ms = ts
        x = float(batch.values[0])
        xn = norm.normalizer.transform_one(x)
        value_raw = det.value.score_one(xn)
        det.value.learn_one(xn)
        stuck_raw = 0.0
        run = 1
        if det.stuck is not None:
            if det.stuck.last is not None and x == det.stuck.last:
                run = det.stuck.run + 2
            stuck_raw = det.stuck.score_one(x)
            det.stuck.learn_one(x)
        # A series' first reading has no interval to judge: 0 s, never scored.
        interval = 0.0 if det.last_ts_ms is None else (ts - det.last_ts_ms) / 1000.0
        gap_raw = 0.0
        if det.gap is not None and det.last_ts_ms is not None:
            gap_raw = det.gap.score_one(interval)
            det.gap.learn_one(interval)
        det.last_ts_ms = ts
        done.append(_Scored(i, alert, batch, value_raw, stuck_raw, gap_raw, run, interval))
    if done:
        calibrator = entries[done[0].slot][1].value.calibrator
        decided = _decide(done, calibrator, detect, policy, flow_name)
        for d, scored in zip(done, decided, strict=True):
            slots[d.slot] = [scored]
    return [item for slot in slots for item in slot]


def _decide(
    done: list[_Scored], calibrator: str, detect: DetectConfig, policy: AlertPolicy, flow_name: str
) -> list[ScoredBatch]:
    """Calibrate every feature at once, pick each reading's feature, apply the policy."""
    names = detect.feature_names()
    value_raw = np.array([d.value_raw for d in done], dtype=np.float64)
    stuck = gap = None
    if detect.stuck:
        stuck = (np.array([d.stuck_raw for d in done]), np.array([float(d.run) for d in done]))
    if detect.gap:
        gap = (np.array([d.gap_raw for d in done]), np.array([d.interval for d in done]))
    scores, features, detail = pick_features(calibrator, value_raw, stuck, gap)
    hot = (scores >= policy.threshold).tolist()
    small = features.astype(np.int8)
    out: list[ScoredBatch] = []
    for k, d in enumerate(done):
        raw_scores, score = value_raw[k : k + 1], scores[k : k + 1]
        if hot[k]:
            det = DetectedBatch(
                batch=d.batch,
                raw_scores=raw_scores,
                scores=score,
                features=small[k : k + 1],
                feature_names=names,
                detector=detect.detector,
                details=detail[k : k + 1],
            )
            out.append(alert_counted(policy, d.alert, det, flow_name))
            continue
        # An ordinary reading: what apply_policy does with one, without its arrays.
        d.alert.note_ordinary(d.batch.values)
        out.append(
            ScoredBatch(
                series=d.batch.series,
                ts_ms=d.batch.ts_ms,
                values=d.batch.values,
                labels=d.batch.labels,
                raw_scores=raw_scores,
                scores=score,
                alerted=np.zeros(1, dtype=bool),
                threshold=policy.threshold,
                detector=detect.detector,
            )
        )
    return out
