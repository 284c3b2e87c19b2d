"""The score step gives the same outputs and state whatever the batch sizes.

With many series a source batch holds a reading or two per series, and the
normalize, detect and alert functions take cheaper routes for such batches.
Seeded labelled streams (spikes, stuck runs, gaps, out-of-order and duplicate
times, alerts and cool-downs) go through :meth:`operators.shards.Scorer.score`
in batches of 1, of 2 and of mixed sizes, one series at a time and through the
shard step (whose one-reading batches take :mod:`operators.singles`); every
scored reading, alert, dead letter and the final state (field by field) must equal
those of the same stream scored in batches of many readings, which take the
vectorised route throughout.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from operators import metrics
from operators.alerting import AlertPolicy
from operators.columns import FIRST_ROWS
from operators.events import (
    Alert,
    DeadLetter,
    Scored,
    ScoredBatch,
    ScoredRows,
    SeriesBatch,
    ShardBatch,
)
from operators.normalize import FixedMinMax, Normalizer, OnlineMinMax, RobustScaler
from operators.shards import Scorer, SeriesState, _ColumnLogic, _ScoreLogic, score_logic
from operators.steps import DetectConfig

pytestmark = pytest.mark.timeout(120)
T0 = 1_704_067_200_000
SERIES = ("a", "b", "c")
READINGS = 700


def labelled_stream(series: str, seed: int) -> SeriesBatch:
    """One series' readings with spikes, stuck runs, gaps and out-of-order times."""
    rng = np.random.default_rng(seed)
    values: list[float] = []
    times: list[int] = []
    labels: list[str | None] = []
    t = T0
    while len(values) < READINGS:
        kind = rng.choice(["normal", "spike", "stuck", "gap", "late", "dup"], p=[0.8, *[0.04] * 5])
        t += 1000
        if kind == "gap":
            t += int(rng.integers(3, 30)) * 1000
        if kind == "stuck" and values:
            run = int(rng.integers(2, 12))
            for _ in range(run):
                values.append(values[-1])
                times.append(t)
                labels.append("stuck")
                t += 1000
            continue
        if kind == "late" and times:
            times.append(times[-1] - int(rng.integers(1, 5000)))
        elif kind == "dup" and times:
            times.append(times[-1])
        else:
            times.append(t)
        spike = kind == "spike"
        values.append(round(24.0 + rng.normal(0.0, 0.5) + (30.0 if spike else 0.0), 2))
        labels.append("spike" if spike else kind if kind in ("late", "dup") else None)
    n = READINGS
    del values[n:], times[n:], labels[n:]
    return SeriesBatch(
        series,
        np.array(times, dtype=np.int64),
        np.array(values),
        tuple(labels),
        "test",
        0,
        np.arange(n, dtype=np.int64),
        tuple(f"{series}-{i}".encode() for i in range(n)),
    )


def piece(stream: SeriesBatch, start: int, stop: int) -> SeriesBatch:
    """Readings ``start:stop`` of a stream, as the decode step would batch them."""
    assert stream.offsets is not None
    return SeriesBatch(
        stream.series,
        stream.ts_ms[start:stop].copy(),
        stream.values[start:stop].copy(),
        stream.labels[start:stop],
        stream.origin,
        stream.partition,
        stream.offsets[start:stop].copy(),
        stream.raw[start:stop],
    )


