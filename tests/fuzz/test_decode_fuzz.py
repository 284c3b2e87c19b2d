"""Fuzzing ``decode_batch`` of every wire format: each message is a reading or a dead letter.

Hostile messages (see :mod:`tests.fuzz.readings`): tombstones, empty and
truncated JSON, invalid UTF-8, nesting past any parser's depth, NaN and
infinity, numbers beyond the double range, JSON that is not an object,
fields missing, duplicated, of the wrong type or out of range, series ids
and strings of hundreds of kilobytes, messages of many megabytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.decode import Decoded, decode_batch
from operators.events import RawBatch, SeriesBatch
from operators.serde import MAX_TS_MS, MIN_TS_MS, WireFormat
from operators.shards import decode_shards, shard_of
from tests.fuzz.budget import fuzz
from tests.fuzz.readings import JSON_VALUES, SENSORS_SPEC, SPECS, Case, Spec, cases, valid

pytestmark = pytest.mark.timeout(120)

ORIGIN = "fuzz"
#: How a dead letter's reason may start: the part at fault.
PARTS = ("payload", "key", "field '")
#: Reasons stay short whatever arrives (a series id is at most 256 characters).
MAX_REASON = 4096


def raw_batch(
    keys: Sequence[bytes | None], values: Sequence[bytes | None], first: int, partition: int = 3
) -> RawBatch:
    offsets = tuple(range(first, first + 7 * len(values), 7))
    return RawBatch(ORIGIN, partition, tuple(keys), tuple(values), offsets)


def of_cases(batch: Sequence[Case], first: int) -> RawBatch:
    return raw_batch([c.key for c in batch], [c.value for c in batch], first)


def flat(out: Decoded) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Every reading and dead letter as comparable tuples, by offset."""
    readings = []
    for b in out.oks:
        assert b.offsets is not None
        for i, off in enumerate(b.offsets.tolist()):
            channels = None if b.channels is None else tuple(b.channels[i].tolist())
            readings.append(
                (
                    off,
                    b.series,
                    int(b.ts_ms[i]),
                    float(b.values[i]),
                    channels,
                    b.labels[i],
                    b.raw[i],
                )
            )
    dead = [(e.offset, e.key, e.value, e.step, e.reason) for e in out.errs]
    return sorted(readings, key=lambda r: r[0]), sorted(dead, key=lambda d: d[0])  # type: ignore[arg-type, return-value]


def check_accounting(raw: RawBatch, out: Decoded) -> None:
    """Every message comes out exactly once, whatever it held, with its bytes."""
    assert isinstance(out, Decoded)
    by_offset = dict(zip(raw.offsets, zip(raw.keys, raw.values, strict=True), strict=True))
    seen: list[int] = []
    for b in out.oks:
        assert isinstance(b, SeriesBatch)
        assert b.offsets is not None
        n = len(b)
        assert n > 0
        assert len(b.ts_ms) == len(b.labels) == len(b.offsets) == len(b.raw) == n
        assert b.ts_ms.dtype == np.int64
        assert b.values.dtype == np.float64
        assert (b.origin, b.partition) == (raw.origin, raw.partition)
        assert isinstance(b.series, str)
        assert 0 < len(b.series) <= 256
        assert np.isfinite(b.values).all()
        assert ((b.ts_ms >= MIN_TS_MS) & (b.ts_ms < MAX_TS_MS)).all()
        assert (np.diff(b.offsets) > 0).all(), "a series' readings left source order"
        if b.channels is not None:
            assert b.channels.shape[0] == n
            assert np.isfinite(b.channels).all()
        for off, payload in zip(b.offsets.tolist(), b.raw, strict=True):
            assert payload == by_offset[off][1], "a reading lost its original bytes"
            seen.append(off)
    for e in out.errs:
        assert e.step == "decode"
        assert (e.origin, e.partition) == (raw.origin, raw.partition)
        assert (e.key, e.value) == by_offset[e.offset], "a dead letter lost its original bytes"
        assert e.reason.startswith(PARTS), e.reason
        assert len(e.reason) <= MAX_REASON, f"reason of {len(e.reason)} chars"
        seen.append(e.offset)
    assert sorted(seen) == sorted(raw.offsets), "a message was dropped or came out twice"
    assert sum(len(b) for b in out.oks) + len(out.errs) == len(raw)
    names = [b.series for b in out.oks]
    assert len(names) == len(set(names)), "one series in two batches"


