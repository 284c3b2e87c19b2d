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

import re

from prometheus_client import Counter

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
