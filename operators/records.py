"""Output records: alerts and dead letters as JSON bytes (one object per line/message).

Alert record::

    {"alert_id": "...", "series": "3", "ts": "2024-01-01T00:07:12+00:00", "value": 78.4,
     "score": 1.0, "severity": "critical", "detector": "robust-z",
     "reason": "value: 78.40 outside the recent range 21.02..27.97 (...)", "label": "spike"}

``label`` is the ground truth of the reading when the input carried one (a
simulator), else ``null``. Dead-letter record::

    {"origin": "sensors", "partition": 2, "offset": 1041, "step": "decode",
     "reason": "field 'temp': expected a number, got str 'hot'",
     "key": "3", "value": "<payload as text, or null>", "value_b64": "<payload, base64>"}

``value_b64`` always holds the exact original bytes; ``value`` repeats them as
text when they are valid UTF-8, for people reading the topic.

Example:
    >>> from operators.events import DeadLetter
    >>> dead_letter_record(DeadLetter("t", 0, 7, b"k", b"{", "decode", "bad"))["value_b64"]
    'ew=='

"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson

from operators.events import Alert, DeadLetter, datetime_to_ms


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def alert_record(alert: Alert) -> dict[str, Any]:
    """The alert as a JSON-ready dict."""
    return {
        "alert_id": alert.alert_id,
        "series": alert.series,
        "ts": alert.ts.isoformat(),
        "value": alert.value,
        "score": alert.score,
        "severity": alert.severity,
        "detector": alert.detector,
        "reason": alert.reason,
        "label": alert.label,
    }


def alert_series_ms(record: dict[str, Any]) -> tuple[str, int]:
    """``(series, event time in ms)`` of an alert record read back, for matching to labels.

    Example:
        >>> alert_series_ms({"series": "3", "ts": "1970-01-01T00:00:01.500000+00:00"})
        ('3', 1500)

    """
    return str(record["series"]), datetime_to_ms(datetime.fromisoformat(str(record["ts"])))


def dead_letter_record(dl: DeadLetter) -> dict[str, Any]:
    """The dead letter as a JSON-ready dict keeping the original bytes."""
    return {
        "origin": dl.origin,
        "partition": dl.partition,
        "offset": dl.offset,
        "step": dl.step,
        "reason": dl.reason,
        "key": _text(dl.key),
        "value": _text(dl.value),
        "value_b64": None if dl.value is None else base64.b64encode(dl.value).decode(),
    }


def alert_message(alert: Alert) -> tuple[bytes, bytes]:
    """Kafka ``(key, value)`` of an alert: keyed by its stable id."""
    return alert.alert_id.encode(), orjson.dumps(alert_record(alert))


def dead_letter_message(dl: DeadLetter) -> tuple[bytes | None, bytes]:
    """Kafka ``(key, value)`` of a dead letter: keyed by the original key."""
    return dl.key, orjson.dumps(dead_letter_record(dl))
