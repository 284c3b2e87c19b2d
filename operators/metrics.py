"""Prometheus metrics of the project's own steps and of the Kafka source.

Bytewax serves them, next to its own ``bytewax_*`` metrics (all share the
default registry), at ``/metrics`` of its dataflow API server when
``BYTEWAX_DATAFLOW_API_ENABLED=true`` (port ``BYTEWAX_DATAFLOW_API_PORT``, 3030
by default; the server listens on every interface, 0.0.0.0).

- ``vigil_events_total{flow, step}``: items a step took in.
- ``vigil_events_out_total{flow, step}``: items a step emitted.
- ``vigil_step_seconds{flow, step}``: histogram of the wall-clock seconds a step
  spent on one batch (the detector latency is ``step="detect"``).
- ``vigil_dead_letters_total{flow, step, field}``: messages sent to the dead-letter output.
- ``vigil_alerts_total{flow, severity}``: alerts raised.
- ``vigil_consumer_lag_messages{topic, partition}``: messages of a Kafka partition
  the flow has not read yet.
- ``vigil_series{flow, held}``: series the score steps of this process hold, as
  live state (``held="live"``: used in the current or the previous epoch) or as
  their snapshot's bytes alone (``held="bytes"``), updated at each snapshot.

A hot-path step binds its labels once with :func:`step_metrics` and calls
:meth:`StepMetrics.observe` once per batch (:func:`observe_step` does both, at the
cost of a cache look-up per call); the Kafka source sets the lag through a
:class:`LagGauge`, at most once a second per partition.

Example:
    >>> before = DEAD_LETTERS.labels(flow="doc", step="decode", field="ts")._value.get()
    >>> count_dead_letter("doc", "decode", "field 'ts': missing")
    >>> DEAD_LETTERS.labels(flow="doc", step="decode", field="ts")._value.get() - before
    1.0
    >>> detect = step_metrics("doc", "detect")
    >>> detect.observe(1000, 990, 0.004)
    >>> EVENTS_OUT.labels(flow="doc", step="detect")._value.get()
    990.0

"""

from __future__ import annotations

import functools
import logging
import re
import time

from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

EVENTS = Counter("vigil_events_total", "Events that went through a step.", ["flow", "step"])
EVENTS_OUT = Counter(
    "vigil_events_out_total", "Items a step emitted (readings, alerts, results).", ["flow", "step"]
)
#: From 0.1 ms (a small batch of the sensors flow) to 10 s (a batch of large frames).
STEP_SECONDS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
STEP_SECONDS = Histogram(
    "vigil_step_seconds",
    "Wall-clock seconds a step spent on one batch.",
    ["flow", "step"],
    buckets=STEP_SECONDS_BUCKETS,
)
DEAD_LETTERS = Counter(
    "vigil_dead_letters_total",
    "Messages sent to the dead-letter output, by step and the field at fault.",
    ["flow", "step", "field"],
)
ALERTS = Counter("vigil_alerts_total", "Alerts raised, by severity.", ["flow", "severity"])
CONSUMER_LAG = Gauge(
    "vigil_consumer_lag_messages",
    "Messages of a Kafka partition the flow has not read yet (high watermark - next offset).",
    ["topic", "partition"],
)
SERIES = Gauge(
    "vigil_series",
    "Series the score steps of this process hold, as live state or as snapshot bytes alone.",
    ["flow", "held"],
)
#: Seconds of wall clock between two updates of a partition's lag.
LAG_INTERVAL_S = 1.0

_FIELD = re.compile(r"^(?:field '([^']+)'|(\w+))")


def reason_field(reason: str) -> str:
    """The field (or part of the message) a dead-letter reason names.

    Example:
        >>> reason_field("field 'temp': expected a number, got str 'x'")
        'temp'
        >>> reason_field("payload: expected JSON, got invalid JSON")
        'payload'

    """
    m = _FIELD.match(reason)
    if m is None:
        return "other"
    return m.group(1) or m.group(2)


def count_dead_letter(flow: str, step: str, reason: str) -> None:
    """Count one dead letter."""
    DEAD_LETTERS.labels(flow=flow, step=step, field=reason_field(reason)).inc()


