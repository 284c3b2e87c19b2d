from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.decode import _decode_columnar, _decode_each, decode_batch
from operators.events import RawBatch, Reading
from operators.serde import SENSORS, DecodeError, decode_reading, encode_reading

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


def _batches(out: object) -> list[tuple[object, ...]]:
    return [
        (b.series, b.ts_ms.tolist(), b.values.tolist(), b.labels, b.offsets.tolist(), b.raw)
        for b in out.oks  # type: ignore[attr-defined]
    ] + [(e.offset, e.reason, e.value) for e in out.errs]  # type: ignore[attr-defined]


_reading = st.fixed_dictionaries(
    {
        "sensor_id": st.sampled_from(["1", "2", "dock-7", "ä"]),
        "ts": st.integers(0, 10**6).map(
            lambda s: (datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=s)).strftime(
                "%Y-%m-%d %H:%M:%S"
            )
        ),
        "temp": st.one_of(st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6)),
        "label": st.one_of(st.none(), st.sampled_from(["spike", "stuck"])),
    }
)
# Messages a columnar batch must turn down, leaving them to the per-message rules.
_odd = st.sampled_from(
    [
        None,
        b"{bad",
        b"[1]",
        b'{"sensor_id": 3, "ts": "2024-01-01 00:00:01", "temp": 1}',
        b'{"ts": "2024-01-01 00:00:01", "temp": 1}',
        b'{"sensor_id": "1", "ts": "2024-01-01T00:00:01+01:00", "temp": 1}',
        b'{"sensor_id": "1", "ts": "1970-01-01 00:00:01", "temp": 1}',
        b'{"sensor_id": "1", "ts": "2024-01-01 00:00:01", "temp": true}',
        b'{"sensor_id": "1", "ts": "2024-01-01 00:00:01", "temp": "1"}',
        b'{"sensor_id": "", "ts": "2024-01-01 00:00:01", "temp": 1}',
        b'{"sensor_id": "1", "ts": "2024-01-01 00:00:01", "temp": 1, "label": 5}',
    ]
)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    st.lists(
        st.one_of(_reading.map(orjson.dumps), _reading.map(orjson.dumps), _odd),
        min_size=1,
        max_size=40,
    )
)
def test_columnar_decode_equals_message_by_message(values: list[bytes | None]) -> None:
    raw = RawBatch(
        "t", 0, tuple(b"k" for _ in values), tuple(values), tuple(range(100, 100 + len(values)))
    )
    assert _batches(decode_batch(raw)) == _batches(_decode_each(raw, SENSORS))


def test_a_plainly_valid_batch_takes_the_columnar_path() -> None:
    raw = RawBatch("t", 0, (b"2", b"3"), (msg(), msg(sensor_id="3")), (0, 1))
    assert _decode_columnar(raw, SENSORS) is not None
    odd = RawBatch("t", 0, (b"2", b"3"), (msg(), msg(sensor_id=3)), (0, 1))
    assert _decode_columnar(odd, SENSORS) is None
    assert [b.series for b in decode_batch(odd).oks] == ["2", "3"]