def check_verdicts(spec: Spec, batch: Sequence[Case], raw: RawBatch, out: Decoded) -> None:
    """Each valid message gives its reading; each hostile one a reason naming the part at fault."""
    case_at = dict(zip(raw.offsets, batch, strict=True))
    first_seen: dict[str, None] = {}
    for c in batch:
        if c.reading is not None:
            first_seen.setdefault(c.reading[0])
    assert [b.series for b in out.oks] == list(first_seen), (
        "series not in order of first appearance"
    )
    for b in out.oks:
        assert b.offsets is not None
        for i, off in enumerate(b.offsets.tolist()):
            c = case_at[off]
            assert c.reading is not None, f"{c.kind} message accepted: {c.value!r:.200}"
            name, ts_ms, values, label = c.reading
            assert (b.series, int(b.ts_ms[i]), b.labels[i]) == (name, ts_ms, label), c.kind
            if spec.multi:
                assert b.channels is not None
                assert tuple(b.channels[i].tolist()) == values
                assert b.values[i] == values[spec.fmt.primary]
            else:
                assert b.values[i] == values[0]
    for e in out.errs:
        c = case_at[e.offset]
        assert c.fault is not None, f"valid ({c.kind}) message dead-lettered: {e.reason}"
        assert e.reason.startswith(c.fault), (c.kind, c.fault, e.reason)


def one_by_one(raw: RawBatch, fmt: object) -> Decoded:
    """Each message decoded in a batch of its own, the results put together."""
    oks: list[SeriesBatch] = []
    errs = []
    for k, v, off in zip(raw.keys, raw.values, raw.offsets, strict=True):
        out = decode_batch(RawBatch(raw.origin, raw.partition, (k,), (v,), (off,)), fmt)  # type: ignore[arg-type]
        oks.extend(out.oks)
        errs.extend(out.errs)
    return Decoded(tuple(oks), tuple(errs))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@fuzz(80)
@given(data=st.data())
def test_mixed_batches_give_each_message_its_verdict(spec: Spec, data: st.DataObject) -> None:
    batch = data.draw(st.lists(cases(spec), min_size=1, max_size=24), label="batch")
    raw = of_cases(batch, data.draw(st.integers(0, 2**62), label="first offset"))
    out = decode_batch(raw, spec.fmt)
    check_accounting(raw, out)
    check_verdicts(spec, batch, raw, out)
    # However the batch is decoded (a columnar pass or message by message), a
    # message's verdict is the one it gets on its own.
    assert flat(out) == flat(one_by_one(raw, spec.fmt))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@fuzz(25)
@given(data=st.data())
def test_all_valid_batches_decode_every_reading(spec: Spec, data: st.DataObject) -> None:
    batch = data.draw(st.lists(valid(spec), min_size=1, max_size=40), label="batch")
    raw = of_cases(batch, 0)
    out = decode_batch(raw, spec.fmt)
    assert out.errs == ()
    check_accounting(raw, out)
    check_verdicts(spec, batch, raw, out)
    assert flat(out) == flat(one_by_one(raw, spec.fmt))


def near_messages(spec: Spec) -> st.SearchStrategy[bytes]:
    """Objects of the format's own fields holding anything, and bytes of any kind."""
    names = st.sampled_from(sorted(spec.reserved)) | st.text(max_size=4)
    objects = st.dictionaries(names, JSON_VALUES, max_size=8).map(orjson.dumps)
    return objects | st.binary(max_size=200) | JSON_VALUES.map(orjson.dumps)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@fuzz(60)
@given(data=st.data())
def test_arbitrary_messages_are_accounted_for(spec: Spec, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.none() | near_messages(spec), min_size=1, max_size=16))
    keys = data.draw(st.lists(st.none() | st.binary(max_size=6), min_size=len(values)))
    raw = raw_batch(keys[: len(values)], values, 0)
    out = decode_batch(raw, spec.fmt)
    check_accounting(raw, out)
    assert flat(out) == flat(one_by_one(raw, spec.fmt))