def cuts(n: int, sizes: Iterator[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    while start < n:
        stop = min(start + next(sizes), n)
        out.append((start, stop))
        start = stop
    return out


def repeat(size: int) -> Iterator[int]:
    while True:
        yield size


def mixed(seed: int) -> Iterator[int]:
    rng = np.random.default_rng(seed)
    while True:
        yield int(rng.choice([1, 1, 2, 2, 3, 5, 40]))


@dataclass
class Run:
    """Everything a run produced, per reading, ready to compare."""

    columns: dict[str, list[Any]]
    alerts: list[Alert]
    dead: list[DeadLetter]
    state: tuple[Any, ...]


def run(scorer: Scorer, streams: list[SeriesBatch], sizes: Callable[[], Iterator[int]]) -> Run:
    """Score every stream in batches cut by ``sizes``, series interleaved batch by batch."""
    states: dict[str, SeriesState] = {s.series: scorer.new_state() for s in streams}
    plans = {s.series: cuts(len(s), sizes()) for s in streams}
    columns: dict[str, list[Any]] = {
        k: [] for k in ("ts_ms", "values", "labels", "raw_scores", "scores", "alerted")
    }
    alerts: list[Alert] = []
    dead: list[DeadLetter] = []
    for step in range(max(len(p) for p in plans.values())):
        for stream in streams:
            if step >= len(plans[stream.series]):
                continue
            start, stop = plans[stream.series][step]
            for item in scorer.score(states[stream.series], piece(stream, start, stop)):
                if isinstance(item, DeadLetter):
                    dead.append(item)
                    continue
                assert isinstance(item, ScoredBatch)
                assert item.alerted.dtype == np.bool_
                assert item.scores.dtype == item.raw_scores.dtype == np.float64
                for name, col in columns.items():
                    col.extend([(item.series, v) for v in list(getattr(item, name))])
                alerts.extend(item.alerts)
    return Run(columns, alerts, dead, spelled_out(states[s.series] for s in streams))


def run_shard(
    scorer: Scorer,
    streams: list[SeriesBatch],
    sizes: Callable[[], Iterator[int]],
    resume_every: int = 0,
    *,
    old_format: str = "",
    group: int = 1,
) -> Run:
    """As :func:`run`, through the shard step: each round of pieces is one shard item.

    With ``resume_every``, the step is snapshotted every that many rounds and
    the rest runs on a logic resumed from the snapshot, as after a restart. With
    ``old_format`` the snapshot is written as an earlier version wrote it:
    ``"objects"``, one pickle of every series' state; ``"packed"``, each
    series' state pickled on its own. ``group`` items go to each call of the
    step, so a series can come more than once in one call.
    """
    logic = score_logic("score", scorer, None)
    plans = {s.series: cuts(len(s), sizes()) for s in streams}
    out: list[Scored | DeadLetter] = []
    steps = max(len(p) for p in plans.values())
    for first in range(0, steps, group):
        items = [
            ShardBatch.of(
                [
                    piece(stream, *plans[stream.series][step])
                    for stream in streams
                    if step < len(plans[stream.series])
                ]
            )
            for step in range(first, min(first + group, steps))
        ]
        scored, retain = logic.on_batch(items)
        assert retain == _ScoreLogic.RETAIN
        out.extend(scored)
        if resume_every and first // group % resume_every == resume_every - 1:
            every = {s.series: logic.states.state(s.series) for s in streams}
            if old_format == "objects":
                data = pickle.dumps((scorer.shards, every), protocol=pickle.HIGHEST_PROTOCOL)
            elif old_format == "packed":
                packed = {k: pickle.dumps(v) for k, v in every.items()}
                data = pickle.dumps((scorer.shards, packed), protocol=pickle.HIGHEST_PROTOCOL)
            else:
                data = logic.snapshot()
            logic = score_logic("score", scorer, data)
    columns: dict[str, list[Any]] = {
        k: [] for k in ("ts_ms", "values", "labels", "raw_scores", "scores", "alerted")
    }
    for x in (b for o in out for b in (o.batches() if isinstance(o, ScoredRows) else [o])):
        if isinstance(x, ScoredBatch):
            assert x.alerted.dtype == np.bool_
            assert x.scores.dtype == x.raw_scores.dtype == np.float64
            for name, col in columns.items():
                col.extend([(x.series, v) for v in list(getattr(x, name))])
    return Run(
        columns,
        [a for x in out if not isinstance(x, DeadLetter) for a in x.alerts],
        [x for x in out if isinstance(x, DeadLetter)],
        spelled_out(logic.states.state(s.series) for s in streams),
    )


def spelled_out(states: Iterable[SeriesState]) -> tuple[Any, ...]:
    """Each series' state, every field and array value spelled out (:func:`canonical`).

    Not the states' pickles: which objects are shared (such as a class's
    attribute names) differs after a state was pickled and unpickled, and is
    not state.
    """
    return tuple(canonical(state) for state in states)


def canonical(x: Any) -> Any:
    """``x`` as nested tuples of type names, fields, and arrays' dtype, shape and bytes."""
    if isinstance(x, np.ndarray):
        return ("ndarray", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, dict):
        return ("dict", tuple((k, canonical(v)) for k, v in x.items()))
    if isinstance(x, list | tuple):
        return (type(x).__name__, tuple(canonical(v) for v in x))
    if hasattr(x, "__dict__") or hasattr(type(x), "__slots__"):
        # What pickling keeps of it (a detector may leave out what it recomputes).
        return (type(x).__qualname__, canonical(x.__getstate__()))
    return (type(x).__name__, repr(x))


def by_series(items: list[Any]) -> list[Any]:
    """Order per series (interleaving differs between runs), stably."""
    return sorted(items, key=lambda x: x[0] if isinstance(x, tuple) else x.series)


def assert_same(got: Run, want: Run) -> None:
    for name in want.columns:
        assert by_series(got.columns[name]) == by_series(want.columns[name]), name
    assert sorted(got.alerts, key=lambda a: a.alert_id) == sorted(
        want.alerts, key=lambda a: a.alert_id
    )
    assert sorted(got.dead, key=lambda d: (d.key, d.offset)) == sorted(
        want.dead, key=lambda d: (d.key, d.offset)
    )
    assert got.state == want.state


def fixed() -> Normalizer:
    return FixedMinMax(21.0, 85.0)


SCORERS = {
    # The sensors flow's settings, with a short cool-down and a persistence of 2.
    "robust-z": Scorer(
        fixed,
        DetectConfig("robust-z", options=(("stats_every", 4),)),
        AlertPolicy(threshold=0.99, persistence=2, cooldown_s=5.0),
        "test",
    ),
    # Every feature on one calibrator (the rows are calibrated together), no cool-down.
    "context": Scorer(
        OnlineMinMax, DetectConfig("context"), AlertPolicy(threshold=0.99, cooldown_s=0.0), "test"
    ),
    # A normalizer with state of its own (its per-event form on the one-reading path).
    "robust-z-scaled": Scorer(
        RobustScaler,
        DetectConfig("robust-z"),
        AlertPolicy(threshold=0.99, cooldown_s=2.0),
        "test",
    ),
    # The value feature alone.
    "value-only": Scorer(
        fixed,
        DetectConfig("robust-z", stuck=False, gap=False),
        AlertPolicy(threshold=0.95, cooldown_s=30.0),
        "test",
    ),
}


@pytest.fixture(scope="module")
def streams() -> list[SeriesBatch]:
    return [labelled_stream(s, seed) for seed, s in enumerate(SERIES)]


@pytest.fixture(scope="module", params=sorted(SCORERS))
def scorer_and_reference(
    request: pytest.FixtureRequest, streams: list[SeriesBatch]
) -> tuple[Scorer, Run]:
    scorer = SCORERS[request.param]
    return scorer, run(scorer, streams, lambda: repeat(READINGS * 2))


def test_reference_has_what_the_small_batches_must_match(
    scorer_and_reference: tuple[Scorer, Run],
) -> None:
    _, want = scorer_and_reference
    assert want.alerts, "no alert: the comparison would miss the alert path"
    assert want.dead, "no dead letter: the comparison would miss the rejection path"
    assert all(d.reason.endswith("(duplicate or out of order)") for d in want.dead)
    assert len(want.columns["scores"]) + len(want.dead) == READINGS * len(SERIES)


@pytest.mark.parametrize(
    "sizes",
    [lambda: repeat(1), lambda: repeat(2), lambda: mixed(7), lambda: repeat(3)],
    ids=["ones", "twos", "mixed", "threes"],
)
def test_small_batches_equal_one_batch(
    scorer_and_reference: tuple[Scorer, Run],
    streams: list[SeriesBatch],
    sizes: Callable[[], Iterator[int]],
) -> None:
    scorer, want = scorer_and_reference
    assert_same(run(scorer, streams, sizes), want)


@pytest.mark.parametrize("sizes", [lambda: repeat(1), lambda: mixed(7)], ids=["ones", "mixed"])
def test_shard_step_equals_one_batch(
    scorer_and_reference: tuple[Scorer, Run],
    streams: list[SeriesBatch],
    sizes: Callable[[], Iterator[int]],
) -> None:
    scorer, want = scorer_and_reference
    assert_same(run_shard(scorer, streams, sizes), want)


def test_shard_step_resumed_from_its_snapshots_equals_one_batch(
    scorer_and_reference: tuple[Scorer, Run], streams: list[SeriesBatch]
) -> None:
    # Series c stops early in some rounds (mixed sizes), so the snapshots hold
    # series whose live state was let go, picked up again from their bytes.
    scorer, want = scorer_and_reference
    assert_same(run_shard(scorer, streams, lambda: mixed(11), resume_every=7), want)


@pytest.mark.parametrize("old_format", ["objects", "packed"])
def test_a_store_of_a_previous_format_resumes(
    scorer_and_reference: tuple[Scorer, Run], streams: list[SeriesBatch], old_format: str
) -> None:
    scorer, want = scorer_and_reference
    got = run_shard(scorer, streams, lambda: repeat(97), resume_every=3, old_format=old_format)
    assert_same(got, want)


@pytest.mark.parametrize("sizes", [lambda: repeat(1), lambda: mixed(5)], ids=["ones", "mixed"])
def test_a_series_twice_in_one_call_keeps_its_order(
    scorer_and_reference: tuple[Scorer, Run],
    streams: list[SeriesBatch],
    sizes: Callable[[], Iterator[int]],
) -> None:
    # Five rounds of pieces per call: each series comes five times, in order.
    scorer, want = scorer_and_reference
    assert_same(run_shard(scorer, streams, sizes, group=5, resume_every=4), want)


def test_columns_hold_the_number_only_settings() -> None:
    # A fixed normalizer and robust-z: columns; a normalizer or detector that
    # keeps more than numbers (a window of its own, parts): objects per series.
    assert isinstance(score_logic("score", SCORERS["robust-z"], None), _ColumnLogic)
    assert isinstance(score_logic("score", SCORERS["value-only"], None), _ColumnLogic)
    assert isinstance(score_logic("score", SCORERS["robust-z-scaled"], None), _ScoreLogic)
    assert isinstance(score_logic("score", SCORERS["context"], None), _ScoreLogic)


def test_columns_resumed_with_other_settings_is_an_error(streams: list[SeriesBatch]) -> None:
    logic = score_logic("score", SCORERS["robust-z"], None)
    logic.on_batch([ShardBatch.of([piece(s, 0, 5) for s in streams])])
    data = logic.snapshot()
    other = dataclasses.replace(
        SCORERS["robust-z"], detect=DetectConfig("robust-z", options=(("window", 60),))
    )
    with pytest.raises(ValueError, match="other normalizer or detector settings"):
        score_logic("score", other, data)
    with pytest.raises(ValueError, match="VIGIL_SHARDS=64"):
        score_logic("score", dataclasses.replace(SCORERS["robust-z"], shards=8), data)


def test_columns_grow_and_count_their_series() -> None:
    scorer = dataclasses.replace(SCORERS["robust-z"], flow_name="grown")
    logic = score_logic("score", scorer, None)
    streams = [piece(labelled_stream(f"s{i}", 100 + i), 0, 3) for i in range(FIRST_ROWS * 2 + 5)]
    logic.on_batch([ShardBatch.of([piece(s, 0, 1) for s in streams])])
    logic.on_batch([ShardBatch.of([piece(s, 1, 3) for s in streams])])
    logic.snapshot()
    assert len(logic.states) == len(streams)
    assert metrics.SERIES.labels(flow="grown", held="live")._value.get() == len(streams)
    want = run(scorer, streams, lambda: repeat(3))
    assert spelled_out(logic.states.state(s.series) for s in streams) == want.state


def test_snapshot_repickles_only_the_series_that_changed(streams: list[SeriesBatch]) -> None:
    scorer = dataclasses.replace(SCORERS["robust-z-scaled"], flow_name="held")
    logic = score_logic("score", scorer, None)
    assert isinstance(logic, _ScoreLogic)
    logic.on_batch([ShardBatch.of([piece(s, 0, 5) for s in streams])])
    logic.snapshot()
    before = dict(logic.states.packed)
    logic.on_batch([ShardBatch.of([piece(streams[0], 5, 9)])])
    logic.snapshot()
    after = logic.states.packed
    assert after["a"] is not before["a"]
    assert after["b"] is before["b"]
    assert after["c"] is before["c"]
    assert sorted(logic.states.live) == ["a"]  # b and c are held as bytes alone
    assert metrics.SERIES.labels(flow="held", held="live")._value.get() == 1
    assert metrics.SERIES.labels(flow="held", held="bytes")._value.get() == 2


def test_one_reading_path_is_taken_where_it_applies() -> None:
    scaled = score_logic("score", SCORERS["robust-z-scaled"], None)
    context = score_logic("score", SCORERS["context"], None)
    assert isinstance(scaled, _ScoreLogic)
    assert isinstance(context, _ScoreLogic)
    assert scaled.fast_singles
    # The context detector reports parts and listens to the spacing: per series.
    assert not context.fast_singles


def test_cool_down_holds_back_alerts(streams: list[SeriesBatch]) -> None:
    scorer = SCORERS["robust-z"]
    got = run(scorer, streams, lambda: repeat(1))
    hot = sum(
        1 for (_, s) in got.columns["scores"] if s >= scorer.policy.threshold
    )  # readings at or above the threshold, alerted or not
    assert 0 < len(got.alerts) < hot


def test_many_series_of_medium_batches_go_in_rounds_and_equal_one_batch() -> None:
    # 60 series in a shard: batches of up to 19 readings are scored in rounds
    # (a third of the series), longer ones alone; both meet the reference.
    scorer = SCORERS["robust-z"]
    streams = [piece(labelled_stream(f"m{i}", 200 + i), 0, 150) for i in range(60)]
    want = run(scorer, streams, lambda: repeat(150))
    assert want.alerts
    assert want.dead
    for size in (12, 19, 25):
        logic = score_logic("score", scorer, None)
        assert isinstance(logic, _ColumnLogic)
        got = run_shard(scorer, streams, lambda size=size: repeat(size), resume_every=3)
        assert_same(got, want)
    # Size 12 is all rounds: a series' state is held as objects only after a reading
    # out of order (a dead letter, written by the per-series functions), until its
    # next round.
    logic = score_logic("score", scorer, None)
    scored, _ = logic.on_batch([ShardBatch.of([piece(s, 0, 12) for s in streams])])
    assert isinstance(logic, _ColumnLogic)
    late = {d.key.decode() for d in scored if isinstance(d, DeadLetter)}
    assert late
    assert {logic.states.names[row] for row in logic.states.live} <= late
    logic.on_batch([ShardBatch.of([piece(s, 12, 37) for s in streams])])
    assert len(logic.states.live) == len(streams)
