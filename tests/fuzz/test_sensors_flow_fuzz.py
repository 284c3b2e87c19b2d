"""The real sensors flow on a fuzzed mix of valid and hostile messages: the counts reconcile.

Every message that goes in comes out once: as a scored reading (the view
output) or as a dead letter, from the decode step (hostile bytes) or from the
normalize step (an event time duplicated or out of order, also after one far
in the future). A dead letter keeps the original bytes and a reason naming
the part at fault.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import event, given
from hypothesis import strategies as st

from dataflows.sensors import Config, build_flow
from operators.events import RawBatch, Scored, ScoredBatch, ScoredRows
from operators.flowkit import Sinks
from tests.fuzz.budget import fuzz
from tests.fuzz.readings import SENSORS_SPEC, Case, cases, ms_of, stamps

pytestmark = pytest.mark.timeout(180)

BASE = datetime(2024, 1, 1)
#: The last event time the decode step accepts: every later one is out of order.
FAR = datetime(2099, 12, 31, 23, 59, 59, 999_000)
SERIES = ["1", "2", "é🙂", "s" * 256]


@st.composite
def series(draw: st.DrawFn) -> tuple[bytes, str]:
    """A few series, so that event times collide; ``7`` also arrives as a JSON number."""
    if draw(st.integers(0, 6)) == 0:
        return b"7", "7"
    name = draw(st.sampled_from([*SERIES, "7"]))
    return orjson.dumps(name), name


@st.composite
def times(draw: st.DrawFn) -> tuple[str, int]:
    """Event times within a minute (duplicates and disorder likely), now and then the far future."""
    if draw(st.integers(0, 19)) == 0:
        when = FAR
    else:
        when = BASE + timedelta(seconds=draw(st.integers(0, 40)))
    return draw(stamps(lo=when, hi=when))


MIXED = cases(SENSORS_SPEC, series=series(), times=times())


@dataclass(frozen=True)
class Sent:
    partition: int
    offset: int
    case: Case


def to_batches(parts: list[list[Case]]) -> tuple[list[RawBatch], list[Sent]]:
    """Raw batches over two partitions, offsets counting per partition as Kafka's do."""
    batches = []
    sent = []
    next_offset = [0, 0]
    for i, part in enumerate(parts):
        p = i % 2
        first = next_offset[p]
        offsets = tuple(range(first, first + len(part)))
        next_offset[p] += len(part)
        batches.append(
            RawBatch(
                "sensors", p, tuple(c.key for c in part), tuple(c.value for c in part), offsets
            )
        )
        sent.extend(Sent(p, o, c) for o, c in zip(offsets, part, strict=True))
    return batches, sent


def expected(sent: list[Sent]) -> tuple[Counter[tuple[object, ...]], dict[tuple[int, int], str]]:
    """What the flow must give: scored readings, and the step that refuses each other message.

    A series accepts a reading only later than every event time it has seen.
    """
    scored: Counter[tuple[object, ...]] = Counter()
    dead: dict[tuple[int, int], str] = {}
    latest: dict[str, int] = {}
    for s in sent:
        if s.case.reading is None:
            dead[s.partition, s.offset] = "decode"
            continue
        name, ts_ms, (value,), label = s.case.reading
        if name in latest and ts_ms <= latest[name]:
            dead[s.partition, s.offset] = "normalize"
            continue
        latest[name] = ts_ms
        scored[name, ts_ms, value, label] += 1
    return scored, dead


def run(
    batches: list[RawBatch],
) -> tuple[list[dict], list[tuple[bytes | None, dict]], list[ScoredBatch]]:  # type: ignore[type-arg]
    alerts: list[tuple[bytes, bytes]] = []
    dead: list[tuple[bytes | None, bytes]] = []
    view: list[Scored] = []
    sinks = Sinks(TestingSink(alerts), TestingSink(dead), TestingSink(view))  # type: ignore[arg-type]
    run_main(build_flow(Config(), source=TestingSource(batches), sinks=sinks))
    return (
        [orjson.loads(v) for _, v in alerts],
        [(k, orjson.loads(v)) for k, v in dead],
        # Rounds of many series' readings, as per-series batches.
        [b for v in view for b in (v.batches() if isinstance(v, ScoredRows) else [v])],
    )


@fuzz(50)
@given(parts=st.lists(st.lists(MIXED, min_size=1, max_size=16), min_size=1, max_size=8))
def test_every_message_is_scored_or_dead_lettered_with_its_reason(parts: list[list[Case]]) -> None:
    batches, sent = to_batches(parts)
    alerts, dead, view = run(batches)

    readings = Counter(
        (b.series, int(t), float(v), label)
        for b in view
        for t, v, label in zip(b.ts_ms, b.values, b.labels, strict=True)
    )
    want_scored, want_dead = expected(sent)
    refused_late = Counter(want_dead.values())["normalize"]
    event(f"normalize dead letters: {'3 or more' if refused_late >= 3 else refused_late}")
    # in = ok + dead letters
    assert sum(readings.values()) + len(dead) == len(sent)
    assert readings == want_scored
    by_place = {(r["partition"], r["offset"]): (key, r) for key, r in dead}
    assert len(by_place) == len(dead), "a message was dead-lettered twice"
    assert {place: r["step"] for place, (_, r) in by_place.items()} == want_dead

    sent_at = {(s.partition, s.offset): s.case for s in sent}
    for place, (key, record) in by_place.items():
        case = sent_at[place]
        assert record["origin"] == "sensors"
        original = None if case.value is None else base64.b64encode(case.value).decode()
        assert record["value_b64"] == original, "the dead letter lost the original bytes"
        reason = record["reason"]
        if record["step"] == "decode":
            assert case.fault is not None
            assert reason.startswith(case.fault), (case.kind, reason)
            assert key == case.key
        else:
            assert reason.startswith("field 'ts': expected a time after"), reason
            assert "duplicate or out of order" in reason

    for b in view:
        assert np.isfinite(b.scores).all()
        assert ((b.scores >= 0) & (b.scores <= 1)).all()
    scored_at = {(name, ts) for name, ts, _, _ in readings}
    for a in alerts:
        assert (
            a["series"],
            ms_of(datetime.fromisoformat(a["ts"]).replace(tzinfo=None)),
        ) in scored_at
        assert 0.0 <= a["score"] <= 1.0
        assert a["reason"]