MB = 2**20
BIG = 8 * MB
GOOD = {"sensor_id": "7", "ts": "2024-01-01 00:00:00", "temp": 21.5}


def with_(**changes: object) -> bytes:
    return orjson.dumps({**GOOD, **changes})


def test_messages_of_many_megabytes() -> None:
    cases_ = [
        (with_(blob="x" * BIG), None),
        (with_(label="l" * BIG), None),
        (with_(blob=list(range(BIG // 8))), None),
        (with_(sensor_id="s" * BIG), "field 'sensor_id': expected a non-empty string"),
        (with_(ts="2" * BIG), "field 'ts': expected 'YYYY-mm-dd HH:MM:SS'"),
        (with_(temp="9" * BIG), "field 'temp': expected a number, got str"),
        (with_(temp=0)[:-2] + b"9" * BIG + b"}", "payload: expected JSON"),
        (b"[" * BIG + b"]" * BIG, "payload: expected JSON"),
        (b'{"sensor_id":"' + b"\xff" * BIG + b'"}', "payload: expected JSON"),
        (with_(temp=1)[:-1] + b" " * BIG, "payload: expected JSON"),
        (orjson.dumps(list(range(BIG // 8))), "payload: expected a JSON object, got list"),
        (with_(extra=[[[[0]]]] * (BIG // 40)), None),
    ]
    assert all(len(v) > MB for v, _ in cases_)
    raw = raw_batch([b"7"] * len(cases_), [v for v, _ in cases_], 0)
    out = decode_batch(raw)
    check_accounting(raw, out)
    got = {e.offset: e.reason for e in out.errs}
    for off, (_value, fault) in zip(raw.offsets, cases_, strict=True):
        if fault is None:
            assert off not in got, got.get(off)
        else:
            assert got[off].startswith(fault), got[off]
    [readings] = out.oks
    assert len(readings) == sum(f is None for _, f in cases_)
    assert readings.labels[1] == "l" * BIG
    assert all(math.isclose(v, 21.5) for v in readings.values.tolist())
    assert flat(out) == flat(one_by_one(raw, SENSORS_SPEC.fmt))


def per_shard_as_decoded(raw: RawBatch, fmt: WireFormat, shards: int) -> Decoded:
    """:func:`decode_shards`, each shard's series checked and split back into batches."""
    out = decode_shards(raw, fmt, shards)
    oks: list[SeriesBatch] = []
    keys = [key for key, _ in out.items]
    assert len(keys) == len(set(keys)), "one shard in two items"
    for key, item in out.items:
        assert (item.origin, item.partition) == (raw.origin, raw.partition)
        assert len(item.bounds) == len(item.names) + 1
        assert item.bounds[0] == 0
        assert item.bounds[-1] == len(item)
        assert (np.diff(item.bounds) > 0).all(), "a series without readings"
        assert {shard_of(name, shards) for name in item.names} == {key}
        oks.extend(item.batches())
    return Decoded(tuple(oks), out.errs)


@pytest.mark.parametrize("valid_only", [True, False], ids=["valid", "mixed"])
@pytest.mark.parametrize("shards", [1, 3, 64])
@fuzz(40)
@given(data=st.data())
def test_batches_per_shard_hold_what_decoding_gives(
    valid_only: bool, shards: int, data: st.DataObject
) -> None:
    # The sharded flows' decode: the same readings and dead letters as decode_batch,
    # each series whole in the item of its shard, in source order.
    strategy = valid(SENSORS_SPEC) if valid_only else cases(SENSORS_SPEC)
    batch = data.draw(st.lists(strategy, min_size=1, max_size=40), label="batch")
    raw = of_cases(batch, data.draw(st.integers(0, 2**40), label="first offset"))
    got = per_shard_as_decoded(raw, SENSORS_SPEC.fmt, shards)
    check_accounting(raw, got)
    assert flat(got) == flat(decode_batch(raw, SENSORS_SPEC.fmt))
