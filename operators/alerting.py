"""The alert policy: turns calibrated scores into alerts, apart from any detector.

A reading raises an alert when its calibrated score has been at or above
``threshold`` for ``persistence`` consecutive readings, unless the series is
cooling down after its previous alert (``cooldown_s`` of event time). The
severity is ``critical`` at or above ``critical`` and ``warning`` otherwise.
Each alert has a stable id, ``uuid5`` of series, event time and detector, so a
replay of the same input yields the same ids and sinks can de-duplicate.

Example:
    >>> policy = AlertPolicy(threshold=0.99, persistence=2, cooldown_s=0)
    >>> policy.validate()
    >>> alert_id("3", 1704067200000, "robust-z")
    '84835393-a532-57fa-9ce3-7c2740ba6a38'

"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from operators.events import Alert, DetectedBatch, FloatArray, ScoredBatch, ms_to_datetime

ALERT_NAMESPACE = uuid.UUID("6f1c2f6e-8a4b-4d39-9a57-0b1d5c1e7a21")
RECENT_WINDOW = 120


def alert_id(series: str, ts_ms: int, detector: str) -> str:
    """Stable alert id of a series, an event time and a detector."""
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{series}|{ts_ms}|{detector}"))


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """When a calibrated score becomes an alert.

    Attributes:
        threshold: Calibrated score at or above which a reading is anomalous.
        critical: Calibrated score at or above which an alert is critical.
        persistence: Consecutive anomalous readings needed to alert.
        cooldown_s: Event-time seconds after an alert during which the same
            series raises no new alert (0 disables the cool-down).

    """

    threshold: float = 0.999
    critical: float = 0.999999
    persistence: int = 1
    cooldown_s: float = 10.0

    def validate(self) -> None:
        """Check the settings.

        Raises:
            ValueError: naming the setting, what was expected and what arrived.

        """
        if not 0.0 < self.threshold < 1.0:
            msg = f"alert policy: expected 0 < threshold < 1, got {self.threshold}"
            raise ValueError(msg)
        if not self.threshold <= self.critical <= 1.0:
            msg = f"alert policy: expected threshold <= critical <= 1, got {self.critical}"
            raise ValueError(msg)
        if self.persistence < 1:
            msg = f"alert policy: expected persistence >= 1, got {self.persistence}"
            raise ValueError(msg)
        if self.cooldown_s < 0:
            msg = f"alert policy: expected cooldown_s >= 0, got {self.cooldown_s}"
            raise ValueError(msg)


@dataclass(slots=True)
class AlertState:
    """What the policy remembers about one series between batches (picklable).

    Attributes:
        above: Consecutive readings at or above the threshold so far.
        last_alert_ms: Event time of the last alert, if any.
        recent: Recent ordinary raw values, for the expected range in reasons.

    """

    above: int = 0
    last_alert_ms: int | None = None
    recent: FloatArray = field(default_factory=lambda: np.empty(0, dtype=np.float64))

    def note_ordinary(self, values: FloatArray) -> None:
        """Readings below the threshold: they end a run of hot ones and join the expected range."""
        self.above = 0
        self.recent = np.concatenate((self.recent, values))[-RECENT_WINDOW:]


def _reason(det: DetectedBatch, i: int, recent: FloatArray) -> str:
    feature = det.feature_names[int(det.features[i])]
    value = float(det.batch.values[i])
    detail = float(det.details[i])
    if feature == "stuck":
        return f"stuck: value {value:.2f} repeated for {int(detail)} readings in a row"
    if feature == "gap":
        return f"gap: no readings for {detail:.0f} s before this one"
    where = "unusual within"
    if len(recent):
        lo, hi = float(recent.min()), float(recent.max())
        if value < lo or value > hi:
            where = "outside"
        expected = f"{where} the recent range {lo:.2f}..{hi:.2f}"
    else:
        expected = "with no ordinary history yet"
    why = ""
    if det.parts:
        # Each part in the detector's own units, so a reader sees which one was high.
        why = "; parts: " + ", ".join(f"{name} {float(v[i]):.2f}" for name, v in det.parts.items())
    return (
        f"value: {value:.2f} {expected} "
        f"({det.detector} score {float(det.raw_scores[i]):.3g}, p={1.0 - float(det.scores[i]):.1e})"
        f"{why}"
    )


def apply_policy(policy: AlertPolicy, state: AlertState, det: DetectedBatch) -> ScoredBatch:
    """Decide which readings of a detected batch raise alerts.

    Args:
        policy: The alert settings.
        state: The series' policy state; updated in place.
        det: Scored readings of one series, in event-time order.

    Returns:
        The batch with its alert mask and the alerts raised.

    """
    batch = det.batch
    hot = det.scores >= policy.threshold
    alerts: list[Alert] = []
    if np.count_nonzero(hot):
        alerted = np.zeros(len(det), dtype=bool)
        cooldown_ms = round(policy.cooldown_s * 1000)
        recent = state.recent
        start = 0
        for i in np.flatnonzero(hot).tolist():
            # Readings since the previous hot one were ordinary: they reset the
            # persistence count and refresh the expected range.
            if i > start:
                state.above = 0
                recent = np.concatenate((recent, batch.values[start:i]))[-RECENT_WINDOW:]
            start = i + 1
            state.above += 1
            ts = int(batch.ts_ms[i])
            cooling = state.last_alert_ms is not None and ts < state.last_alert_ms + cooldown_ms
            if state.above < policy.persistence or cooling:
                continue
            score = float(det.scores[i])
            alerted[i] = True
            state.last_alert_ms = ts
            alerts.append(
                Alert(
                    alert_id=alert_id(batch.series, ts, det.detector),
                    series=batch.series,
                    ts=ms_to_datetime(ts),
                    value=float(batch.values[i]),
                    score=score,
                    severity="critical" if score >= policy.critical else "warning",
                    detector=det.detector,
                    reason=_reason(det, i, recent),
                    label=batch.labels[i],
                )
            )
        tail = batch.values[start:]
        if len(tail):
            state.above = 0
        state.recent = np.concatenate((recent, tail))[-RECENT_WINDOW:]
    else:
        alerted = hot  # all False: nothing hot, nothing alerted
        state.note_ordinary(batch.values)
    return ScoredBatch(
        series=batch.series,
        ts_ms=batch.ts_ms,
        values=batch.values,
        labels=batch.labels,
        raw_scores=det.raw_scores,
        scores=det.scores,
        alerted=alerted,
        threshold=policy.threshold,
        detector=det.detector,
        alerts=tuple(alerts),
        expected=det.expected,
    )