class StepMetrics:
    """One step's counters and latency histogram, bound to their labels once.

    Cheap enough to call once per batch on the hot path: three increments of
    already-labelled children, no look-up. Pickles as its labels (it is rebuilt
    on load), but belongs beside operator state, not in it.

    Args:
        flow: Name of the flow (the dataflow's id).
        step: Name of the step, e.g. ``"detect"``; a full Bytewax step id
            (``"sensors.score.detect"``) counts under its last part, so that the
            labels do not depend on how steps nest.

    Example:
        >>> m = StepMetrics("doc", "doc.normalize")
        >>> m.observe(10, 9)
        >>> EVENTS.labels(flow="doc", step="normalize")._value.get()
        10.0

    """

    __slots__ = ("_in", "_out", "_seconds", "flow", "step")

    def __init__(self, flow: str, step: str) -> None:
        self.flow = flow
        self.step = step.rsplit(".", 1)[-1]
        self._in = EVENTS.labels(flow=flow, step=self.step)
        self._out = EVENTS_OUT.labels(flow=flow, step=self.step)
        self._seconds = STEP_SECONDS.labels(flow=flow, step=self.step)

    def observe(self, n_in: int, n_out: int, seconds: float | None = None) -> None:
        """Count one batch: items in, items out and, when given, its wall-clock seconds.

        Raises:
            ValueError: when a count is negative (a bug in the caller).

        """
        if n_in:
            self._in.inc(n_in)
        if n_out:
            self._out.inc(n_out)
        if seconds is not None:
            self._seconds.observe(seconds)

    def __reduce__(self) -> tuple[type[StepMetrics], tuple[str, str]]:
        return StepMetrics, (self.flow, self.step)


@functools.cache
def step_metrics(flow: str, step: str) -> StepMetrics:
    """The bound metrics of ``step`` in ``flow`` (one shared instance per pair)."""
    return StepMetrics(flow, step)


def observe_step(flow: str, step: str, n_in: int, n_out: int, seconds: float | None = None) -> None:
    """Count one batch of ``step`` (see :meth:`StepMetrics.observe`).

    Example:
        >>> observe_step("doc", "alert", 1000, 3, 0.0021)
        >>> STEP_SECONDS.labels(flow="doc", step="alert")._sum.get()
        0.0021

    """
    step_metrics(flow, step).observe(n_in, n_out, seconds)


class LagGauge:
    """The consumer lag of one topic partition, set at most once per ``interval_s``.

    The caller asks :meth:`due` on every batch (a clock read) and only when it
    answers ``True`` computes the lag and :meth:`set` s it.

    Args:
        topic: The topic.
        partition: The partition number.
        interval_s: Least seconds of wall clock between two updates.

    Example:
        >>> lag = LagGauge("doc-topic", 0, interval_s=3600.0)
        >>> lag.due(), lag.due()
        (True, False)
        >>> lag.set(42)
        >>> CONSUMER_LAG.labels(topic="doc-topic", partition="0")._value.get()
        42.0

    """

    __slots__ = ("_gauge", "_interval_s", "_next")

    def __init__(self, topic: str, partition: int, interval_s: float = LAG_INTERVAL_S) -> None:
        self._gauge = CONSUMER_LAG.labels(topic=topic, partition=str(partition))
        self._interval_s = interval_s
        self._next = -float("inf")

    def due(self) -> bool:
        """True when the interval has passed since the last time it said so."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval_s
        return True

    def set(self, lag: int) -> None:
        """Set the lag (messages)."""
        self._gauge.set(lag)


class Progress:
    """Logs a flow's progress (events in, rate, dead letters) every few seconds of wall clock.

    One instance per worker's decode step; the wall clock only paces the log lines.

    Args:
        flow: Name of the flow.
        interval_s: Seconds between two progress lines.

    Example:
        >>> p = Progress("doc", interval_s=3600.0)
        >>> p.add(1000, 2)
        >>> p.events, p.dead_letters
        (1000, 2)

    """

    def __init__(self, flow: str, interval_s: float = 5.0) -> None:
        self.flow = flow
        self.interval_s = interval_s
        self.events = 0
        self.dead_letters = 0
        self._start = time.monotonic()
        self._next = self._start + interval_s

    def add(self, events: int, dead_letters: int) -> None:
        """Count a decoded batch; log a line when the interval has passed."""
        self.events += events
        self.dead_letters += dead_letters
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            elapsed = now - self._start
            logger.info(
                "%s: %d events in %.1f s (%.0f/s), %d dead letters",
                self.flow,
                self.events,
                elapsed,
                self.events / elapsed if elapsed > 0 else 0.0,
                self.dead_letters,
            )


#: Per flow, each shard's (live, bytes-only) series, by the id of its reporter.
_SERIES_COUNTS: dict[str, dict[int, tuple[int, int]]] = {}


class SeriesCount:
    """Feeds ``vigil_series``: each shard reports its own counts, the gauge shows the sums.

    Example:
        >>> a, b = SeriesCount("doc"), SeriesCount("doc")
        >>> a.set(live=3, packed_only=10)
        >>> b.set(live=1, packed_only=0)
        >>> SERIES.labels(flow="doc", held="live")._value.get()
        4.0

    """

    def __init__(self, flow: str) -> None:
        self.flow = flow
        self._live = SERIES.labels(flow=flow, held="live")
        self._bytes = SERIES.labels(flow=flow, held="bytes")

    def set(self, *, live: int, packed_only: int) -> None:
        """Report the shard's series: ``live`` states, ``packed_only`` held as bytes alone."""
        counts = _SERIES_COUNTS.setdefault(self.flow, {})
        counts[id(self)] = (live, packed_only)
        self._live.set(sum(c[0] for c in counts.values()))
        self._bytes.set(sum(c[1] for c in counts.values()))
