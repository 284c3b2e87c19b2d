"""The contextual tail-surprise detector: period, context, learning choice, refractory period."""

from __future__ import annotations

import pickle
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from operators.detectors.context import (
    _ARRAYS,
    _PACKED,
    PARTS,
    REALERT_MARGIN,
    TOD_MARGIN,
    ContextSurprise,
)

pytestmark = pytest.mark.timeout(60)


def noise(n: int, seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(10.0, scale, n)


def named_state(d: ContextSurprise) -> dict[str, Any]:
    """The state as stores written before the scalars were packed hold it: named one by one."""
    state = d.__getstate__()
    state.update(zip(_PACKED, state.pop("_packed"), strict=True))
    return state


def test_period_comes_from_the_spacing_of_the_first_readings() -> None:
    d = ContextSurprise()
    d.observe_intervals(np.array([300.0, 0.0, 300.0]))  # a zero spacing says nothing
    d.observe_intervals(np.full(5, 300.0))
    assert d.period == 0  # seven intervals so far
    d.observe_intervals(np.array([300.0, 1.0]))  # the eighth fixes it; later ones are ignored
    assert d.period == 288
    too_long = ContextSurprise()
    too_long.observe_intervals(np.ones(8))  # 86400 readings a day: above max_period
    assert too_long.period == 0
    assert ContextSurprise(period=96).period == 96


@pytest.mark.parametrize(
    ("period", "jitter", "groups"),
    [
        # Hourly: the period is kept (a fixed jitter of 20 readings used to discard it).
        (24, 2, [(1, 100), (22, 26), (166, 170)]),
        # Half-hourly: yesterday's readings overlap the recent ones and stay a whole group.
        (48, 3, [(1, 100), (45, 51), (333, 339)]),
        (288, 20, [(1, 100), (268, 308), (1996, 2036)]),
        # A week of one-minute readings is beyond max_history: no weekly context.
        (1440, 101, [(1, 100), (1339, 1541)]),
    ],
)
def test_context_is_recent_yesterday_and_last_week_with_a_jitter_scaled_to_the_period(
    period: int, jitter: int, groups: list[tuple[int, int]]
) -> None:
    d = ContextSurprise(period=period)
    assert (d.period, d.jitter) == (period, jitter)
    assert d._lag_groups() == groups


def daily_wave(days: int, seed: int) -> np.ndarray:
    """Hourly readings of a daily cycle between 5 and 15, with a little noise."""
    hours = np.arange(24 * days)
    jitter = np.random.default_rng(seed).normal(0.0, 0.2, len(hours))
    return 10.0 + 5.0 * np.sin(2 * np.pi * hours / 24) + jitter


def hourly_after(
    xs: np.ndarray, start: int, length: int, **settings: Any
) -> tuple[np.ndarray, ContextSurprise]:
    """Scores of ``xs[start : start + length]`` by an hourly detector taught ``xs[:start]``."""
    d = ContextSurprise(**settings)
    d.observe_intervals(np.full(8, 3600.0))
    d.score_learn_many(xs[:start])
    return d.score_learn_many(xs[start : start + length]), d


def test_a_level_wrong_for_the_hour_fires_the_seasonal_channel_once_it_persists() -> None:
    xs = daily_wave(40, seed=8)
    start = 24 * 30 + 4  # the morning rise of day 30...
    xs[start : start + 6] = xs[start - 12 : start - 6]  # ...shows the night's readings instead
    scores, d = hourly_after(xs, start, 6)
    parts = d.explain()
    # Nothing rare or new overall: the night shows these levels every day.
    assert max(parts["rare"].max(), parts["new"].max()) < 2.0
    assert min(parts["rare for the time of day"].min(), parts["new for the time of day"].min()) > 4
    # Held over the last three readings: the first two readings cannot fire it alone.
    held = np.minimum(parts["rare for the time of day"], parts["new for the time of day"])
    assert parts["seasonal"][2:] == pytest.approx(
        np.minimum.reduce([held[:-2], held[1:-1], held[2:]])
    )
    assert parts["seasonal"][:2].max() < 1.0
    assert scores[2] > 4.0


def test_a_level_wrong_for_the_hour_is_learned_neither_as_a_value_nor_as_a_residual() -> None:
    xs = daily_wave(40, seed=8)
    start = 24 * 30 + 4
    xs[start : start + 6] = xs[start - 12 : start - 6]  # the night's levels in the morning
    d = ContextSurprise()
    d.observe_intervals(np.full(8, 3600.0))
    d.score_learn_many(xs[:start])
    values, resids = d._values.copy(), d._resids.copy()
    d.score_learn_many(xs[start : start + 6])
    parts = d.explain()
    # Ordinary overall, so rarity alone would have learned them; wrong for the hour, so not.
    assert parts["rare"].max() < 2.0 < d.flag_level < parts["rare for the time of day"].min()
    assert np.array_equal(d._values, values)
    assert np.array_equal(d._resids, resids)
    # A day later the hour's usual levels are learned again, values and residuals.
    d.score_learn_many(xs[start + 6 : start + 30])
    assert np.array_equal(d._values[-6:], xs[start + 24 : start + 30])
    assert len(d._resids) == len(resids) + 24


def test_a_weekly_spike_stops_being_news_with_the_weekly_context() -> None:
    xs = daily_wave(7 * 8, seed=9)
    spikes = np.arange(24 * 7 + 12, len(xs), 24 * 7)  # noon, once a week: a weekly job
    xs[spikes] = 40.0
    d = ContextSurprise(period=24)
    assert d.week == 24 * 7
    weekly = d.score_learn_many(xs)
    assert weekly[spikes[0]] > 4.0
    assert weekly[spikes[2:]].max() < 0.1  # seen last week at this time


def test_a_spike_at_the_same_time_every_day_stops_being_news_with_a_period() -> None:
    period = 192  # longer than the recent context, so only "yesterday" remembers a spike
    xs = noise(period * 12, seed=1)
    spikes = np.arange(period // 2, len(xs), period)
    xs[spikes] = 25.0  # a daily job that peaks at the same value
    seasonal = ContextSurprise(period=period).score_learn_many(xs)
    blind = ContextSurprise().score_learn_many(xs)
    assert seasonal[spikes[0]] > 4.0
    # Seen yesterday at this time: no news at all. Without the period it stays
    # unusual every day (only the distance model gets used to it).
    assert seasonal[spikes[1:]].max() < 0.1
    assert blind[spikes[1:]].min() > 2.0


def assert_echoes(
    xs: np.ndarray, spikes: np.ndarray, period: int, first: float, **without: Any
) -> None:
    """The first spike is news; the later ones, echoes of yesterday's, are not, unless
    the detector is built ``without`` the echo as it is (then their median is over 2)."""
    echoes = ContextSurprise(period=period).score_learn_many(xs)
    unechoed = ContextSurprise(period=period, **without).score_learn_many(xs)
    assert echoes[spikes[0]] > first
    assert echoes[spikes[1:]].max() < 0.1
    assert np.median(unechoed[spikes[1:]]) > 2.0


def test_a_daily_spike_a_little_higher_each_day_is_an_echo_of_yesterday() -> None:
    period = 192  # longer than the recent context, so only "yesterday" remembers a spike
    xs = noise(period * 12, seed=1)
    spikes = np.arange(period // 2, len(xs), period)
    xs[spikes] = 25.0 + 3.0 * np.arange(len(spikes))  # each day's peak above the last
    # Yesterday's peak is 3 away, close next to the peak's height of 15 and more; taken
    # literally (echo 0), every peak is a value never seen: far from all the usual steps.
    assert_echoes(xs, spikes, period, 4.0, echo=0.0)
    # Further off yesterday's time than the context's jitter (13 readings), it is no echo.
    late = xs.copy()
    late[spikes[1]], late[spikes[1] + 16] = 10.0, xs[spikes[1]]
    assert ContextSurprise(period=period).score_learn_many(late)[spikes[1] + 16] > 2.0


def test_a_daily_spike_back_a_little_late_is_still_an_echo() -> None:
    # Each day's peak comes 10 readings (an hour and a quarter of a 192-reading day) away
    # from yesterday's: inside yesterday's context (jitter 13), so an echo.
    period = 192
    xs = noise(period * 12, seed=1)
    spikes = np.array([period // 2 + period * day + 10 * (day % 2) for day in range(12)])
    xs[spikes] = 25.0 + 3.0 * np.arange(len(spikes))
    assert_echoes(xs, spikes, period, 4.0, echo=0.0)


def test_a_daily_spike_a_third_higher_each_day_is_an_echo() -> None:
    # Yesterday's peak is 2/7 of the value's height away (more than the old quarter).
    period = 192
    xs = noise(period * 10, seed=3)
    spikes = np.arange(period // 2, len(xs), period)
    xs[spikes] = 10.0 + 15.0 * 1.4 ** np.arange(len(spikes))
    assert_echoes(xs, spikes, period, 3.0, echo=0.25)


def test_an_echo_that_chance_explains_does_not_count() -> None:
    # As before, without the memory (which lowers the rarity of the growing daily spike
    # a little and so leaves a trace, 0.14, of the unchecked one).
    period = 1440
    xs = noise(period * 4, seed=4)
    spikes = np.arange(period // 2, len(xs), period)
    xs[spikes] = 25.0 + 3.0 * np.arange(len(spikes))
    checked = ContextSurprise(period=period, reach=0.0).score_learn_many(xs)
    unchecked = ContextSurprise(period=period, echo_chance=0.0, reach=0.0).score_learn_many(xs)
    assert unchecked[spikes[1:]].max() < 0.1
    assert checked[spikes[1]] > 2.0


@pytest.mark.parametrize(("flagged", "learned_max"), [("learn", 40.0), ("skip", 20.0)])
def test_flagged_values_are_learned_or_skipped(flagged: str, learned_max: float) -> None:
    d = ContextSurprise(flagged=flagged)
    d.score_learn_many(noise(500))
    d.score_learn_many(np.array([40.0]))
    d.score_learn_many(noise(64, seed=2))  # past a refresh
    assert (d._values.max() >= 40.0) == (learned_max == 40.0)


def test_clip_learns_a_flagged_value_at_the_edge_of_the_tail() -> None:
    d = ContextSurprise(flagged="clip")
    d.score_learn_many(noise(512))
    model = d._models[0]
    assert model is not None
    d.score_learn_many(np.array([40.0]))
    assert d._values[-1] == pytest.approx(model.upper)


def test_a_level_shift_becomes_the_new_normal() -> None:
    d = ContextSurprise(max_skip=50)
    d.score_learn_many(noise(1000))
    shifted = d.score_learn_many(noise(1500, seed=3) + 30.0)
    assert shifted[0] > 5.0
    assert shifted[-300:].max() < 3.0


def test_a_second_event_close_behind_the_first_is_damped() -> None:
    xs = noise(1200, seed=4)
    xs[600] = xs[620] = xs[1100] = 25.0
    out = ContextSurprise(flagged="skip").score_learn_many(xs)
    assert out[600] > 4.0
    assert out[620] < 0.2 * out[600]  # under the refractory bar
    # The bar has fallen by then; the spike is less new (two like it were seen) but not damped.
    assert out[1100] > 2.0


def test_a_plateau_of_scores_reports_once() -> None:
    xs = daily_wave(40, seed=8)
    start = 24 * 30 + 4
    xs[start : start + 6] = xs[start - 10 : start - 4]  # the night's levels, as in the test above
    out = {hold: hourly_after(xs, start, 6, hold=hold)[0] for hold in (0, 6)}
    # The held seasonal channel stays near its level for two readings: the falling bar
    # alone lets both fire; the hold reports the second no more.
    assert min(out[0][2:4]) > 4.0
    assert out[6][2] == out[0][2]
    assert out[6][3] < 0.2 * out[0][3]


def test_non_finite_values_score_the_cap_and_are_not_learned() -> None:
    d = ContextSurprise()
    d.score_learn_many(noise(100))
    out = d.score_learn_many(np.array([np.nan, np.inf, 10.0]))
    assert out[:2].tolist() == [10.0, 10.0]
    assert np.isfinite(d._values).all()


def test_batch_form_equals_per_event_form_with_a_daily_and_weekly_period() -> None:
    xs = noise(800, seed=5)  # past a week of 48 readings a day
    xs[::97] += 8.0
    xs[390] = np.nan  # a gap in yesterday's and last week's readings later on
    batch = ContextSurprise(period=48).score_learn_many(xs)
    one = ContextSurprise(period=48)
    per_event = [one.score_one(x) for x in xs[:1]]
    for x in xs:
        s = one.score_one(x)
        one.learn_one(x)
        per_event.append(s)
    assert np.array_equal(batch, np.array(per_event[1:]))
    # Uneven batches carry the held seasonal channel and the context across their edges.
    chunked = ContextSurprise(period=48)
    edges = [0, 1, 3, 50, 51, 340, 341, 345, 600, 800]
    parts = [chunked.score_learn_many(xs[a:b]) for a, b in pairwise(edges)]
    assert np.array_equal(batch, np.concatenate(parts))


def longest_context_period() -> int:
    """The daily period (of any sampling interval) whose context reaches furthest back."""
    return max(range(1, 1441), key=lambda p: ContextSurprise(period=p)._lag_groups()[-1][1])


@pytest.mark.parametrize("period", [1440, 288, longest_context_period()])
def test_state_stays_under_32_kb_with_the_longest_period(period: int) -> None:
    d = ContextSurprise(period=period)
    # Just before a refresh, when the learned windows are at their longest.
    d.score_learn_many(noise(160 * d.refresh - 1, seed=6))
    assert len(pickle.dumps(d)) <= 32 * 1024
    restored = pickle.loads(pickle.dumps(d))
    tail = noise(100, seed=7)
    assert np.array_equal(d.score_learn_many(tail), restored.score_learn_many(tail))


def test_bad_settings_say_what_was_expected() -> None:
    with pytest.raises(ValueError, match="echo_chance"):
        ContextSurprise(echo_chance=-0.1)
    with pytest.raises(ValueError, match="flagged"):
        ContextSurprise(flagged="ignore")
    with pytest.raises(ValueError, match="min_history"):
        ContextSurprise(window=10, min_history=30)


def test_explain_gives_the_parts_of_the_last_batch_only() -> None:
    d = ContextSurprise()
    d.score_learn_many(noise(2000))
    scores = d.score_learn_many(np.array([10.0, 30.0]))
    parts = d.explain()
    assert tuple(parts) == PARTS
    assert parts["rare"][1] > 5.0  # far out...
    assert parts["new"][1] > 5.0  # ...and unlike anything seen
    assert parts["rare"][0] < 1.0
    # The score is the larger of the two channels: rare-and-new, and seasonal.
    channel = np.minimum(parts["rare"], parts["new"])
    assert scores[1] == pytest.approx(max(channel[1], parts["seasonal"][1]))
    assert pickle.loads(pickle.dumps(d)).explain() == {}  # not part of the state


def test_a_state_pickled_before_hold_and_echo_resumes_without_them() -> None:
    rng = np.random.default_rng(5)
    day = np.sin(np.arange(288) / 288 * 2 * np.pi)
    xs = np.concatenate([day + rng.normal(0, 0.05, 288) for _ in range(12)])
    old = ContextSurprise(period=288, hold=0, echo=0.0)
    old.score_learn_many(xs[:2000])
    state = named_state(old)
    for name in ("hold", "_totals", "echo", "echo_frac", "echo_jitter"):
        del state[name]  # as a store written before these settings
    resumed = ContextSurprise.__new__(ContextSurprise)
    resumed.__setstate__(pickle.loads(pickle.dumps(state)))
    np.testing.assert_array_equal(
        resumed.score_learn_many(xs[2000:]), old.score_learn_many(xs[2000:])
    )


def test_a_spike_the_series_keeps_repeating_needs_more_each_time() -> None:
    xs = noise(6000, seed=3)
    spikes = np.arange(700, 6000, 211)  # same height, at no fixed time of day
    xs[spikes] += 8.0
    plain = ContextSurprise(period=288, recal_horizon=0).score_learn_many(xs)
    recal = ContextSurprise(period=288).score_learn_many(xs)
    # The first spike is the highest score so far: not lowered.
    assert recal[spikes[0]] == plain[spikes[0]]
    # Once the series has reached the level more often than its odds, it is lowered.
    assert np.all(recal[spikes] <= plain[spikes])
    assert float((plain[spikes] - recal[spikes]).max()) > 0.3


def test_no_recalibration_on_a_series_that_keeps_to_its_odds() -> None:
    xs = noise(8000, seed=4)
    # Undamped: a tiny shift of a noise-level score may cross a refractory margin.
    plain = ContextSurprise(period=288, recal_horizon=0, damping=1.0).score_learn_many(xs)
    recal = ContextSurprise(period=288, damping=1.0).score_learn_many(xs)
    # Only the lowest scores move, by less than a level's width; the high ones stay.
    assert float(np.abs(plain - recal).max()) < 0.1
    high = plain >= 1.5
    assert np.array_equal(plain[high], recal[high])


def test_state_pickled_before_the_recalibration_and_the_clip_resumes_without_them() -> None:
    xs = noise(3000, seed=5)
    d = ContextSurprise(period=288, recal_horizon=0, clip_share=0.0)
    d.score_learn_many(xs[:1500])
    state = named_state(d)
    for key in ("recal_horizon", "recal_prior", "_tally", "_pending", "clip_share", "_flags"):
        del state[key]
    old = ContextSurprise.__new__(ContextSurprise)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert np.array_equal(old.score_learn_many(xs[1500:]), d.score_learn_many(xs[1500:]))


def test_a_few_huge_spikes_do_not_hide_the_next_anomaly() -> None:
    xs = noise(3000, seed=0)
    xs[[1200, 1400]] += 60.0
    xs[1800] += 9.0
    masked = ContextSurprise(clip_share=0.0).score_learn_many(xs)
    scores = ContextSurprise().score_learn_many(xs)
    # Learned as it is, the first spike's distance makes the second look not new,
    # and a later, smaller anomaly too; learned clipped, neither is hidden.
    assert masked[1400] < 1.0
    assert masked[1800] < 2.5
    assert scores[1400] > 9.0
    assert scores[1800] > 4.5
    assert scores[1200] == masked[1200]


def test_spikes_that_keep_coming_become_the_series_habit_despite_the_clip() -> None:
    # Flagged readings are common here (one in 40): the series' ordinary spikes, whose
    # distances are learned as they are once their share passes clip_share.
    xs = noise(6000, seed=1)
    spikes = np.arange(500, 6000, 40)
    xs[spikes] += 12.0
    d = ContextSurprise()
    scores = d.score_learn_many(xs)
    assert d._flags[0] > d.clip_share
    assert scores[spikes[0]] > 5.0
    late = spikes[spikes >= 4000]
    assert int((scores[late] > 3.0).sum()) <= len(late) // 10


def test_a_warm_up_score_raises_no_refractory_bar() -> None:
    xs = noise(1500, seed=0)
    xs[470] += 60.0  # scored while the value model holds under half a window
    xs[560] += 8.0  # the first event after the warm-up
    old = ContextSurprise(warmup=0.0).score_learn_many(xs)
    scores = ContextSurprise().score_learn_many(xs)
    assert scores[470] == old[470]
    assert old[560] < 1.0  # damped under the warm-up spike's bar
    assert scores[560] > 4.0


def test_warm_up_scores_count_in_the_recalibration_at_level_zero() -> None:
    d = ContextSurprise()
    xs = noise(400, seed=2)
    xs[200] += 30.0
    d.score_learn_many(xs)
    assert d._warming_up()
    assert len(d._pending) > 0
    assert int(d._pending.max()) == 0  # refreshed ones are in the tally's level 0 only
    assert float(d._tally[1:].max(initial=0.0)) == 0.0


def test_rare_counts_for_at_most_a_digit_above_rare_for_the_hour() -> None:
    d = ContextSurprise(period=48)
    day = 10.0 + 5.0 * np.sin(np.arange(48) / 48 * 2 * np.pi)
    rng = np.random.default_rng(3)
    d.score_learn_many(np.concatenate([day + rng.normal(0, 0.3, 48) for _ in range(30)]))
    d.score_learn_many(day + rng.normal(0, 0.3, 48))
    parts = d.explain()
    assert np.all(parts["rare"] <= parts["rare for the time of day"] + TOD_MARGIN + 1e-12)


def test_a_state_with_named_scalars_resumes_as_a_packed_one() -> None:
    d = ContextSurprise(period=48)
    d.score_learn_many(noise(700, seed=8))
    resumed = ContextSurprise.__new__(ContextSurprise)
    resumed.__setstate__(pickle.loads(pickle.dumps(named_state(d))))
    packed = pickle.loads(pickle.dumps(d))
    assert resumed.__dict__.keys() == d.__dict__.keys()
    tail = noise(300, seed=9)
    assert np.array_equal(resumed.score_learn_many(tail), packed.score_learn_many(tail))


def test_a_state_pickled_before_echo_chance_resumes_without_the_check() -> None:
    d = ContextSurprise(period=192, echo_chance=0.0, reach=0.0, reach_blocks=0, bursts=0)
    d.score_learn_many(noise(600))
    state = d.__getstate__()
    # As a store written before echo_chance: its settings and the later ones absent.
    state["_packed"] = state["_packed"][: _PACKED.index("echo_chance")]
    old = ContextSurprise.__new__(ContextSurprise)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.echo_chance == 0.0
    tail = noise(300, seed=5)
    assert np.array_equal(old.score_learn_many(tail), d.score_learn_many(tail))


def wide_then_narrow() -> np.ndarray:
    # A wide stretch, learned as normal, then a narrow one longer than the window.
    return np.concatenate((noise(600, seed=1, scale=3.0), noise(1600, seed=2)))


def test_a_level_learned_before_the_window_is_less_rare() -> None:
    xs = wide_then_narrow()
    probe = np.array([17.0])
    rarity = {}
    for reach in (0.0, 0.7):
        d = ContextSurprise(reach=reach)
        d.score_learn_many(xs)
        d.score_learn_many(probe)
        rarity[reach] = d.explain()["rare"][0]
    # The window (last 1000 readings) never reached 17: far out in its tail...
    assert rarity[0.0] > 4.0
    # ... but a few of the remembered stretches did.
    assert rarity[0.7] < rarity[0.0] - 0.2


def test_the_memory_keeps_reach_blocks_stretches_of_learned_readings_only() -> None:
    d = ContextSurprise(reach_blocks=8)
    d.score_learn_many(noise(3000))
    assert len(d._reach) == 8 * 8  # float32 (highest, lowest) pairs
    d.score_learn_many(np.array([60.0]))  # flagged: not learned, not remembered
    d.score_learn_many(noise(300, seed=3))  # past two refreshes
    pairs = np.frombuffer(d._reach, dtype=np.float32).reshape(-1, 2)
    assert pairs[:, 0].max() < 30.0


def test_no_reach_no_memory_effect() -> None:
    xs = wide_then_narrow()
    xs[[1800, 2100]] = 17.5
    a = ContextSurprise(reach=0.0).score_learn_many(xs)
    b = ContextSurprise(reach=0.0, reach_blocks=0).score_learn_many(xs)
    c = ContextSurprise(reach=0.7).score_learn_many(xs)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("bad", [{"reach": -0.1}, {"reach_blocks": -1}])
def test_reach_is_validated(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="reach"):
        ContextSurprise(**bad)  # type: ignore[arg-type]


def test_a_state_pickled_before_reach_resumes_without_it() -> None:
    d = ContextSurprise(period=192, reach=0.0, reach_blocks=0, bursts=0)
    d.score_learn_many(noise(1200))
    state = d.__getstate__()
    state["_packed"] = state["_packed"][: _PACKED.index("reach")]  # as before the memory
    old = ContextSurprise.__new__(ContextSurprise)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.reach == 0.0
    assert old.reach_blocks == 0
    assert old._reach == b""
    tail = noise(600, seed=5)
    assert np.array_equal(old.score_learn_many(tail), d.score_learn_many(tail))


def spike_then_a_little_more(second: float) -> np.ndarray:
    xs = noise(1200, seed=0)
    xs[600], xs[601] = 15.0, second
    return xs


def test_a_point_anomaly_a_little_higher_on_the_next_reading_is_the_same_event() -> None:
    xs = spike_then_a_little_more(18.5)
    undamped = ContextSurprise(damping=1.0).score_learn_many(xs)
    # The second reading is rarer, by more than a tenth of a digit but less than the margin.
    assert undamped[600] > 4.0
    assert undamped[600] + 0.1 < undamped[601] < undamped[600] + REALERT_MARGIN
    out = ContextSurprise().score_learn_many(xs)
    assert out[600] == undamped[600]
    assert out[601] == pytest.approx(0.1 * undamped[601])  # damped: already reported


def test_a_point_anomaly_well_above_the_reading_before_is_reported_again() -> None:
    xs = spike_then_a_little_more(20.0)
    undamped = ContextSurprise(damping=1.0).score_learn_many(xs)
    assert undamped[601] > undamped[600] + REALERT_MARGIN
    out = ContextSurprise().score_learn_many(xs)
    assert out[600:602].tolist() == undamped[600:602].tolist()


def test_a_seasonal_climb_is_reported_at_each_step_of_more_than_a_tenth_of_a_digit() -> None:
    xs = daily_wave(40, seed=8)
    start = 24 * 30 + 4
    xs[start : start + 10] -= np.arange(1, 11)  # a drift wrong for the hour, a unit an hour
    undamped = hourly_after(xs, start, 10, damping=1.0)[0]
    scores, d = hourly_after(xs, start, 10, damping=0.1)
    parts = d.explain()
    # The held seasonal channel drives the climb (not the point channel) ...
    assert (parts["seasonal"][6:] > np.minimum(parts["rare"], parts["new"])[6:]).all()
    # ... climbs by a quarter of a digit, creeps up by less than a tenth, then climbs on.
    assert 0.1 < undamped[7] - undamped[6] < REALERT_MARGIN
    assert 0.0 < undamped[8] - undamped[7] < 0.1
    assert 0.1 < undamped[9] - undamped[8] < REALERT_MARGIN
    # No margin holds a seasonal onset back; the creep is the same level again.
    assert scores[6:8].tolist() == undamped[6:8].tolist()
    assert scores[8] == pytest.approx(0.1 * undamped[8])
    assert scores[9] == undamped[9]


def test_the_reported_reading_carries_across_batches_and_pickles() -> None:
    xs = spike_then_a_little_more(18.5)
    batch = ContextSurprise().score_learn_many(xs)
    first = ContextSurprise()
    head = first.score_learn_many(xs[:601])  # the batch ends on the first spike
    restored = pickle.loads(pickle.dumps(first))
    assert np.array_equal(np.concatenate((head, restored.score_learn_many(xs[601:]))), batch)
    one = ContextSurprise()
    per_event = []
    for x in xs[:640]:
        per_event.append(one.score_one(x))
        one.learn_one(x)
    assert np.array_equal(np.array(per_event), batch[:640])


def test_a_state_pickled_before_the_re_alert_margin_resumes_with_nothing_reported() -> None:
    d = ContextSurprise()
    d.score_learn_many(spike_then_a_little_more(18.5)[:601])
    assert d._reported
    state = d.__getstate__()
    state["_packed"] = state["_packed"][: _PACKED.index("_reported")]  # as before the margin
    old = ContextSurprise.__new__(ContextSurprise)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old._reported is False


def spikes_twice_a_hundred(n: int = 4032) -> np.ndarray:
    """A flat series with a spike to the same level at readings 0 and 6 of every hundred."""
    xs = np.zeros(n)
    xs[(np.arange(n) % 100 == 0) | (np.arange(n) % 100 == 6)] = 20.0
    return xs


def test_spikes_to_a_common_level_coming_closer_together_are_news() -> None:
    xs = spikes_twice_a_hundred()
    extra = [2005, 2010, 2015]  # four spikes within 16 readings where two in 100 are usual
    xs[extra] = 20.0
    d = ContextSurprise(period=288)
    scores = d.score_learn_many(xs)
    # Every spike is a level the series shows all the time: neither rare nor new alone.
    assert scores[1500:2000].max() < 1.0
    assert scores[extra].max() > 2.5
    same = ContextSurprise(period=288, bursts=0).score_learn_many(xs)
    assert same[extra].max() < 1.0


def test_spikes_at_their_usual_pace_score_nothing() -> None:
    d = ContextSurprise(period=288)
    d.score_learn_many(spikes_twice_a_hundred())
    assert d.explain()["burst"].max() == 0.0


def test_a_run_of_rare_readings_is_one_start() -> None:
    xs = spikes_twice_a_hundred()
    xs[2030:2070] = 20.0  # a plateau at the spikes' level: one run, not 40 spikes
    d = ContextSurprise(period=288)
    d.score_learn_many(xs[:2030])
    d.score_learn_many(xs[2030:])
    # Its first reading is a start like any spike; the 39 after it add nothing.
    assert d.explain()["burst"][1:].max() == 0.0


def test_a_series_that_bursts_at_every_density_gets_used_to_it() -> None:
    rng = np.random.default_rng(3)
    xs = rng.normal(10.0, 1.0, 12000)
    # Spikes in clusters of random size and spread all along.
    for start in rng.choice(len(xs) - 40, 120, replace=False):
        xs[start + rng.choice(40, rng.integers(1, 6), replace=False)] += rng.uniform(5.0, 9.0)
    d = ContextSurprise(period=288)
    d.score_learn_many(xs[:6000])
    d.score_learn_many(xs[6000:])
    assert d.explain()["burst"].max() < 2.0


def test_batch_form_equals_per_event_form_through_a_burst() -> None:
    xs = spikes_twice_a_hundred(2400)
    xs[[2005, 2010, 2015]] = 20.0
    batch = ContextSurprise(period=288).score_learn_many(xs)
    d = ContextSurprise(period=288)
    one_by_one = np.array([d.score_learn_many(np.array([x]))[0] for x in xs])
    assert batch[2015] > 2.0
    assert np.array_equal(batch, one_by_one)
    # ... and resumed from a pickle taken inside the burst.
    e = ContextSurprise(period=288)
    e.score_learn_many(xs[:2008])
    resumed = pickle.loads(pickle.dumps(e))
    assert np.array_equal(resumed.score_learn_many(xs[2008:]), batch[2008:])


def test_a_state_pickled_before_the_burst_channel_resumes_without_it() -> None:
    xs = spikes_twice_a_hundred()
    xs[[2005, 2010, 2015]] = 20.0
    d = ContextSurprise(period=288)
    d.score_learn_many(xs[:1500])
    state = d.__getstate__()
    state["_packed"] = state["_packed"][: _PACKED.index("bursts")]
    old = ContextSurprise.__new__(ContextSurprise)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.bursts == 0
    assert old.score_learn_many(xs[1500:])[[505, 510, 515]].max() < 1.0


def test_bursts_is_validated() -> None:
    with pytest.raises(ValueError, match="bursts"):
        ContextSurprise(bursts=-1)


def test_rare_readings_that_keep_to_the_daily_peak_make_no_burst() -> None:
    # Five-minute readings of a clean daily cycle: its rare readings are the noise at the
    # peaks, so the first few come close together by nature, not by news.
    t = np.arange(4032)
    xs = 50.0 + 30.0 * np.sin(2 * np.pi * t / 288) + np.random.default_rng(0).normal(0, 1, 4032)
    d = ContextSurprise()
    d.observe_intervals(np.full(8, 300.0))
    scores = d.score_learn_many(xs)
    assert d.explain()["burst"].max() == 0.0
    assert scores[605:].max() < 2.468  # under the tuned NAB threshold
    # The rare runs at a peak from reading 1074 on follow only a few counted starts.
    early = ContextSurprise()
    early.observe_intervals(np.full(8, 300.0))
    early.score_learn_many(xs[:1074])
    assert sum(early._burst_starts) < 2 * early.bursts


def test_a_state_with_arrays_pickled_as_arrays_resumes_as_one_with_bytes() -> None:
    d = ContextSurprise(period=48)
    d.score_learn_many(noise(900, seed=2))
    state = d.__getstate__()
    assert isinstance(state["_values"], bytes)  # the arrays go as their bytes
    as_arrays = ContextSurprise.__new__(ContextSurprise)
    restored = ContextSurprise.__getstate__(d)
    for name, dtype in _ARRAYS.items():  # as stores written before that hold them
        restored[name] = np.frombuffer(restored[name], dtype=dtype).copy()
    as_arrays.__setstate__(pickle.loads(pickle.dumps(restored)))
    assert np.array_equal(as_arrays._values, d._values)
    tail = noise(300, seed=3)
    expected = pickle.loads(pickle.dumps(d)).score_learn_many(tail)
    assert np.array_equal(as_arrays.score_learn_many(tail), expected)
