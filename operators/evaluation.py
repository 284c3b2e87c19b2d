"""Score alerts against ground-truth labels, counted per labelled anomaly episode.

An *episode* is a run of consecutive labelled readings of one series with the
same label. An episode is detected when the series raises an alert between
the episode's first reading and ``grace_s`` seconds after its last one. An
alert inside some episode's window is a true alert; any other alert is false.

Example:
    >>> labels = [("a", 0, None), ("a", 1000, "spike"), ("a", 2000, None), ("a", 3000, None)]
    >>> r = evaluate(labels, [("a", 1000), ("a", 3000)], grace_s=0.5)
    >>> (r.episodes, r.detected, r.true_alerts, r.false_alerts)
    (1, 1, 1, 1)
    >>> r.recall, r.precision
    (1.0, 0.5)

"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from statistics import median


@dataclass(frozen=True, slots=True)
class Episode:
    """A labelled anomaly of one series, from its first to its last reading."""

    series: str
    kind: str
    start_ms: int
    end_ms: int


@dataclass(frozen=True)
class Evaluation:
    """Alert quality figures.

    Attributes:
        events: Readings scored.
        episodes: Labelled episodes.
        detected: Episodes with at least one alert in their window.
        alerts: Alerts raised.
        true_alerts: Alerts inside some episode window.
        false_alerts: Alerts outside every episode window.
        delays_s: Per detected episode, seconds from its start to its first alert.
        by_kind: Per label kind, ``(episodes, detected)``.

    """

    events: int
    episodes: int
    detected: int
    alerts: int
    true_alerts: int
    false_alerts: int
    delays_s: tuple[float, ...]
    by_kind: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        """Detected episodes over all episodes (1.0 when there are none)."""
        return self.detected / self.episodes if self.episodes else 1.0

    @property
    def precision(self) -> float:
        """True alerts over all alerts (1.0 when there are none)."""
        return self.true_alerts / self.alerts if self.alerts else 1.0

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall."""
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def false_per_1000(self) -> float:
        """False alerts per 1,000 readings."""
        return 1000.0 * self.false_alerts / self.events if self.events else 0.0

    @property
    def median_delay_s(self) -> float | None:
        """Median detection delay over detected episodes."""
        return median(self.delays_s) if self.delays_s else None

    def summary(self) -> dict[str, object]:
        """The figures as a JSON-ready dict."""
        return {
            "events": self.events,
            "episodes": self.episodes,
            "detected": self.detected,
            "recall": round(self.recall, 4),
            "alerts": self.alerts,
            "precision": round(self.precision, 4),
            "f1": round(self.f1, 4),
            "false_alerts_per_1000": round(self.false_per_1000, 4),
            "median_delay_s": self.median_delay_s,
            "recall_by_kind": {
                k: round(d / n, 4) if n else None for k, (n, d) in sorted(self.by_kind.items())
            },
        }


def episodes_of(readings: Iterable[tuple[str, int, str | None]]) -> list[Episode]:
    """Group labelled readings into episodes (readings in event-time order per series)."""
    out: list[Episode] = []
    open_: dict[str, Episode] = {}
    for series, ts_ms, label in readings:
        current = open_.get(series)
        if current is not None and label == current.kind:
            open_[series] = Episode(series, current.kind, current.start_ms, ts_ms)
            continue
        if current is not None:
            out.append(current)
            del open_[series]
        if label is not None:
            open_[series] = Episode(series, label, ts_ms, ts_ms)
    out.extend(open_.values())
    return sorted(out, key=lambda e: (e.series, e.start_ms))


def evaluate(
    readings: Iterable[tuple[str, int, str | None]],
    alerts: Iterable[tuple[str, int]],
    grace_s: float = 10.0,
) -> Evaluation:
    """Match alerts to labelled episodes.

    Args:
        readings: ``(series, ts_ms, label)`` of every reading, event-time
            ordered within each series.
        alerts: ``(series, ts_ms)`` of every alert (duplicates by id removed).
        grace_s: Seconds after an episode's last reading that still count.

    """
    readings = list(readings)
    episodes = episodes_of(readings)
    grace_ms = round(grace_s * 1000)
    by_series: dict[str, list[Episode]] = defaultdict(list)
    for e in episodes:
        by_series[e.series].append(e)
    starts = {s: [e.start_ms for e in es] for s, es in by_series.items()}
    first_alert: dict[Episode, int] = {}
    alert_list = sorted(set(alerts))
    true_alerts = 0
    for series, ts in alert_list:
        eps = by_series.get(series, [])
        # Episodes of a series do not overlap, so their ends grow with their
        # starts: walk back from the latest one starting at or before the
        # alert until one ends (with grace) before it.
        i = bisect.bisect_right(starts.get(series, []), ts)
        hit = False
        for e in reversed(eps[:i]):
            if ts > e.end_ms + grace_ms:
                break
            hit = True
            first_alert.setdefault(e, ts)
        true_alerts += hit
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for e in episodes:
        kinds[e.kind][0] += 1
        kinds[e.kind][1] += e in first_alert
    return Evaluation(
        events=len(readings),
        episodes=len(episodes),
        detected=len(first_alert),
        alerts=len(alert_list),
        true_alerts=true_alerts,
        false_alerts=len(alert_list) - true_alerts,
        delays_s=tuple((ts - e.start_ms) / 1000.0 for e, ts in first_alert.items()),
        by_kind={k: (n, d) for k, (n, d) in kinds.items()},
    )
