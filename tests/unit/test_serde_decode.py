from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson
import pytest

from operators.decode import decode_batch
from operators.events import RawBatch, Reading
from operators.serde import DecodeError, decode_reading, encode_reading

pytestmark = pytest.mark.timeout(30)

GOOD = {"sensor_id": "2", "ts": "2024-01-01 00:00:05", "temp": 24.5}


def msg(**changes: object) -> bytes:
    obj = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in obj.items() if v is not ...})


@pytest.mark.parametrize("label", [None, "spike"])
def test_round_trip(label: str | None) -> None:
    r = Reading("7", datetime(2024, 3, 1, 12, 30, 1, 250000, tzinfo=UTC), 22.125, label)
    assert decode_reading(*encode_reading(r)) == r


def test_accepts_iso_with_offset_and_integer_sensor_id() -> None:
    r = decode_reading(None, msg(ts="2024-01-01T02:00:05+02:00", sensor_id=4))
    assert r.series == "4"
    assert r.ts == datetime(2024, 1, 1, 0, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"{not json", "payload: expected JSON"),
        (b"\xff\xfe\x00", "payload: expected JSON"),
        (b"[1, 2]", "payload: expected a JSON object, got list"),
        (b'{"sensor_id": "1", "ts": "2024-01-01 00:00:00", "temp": NaN}', "payload: expected JSON"),
        (
            b'{"sensor_id": "1", "ts": "2024-01-01 00:00:00", "temp": 1e999}',
            "payload: expected JSON",
        ),
        (msg(temp="hot"), "field 'temp': expected a number, got str"),
        (msg(temp=True), "field 'temp': expected a number, got bool"),
        (msg(temp=...), "field 'temp': expected a number, got NoneType"),
        (msg(ts=...), "field 'ts': missing"),
        (msg(ts="yesterday"), "field 'ts': expected 'YYYY-mm-dd HH:MM:SS' or ISO 8601"),
        (msg(ts=1704067200), "field 'ts': expected a timestamp string, got int"),
        (msg(ts="1970-01-01 00:00:00"), "field 'ts': expected a time between 2000 and 2100"),
        (msg(ts="2999-01-01 00:00:00"), "field 'ts': expected a time between 2000 and 2100"),
        (msg(sensor_id=...), "field 'sensor_id': expected a non-empty string"),
        (msg(sensor_id=""), "field 'sensor_id': expected a non-empty string"),
        (msg(sensor_id=["a"]), "field 'sensor_id': expected a non-empty string"),
        (msg(label=3), "field 'label': expected a string or null, got int"),
    ],
)
def test_malformed_messages_are_rejected_with_reason(payload: bytes, expected: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_reading(None, payload)
    assert str(info.value).startswith(expected), str(info.value)


def test_tombstone_is_rejected() -> None:
    with pytest.raises(DecodeError, match="tombstone"):
        decode_reading(b"1", None)


def test_decode_batch_groups_by_series_and_keeps_bad_bytes() -> None:
    values = [
        msg(sensor_id="a", temp=1.0),
        b"oops",
        msg(sensor_id="b", temp=2.0),
        msg(sensor_id="a", temp=3.0, ts="2024-01-01 00:00:06"),
    ]
    raw = RawBatch("sensors", 3, (b"a", b"x", b"b", b"a"), tuple(values), (10, 11, 12, 13))
    out = decode_batch(raw)
    assert [(b.series, b.values.tolist(), b.offsets.tolist()) for b in out.oks] == [
        ("a", [1.0, 3.0], [10, 13]),
        ("b", [2.0], [12]),
    ]
    assert out.oks[0].raw == (values[0], values[3])
    [err] = out.errs
    assert (err.origin, err.partition, err.offset, err.key, err.value) == (
        "sensors",
        3,
        11,
        b"x",
        b"oops",
    )
    assert err.step == "decode"
    assert math.isfinite(out.oks[1].values[0])
