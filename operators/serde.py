"""Wire format of readings: pure encoding and decoding, no I/O.

A reading travels as a JSON object keyed by its series id. The sensors flow
uses the format of the original warehouse pipeline plus an optional
ground-truth label (:data:`SENSORS`)::

    key:   b"3"
    value: {"sensor_id": "3", "ts": "2024-01-01 00:00:07", "temp": 24.31, "label": null}

The metrics flow names the same two fields generically (:data:`METRICS`)::

    key:   b"0"
    value: {"series": "0", "ts": "2024-01-01 00:07:00", "value": 0.6442, "label": null}

``ts`` is event time in UTC, either ``YYYY-mm-dd HH:MM:SS`` (the original's
format, read as UTC) or ISO 8601 with an explicit offset.

Example:
    >>> from datetime import datetime, timezone
    >>> r = Reading("3", datetime(2024, 1, 1, 0, 0, 7, tzinfo=timezone.utc), 24.31)
    >>> key, value = encode_reading(r)
    >>> key, value
    (b'3', b'{"sensor_id":"3","ts":"2024-01-01 00:00:07","temp":24.31,"label":null}')
    >>> decode_reading(key, value) == r
    True
    >>> encode_reading(r, METRICS)[1]
    b'{"series":"3","ts":"2024-01-01 00:00:07","value":24.31,"label":null}'

"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from operators.events import Reading, datetime_to_ms

TS_FORMAT = "%Y-%m-%d %H:%M:%S"
# Event times outside this window are certainly corrupt (a clock at zero, a
# value in the wrong unit); they would poison per-series ordering and gaps.
MIN_TS_MS = datetime_to_ms(datetime(2000, 1, 1, tzinfo=UTC))
MAX_TS_MS = datetime_to_ms(datetime(2100, 1, 1, tzinfo=UTC))
MAX_SERIES_LEN = 256


ChannelDecoder = Callable[
    [bytes | None, bytes | None], tuple[str, int, tuple[float, ...], str | None]
]


class DecodeError(ValueError):
    """A message that is not a valid reading; the text says why."""


@dataclass(frozen=True, slots=True)
class WireFormat:
    """Names of the JSON fields that carry a reading's series id and value.

    Attributes:
        series_field: Field of the series id (the message key stands in when it is absent).
        value_field: Field of the numeric value (of a multi-channel reading: the
            channel that stands for it in views and reasons).
        channels: Decoder of a multi-channel reading: ``(key, value)`` to
            ``(series, ts_ms, channel values, label)``, raising :class:`DecodeError`
            (``None``: one value, decoded by :func:`decode_fields`).
        primary: Index of ``value_field`` among the channels.

    """

    series_field: str
    value_field: str
    channels: ChannelDecoder | None = None
    primary: int = 0


#: The sensors flow's format, the original warehouse pipeline's.
SENSORS = WireFormat("sensor_id", "temp")
#: The metrics flow's format.
METRICS = WireFormat("series", "value")
#: The wildlife flow's format: bear heart rates in beats per minute.
BEARS = WireFormat("bear_id", "heart_rate")


def format_ts(ts: datetime) -> str:
    """Format an event time in the original's second-resolution UTC format.

    Sub-second precision is kept as ISO 8601 fractional seconds when present.

    Example:
        >>> format_ts(datetime(2024, 5, 1, 12, 0, 1, tzinfo=UTC))
        '2024-05-01 12:00:01'

    """
    ts = ts.astimezone(UTC)
    if ts.microsecond:
        return ts.strftime(TS_FORMAT) + f".{ts.microsecond:06d}"
    return ts.strftime(TS_FORMAT)


def encode_reading(reading: Reading, fmt: WireFormat = SENSORS) -> tuple[bytes, bytes]:
    """Encode a reading as a Kafka ``(key, value)`` pair of bytes in format ``fmt``."""
    payload = {
        fmt.series_field: reading.series,
        "ts": format_ts(reading.ts),
        fmt.value_field: reading.value,
        "label": reading.label,
    }
    return reading.series.encode(), orjson.dumps(payload)


def parse_ts_ms(raw: Any) -> int:
    """Parse an event-time field into epoch milliseconds (UTC).

    Accepts ``YYYY-mm-dd HH:MM:SS[.ffffff]`` (read as UTC) or ISO 8601 with an
    explicit offset or ``Z``.

    Raises:
        DecodeError: for anything else, naming what arrived.

    Example:
        >>> parse_ts_ms("1970-01-01 00:00:01.5") - parse_ts_ms("1970-01-01T00:00:00Z")
        1500

    """
    if not isinstance(raw, str):
        msg = f"field 'ts': expected a timestamp string, got {type(raw).__name__} {raw!r:.40}"
        raise DecodeError(msg)
    return parse_ts_text(raw)


@lru_cache(maxsize=1 << 16)
def parse_ts_text(raw: str) -> int:
    """Epoch milliseconds of an event-time string (see :func:`parse_ts_ms`); cached.

    The readings of many series share each event time, so most calls are cache hits
    (65,536 recent times: a few MiB).

    Raises:
        DecodeError: naming what arrived.

    """
    try:
        ts = datetime.fromisoformat(raw)
    except ValueError:
        msg = f"field 'ts': expected 'YYYY-mm-dd HH:MM:SS' or ISO 8601, got {raw!r:.40}"
        raise DecodeError(msg) from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return datetime_to_ms(ts)


def decode_fields(
    key: bytes | None, value: bytes | None, fmt: WireFormat = SENSORS
) -> tuple[str, int, float, str | None]:
    """Decode one message in format ``fmt`` into ``(series, ts_ms, value, label)``.

    This is the hot-path form of :func:`decode_reading`: it builds no objects
    beyond the tuple.

    Raises:
        DecodeError: when the message is not a valid reading; the message
            names the field, what was expected and what arrived.

    """
    if value is None:
        raise DecodeError("payload: expected a JSON object, got an empty message (tombstone)")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        msg = f"payload: expected JSON, got invalid JSON ({exc})"
        raise DecodeError(msg) from None
    if not isinstance(obj, dict):
        msg = f"payload: expected a JSON object, got {type(obj).__name__}"
        raise DecodeError(msg)
    series = obj.get(fmt.series_field)
    if series is None and key:
        try:
            series = key.decode()
        except UnicodeDecodeError:
            raise DecodeError("key: expected a UTF-8 series id, got undecodable bytes") from None
    if isinstance(series, int) and not isinstance(series, bool):
        series = str(series)
    if not isinstance(series, str) or not series or len(series) > MAX_SERIES_LEN:
        msg = (
            f"field '{fmt.series_field}': expected a non-empty string of at most {MAX_SERIES_LEN} "
            f"characters, got {type(series).__name__} {series!r:.40}"
        )
        raise DecodeError(msg)
    if "ts" not in obj:
        raise DecodeError("field 'ts': missing")
    ts_ms = parse_ts_ms(obj["ts"])
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        msg = f"field 'ts': expected a time between 2000 and 2100, got {obj['ts']!r:.40}"
        raise DecodeError(msg)
    name = fmt.value_field
    temp = obj.get(name)
    if isinstance(temp, bool) or not isinstance(temp, int | float):
        msg = f"field '{name}': expected a number, got {type(temp).__name__} {temp!r:.40}"
        raise DecodeError(msg)
    temp = float(temp)
    if not math.isfinite(temp):
        msg = f"field '{name}': expected a finite number, got {temp!r}"
        raise DecodeError(msg)
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        msg = f"field 'label': expected a string or null, got {type(label).__name__}"
        raise DecodeError(msg)
    return series, ts_ms, temp, label


def decode_reading(key: bytes | None, value: bytes | None, fmt: WireFormat = SENSORS) -> Reading:
    """Decode one message in format ``fmt`` into a :class:`Reading`.

    Raises:
        DecodeError: see :func:`decode_fields`.

    """
    series, ts_ms, temp, label = decode_fields(key, value, fmt)
    return Reading(series, datetime.fromtimestamp(ts_ms / 1000.0, tz=UTC), temp, label)
