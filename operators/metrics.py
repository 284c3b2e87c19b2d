"""Prometheus metrics of the project's own steps.

Bytewax serves its own metrics (and these, which share the default registry)
when the dataflow API server is enabled (``BYTEWAX_DATAFLOW_API_ENABLED=true``).

Example:
    >>> before = DEAD_LETTERS.labels(flow="doc", step="decode", field="ts")._value.get()
    >>> count_dead_letter("doc", "decode", "field 'ts': missing")
    >>> DEAD_LETTERS.labels(flow="doc", step="decode", field="ts")._value.get() - before
    1.0

"""

from __future__ import annotations

import logging
import re
import time

from prometheus_client import Counter

logger = logging.getLogger(__name__)

EVENTS = Counter("vigil_events_total", "Events that went through a step.", ["flow", "step"])
DEAD_LETTERS = Counter(
    "vigil_dead_letters_total",
    "Messages sent to the dead-letter output, by step and the field at fault.",
    ["flow", "step", "field"],
)
ALERTS = Counter("vigil_alerts_total", "Alerts raised, by severity.", ["flow", "severity"])

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
