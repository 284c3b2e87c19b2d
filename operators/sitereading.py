"""Wire format of sewer flow-site readings: pure encoding and strict decoding, no I/O.

A flow site reports five channels every five minutes. One reading travels as one
JSON object keyed by its site id::

    key:   b"site-0"
    value: {"site_id": "site-0", "ts": "2024-01-01 00:05:00", "velocity": 0.612,
            "flow": 14.27, "level": 61.3, "temperature": 13.41, "rainfall": 0.0,
            "label": null}

Units: velocity m/s, flow L/s, level (depth of water in the pipe) mm, water
temperature °C, rainfall mm in the five minutes. ``ts`` is event time in UTC, as
:func:`operators.serde.parse_ts_ms` reads it. ``label`` is the ground-truth
fault kind when a simulator knows it (``null``: a normal reading).

Decoding is strict: every channel must be present and a number (JSON has no
NaN or infinity, and a number beyond the double range is invalid JSON), the
site id a non-empty string that matches the message key when there is one.

Example:
    >>> r = SiteReading("site-0", 1704067500000, 0.612, 14.27, 61.3, 13.41, 0.0)
    >>> key, value = encode_site_reading(r)
    >>> key
    b'site-0'
    >>> value[:58]
    b'{"site_id":"site-0","ts":"2024-01-01 00:05:00","velocity":'
    >>> decode_site_reading(key, value) == r
    True
    >>> decode_site_reading(key, value.replace(b'"flow"', b'"fl"'))
    Traceback (most recent call last):
    ...
    operators.serde.DecodeError: field 'flow': missing

"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from operators.events import ms_to_datetime
from operators.serde import (
    MAX_SERIES_LEN,
    MAX_TS_MS,
    MIN_TS_MS,
    DecodeError,
    WireFormat,
    format_ts,
    parse_ts_ms,
)

__all__ = [
    "CHANNELS",
    "SITES",
    "UNITS",
    "SiteReading",
    "decode_site_reading",
    "encode_site_reading",
]

#: The five channels of a reading, in the order of every array of them.
CHANNELS: tuple[str, ...] = ("velocity", "flow", "level", "temperature", "rainfall")
#: Unit of each channel, in :data:`CHANNELS` order.
UNITS: tuple[str, ...] = ("m/s", "L/s", "mm", "°C", "mm/5 min")
#: Field of the site id and of the first channel (the generator's encoder builds on it).
SITES = WireFormat("site_id", CHANNELS[0])


@dataclass(frozen=True, slots=True)
class SiteReading:
    """One reading of one flow site.

    Attributes:
        site_id: The site, also the message key.
        ts_ms: Event time, epoch milliseconds UTC.
        velocity: Mean velocity, m/s.
        flow: Flow rate, L/s.
        level: Depth of water in the pipe, mm.
        temperature: Water temperature, °C.
        rainfall: Rain in the five minutes to ``ts``, mm.
        label: Ground-truth fault kind (``None``: normal).

    Example:
        >>> r = SiteReading("site-1", 0, 1.0, 2.0, 3.0, 4.0, 5.0, "spike")
        >>> r.values, r.ts.isoformat()
        ((1.0, 2.0, 3.0, 4.0, 5.0), '1970-01-01T00:00:00+00:00')

    """

    site_id: str
    ts_ms: int
    velocity: float
    flow: float
    level: float
    temperature: float
    rainfall: float
    label: str | None = None

    @property
    def values(self) -> tuple[float, float, float, float, float]:
        """The five channels in :data:`CHANNELS` order."""
        return (self.velocity, self.flow, self.level, self.temperature, self.rainfall)

    @property
    def ts(self) -> datetime:
        """Event time, timezone-aware UTC."""
        return ms_to_datetime(self.ts_ms)


def encode_site_reading(reading: SiteReading) -> tuple[bytes, bytes]:
    """Encode a reading as a Kafka ``(key, value)`` pair of bytes (see the module docstring)."""
    payload: dict[str, Any] = {SITES.series_field: reading.site_id}
    payload["ts"] = format_ts(reading.ts)
    payload.update(zip(CHANNELS, reading.values, strict=True))
    payload["label"] = reading.label
    return reading.site_id.encode(), orjson.dumps(payload)


def _number(obj: dict[str, Any], name: str) -> float:
    if name not in obj:
        raise DecodeError(f"field {name!r}: missing")
    raw = obj[name]
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        msg = f"field {name!r}: expected a number, got {type(raw).__name__} {raw!r:.40}"
        raise DecodeError(msg)
    # orjson already refuses numbers beyond the double range, NaN and Infinity.
    return float(raw)


def decode_site_reading(key: bytes | None, value: bytes | None) -> SiteReading:
    """Decode one flow-site message.

    Args:
        key: The message key (``None`` when absent); when present it must be the site id.
        value: The JSON payload.

    Raises:
        DecodeError: naming the field, what was expected and what arrived.

    Example:
        >>> decode_site_reading(b"site-0", b'{"site_id": "site-1"}')
        Traceback (most recent call last):
        ...
        operators.serde.DecodeError: key: expected the site id 'site-1', got b'site-0'

    """
    if value is None:
        raise DecodeError("payload: expected a JSON object, got an empty message (tombstone)")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"payload: expected JSON, got invalid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise DecodeError(f"payload: expected a JSON object, got {type(obj).__name__}")
    name = SITES.series_field
    site = obj.get(name)
    if not isinstance(site, str) or not site or len(site) > MAX_SERIES_LEN:
        msg = (
            f"field {name!r}: expected a non-empty string of at most {MAX_SERIES_LEN} "
            f"characters, got {type(site).__name__} {site!r:.40}"
        )
        raise DecodeError(msg)
    if key is not None and key != site.encode():
        raise DecodeError(f"key: expected the site id {site!r}, got {key!r:.60}")
    if "ts" not in obj:
        raise DecodeError("field 'ts': missing")
    ts_ms = parse_ts_ms(obj["ts"])
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        msg = f"field 'ts': expected a time between 2000 and 2100, got {obj['ts']!r:.40}"
        raise DecodeError(msg)
    velocity, flow, level, temperature, rainfall = (_number(obj, c) for c in CHANNELS)
    label = obj.get("label")
    if label is not None and not isinstance(label, str):
        raise DecodeError(f"field 'label': expected a string or null, got {type(label).__name__}")
    return SiteReading(site, ts_ms, velocity, flow, level, temperature, rainfall, label)
