"""Checks beyond the shared contract: iforest, gaussian-window, seasonal, robust-z."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from operators.calibrate import calibrate
from operators.detectors import Detector, make_detector
from operators.detectors.gaussian import WindowedGaussian
from operators.detectors.iforest import IsolationForest
from operators.detectors.robust import RobustZ, repeat_runs
from operators.detectors.seasonal import Seasonal
from tests.contract.test_detectors import auc
from tests.contract.test_detectors import run_one_by_one as one_by_one

pytestmark = pytest.mark.timeout(120)

DAY = 1440


def in_random_batches(d: Detector, xs: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    parts, i = [], 0
    while i < len(xs):
        size = int(rng.choice([1, 2, 3, 7, 31, 64, 257, 700]))
        parts.append(d.score_learn_many(xs[i : i + size]))
        i += size
    return np.concatenate(parts)


def noisy_metric(n: int = 20_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The noisy-metric use case: ``sin(0.1 i)`` plus U(0, 5) spikes with probability 0.01."""
    rng = np.random.default_rng(seed)
    xs = np.sin(0.1 * np.arange(n))
    labels = rng.random(n) < 0.01
    xs[labels] += rng.uniform(0.0, 5.0, int(labels.sum()))
    return xs, labels


def tricky_stream(seed: int = 0) -> np.ndarray:
    """Far from 0, with flat runs, repeats and spikes: where running sums and floors go wrong."""
    rng = np.random.default_rng(seed)
    xs = 1e9 + rng.normal(0.0, 0.01, 6000)
    xs[1000:1400] = xs[999]
    xs[3000:3050] = np.round(xs[3000:3050], 1)
    xs[rng.choice(6000, 30, replace=False)] += 1.0
    return xs


@pytest.mark.parametrize("name", ["robust-z", "gaussian-window", "seasonal", "iforest"])
def test_batch_form_is_exact_on_a_long_tricky_stream(name: str) -> None:
    xs = tricky_stream()
    expected = one_by_one(make_detector(name), xs)
    np.testing.assert_array_equal(in_random_batches(make_detector(name), xs, seed=1), expected)
    assert np.all(np.isfinite(expected))


def test_seasonal_batch_form_is_exact_across_many_cycles() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(12 * 96)
    xs = 5.0 * np.sin(2 * np.pi * t / 96) + rng.normal(0.0, 0.5, len(t))

    def make() -> Seasonal:
        return Seasonal(periods=(96, 672), bins=(24, 28), block=16, min_history=32)

    np.testing.assert_array_equal(in_random_batches(make(), xs, seed=3), one_by_one(make(), xs))


def flat_run_stream(scale: float, seed: int) -> np.ndarray:
    """Noise, then 80 copies of the last reading (a stuck sensor), then noise again."""
    rng = np.random.default_rng(seed)
    pre = 20.0 + rng.normal(0.0, 0.5, 600)
    post = 20.0 + rng.normal(0.0, 0.5, 300)
    return scale * np.concatenate((pre, np.full(80, pre[-1]), post))


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_robust_z_after_a_flat_run_ordinary_readings_stay_ordinary(scale: float, seed: int) -> None:
    xs = flat_run_stream(scale, seed)
    scores = RobustZ().score_learn_many(xs)
    before = np.quantile(scores[200:600], 0.99)
    after = np.quantile(scores[680:], 0.99)
    # An absolute floor (the old min_scale=1e-3) made these thousands at scale 1e-6.
    assert after <= 2.0 * before, (before, after)
    d = RobustZ()
    d.score_learn_many(xs[:700])  # 20 readings after the run: the window is still mostly flat
    assert d.score_one(scale * 25.0) > 6.0  # a 10-sigma spike


def test_gaussian_window_after_a_flat_run_longer_than_the_window() -> None:
    rng = np.random.default_rng(4)
    noise = rng.normal(0.0, 1.0, 2000)
    xs = np.concatenate((noise, np.full(300, noise[-1]), rng.normal(0.0, 1.0, 500)))
    scores = WindowedGaussian(window=200).score_learn_many(xs)
    before = np.quantile(scores[500:2000], 0.99)
    after = np.quantile(scores[2300:], 0.99)
    assert after <= 2.0 * before, (before, after)
    d = WindowedGaussian(window=200)
    d.score_learn_many(xs[:2300])
    assert d.score_one(noise[-1] + 10.0) > 6.0


def test_gaussian_window_is_shift_and_scale_free() -> None:
    rng = np.random.default_rng(5)
    xs = rng.normal(0.0, 1.0, 3000)
    base = WindowedGaussian().score_learn_many(xs)
    moved = WindowedGaussian().score_learn_many(1e9 + 1e-3 * xs)
    # Sums relative to a pivot: no cancellation even 12 orders of magnitude from 0.
    np.testing.assert_allclose(moved, base, rtol=1e-3, atol=1e-3)


def test_iforest_on_the_noisy_metric_flags_far_fewer_than_a_tenth() -> None:
    xs, labels = noisy_metric()
    scores = IsolationForest().score_learn_many(xs)
    live = np.arange(len(xs)) >= 1024
    assert auc(scores[live], labels[live]) >= 0.93
    calibrated = calibrate(IsolationForest.calibrator, scores)
    normal = calibrated[live & ~labels]
    # The original batch forest (contamination=0.1) flagged 10 % of points by construction.
    assert np.mean(normal >= 0.99) < 0.02
    assert np.mean(normal >= 0.999) < 0.005
    big = live & labels & (xs > 2.5)  # spikes that leave the sine's range
    assert np.mean(calibrated[big] >= 0.999) > 0.9


def test_iforest_context_catches_values_that_are_wrong_for_the_moment() -> None:
    rng = np.random.default_rng(6)
    i = np.arange(12_000)
    xs = np.sin(0.1 * i) + rng.normal(0.0, 0.05, len(i))
    labels = np.zeros(len(i), dtype=bool)
    where = rng.choice(np.arange(2000, len(i)), 60, replace=False)
    xs[where] = np.sin(0.1 * where + np.pi) + rng.normal(0.0, 0.05, len(where))  # in range
    labels[where] = True
    with_context = IsolationForest().score_learn_many(xs)
    alone = IsolationForest(context=0).score_learn_many(xs)
    live = i >= 2000
    assert auc(with_context[live], labels[live]) > 0.85
    assert auc(alone[live], labels[live]) < 0.7


def test_iforest_scores_do_not_depend_on_units() -> None:
    xs, labels = noisy_metric(n=6000, seed=1)
    base = IsolationForest().score_learn_many(xs)
    moved = IsolationForest().score_learn_many(3e9 + 1e6 * xs)
    close = np.isclose(moved, base, rtol=1e-6, atol=1e-6)
    assert close.mean() > 0.99
    assert abs(auc(moved, labels) - auc(base, labels)) < 0.005


def test_iforest_flags_the_end_of_a_long_flat_run() -> None:
    rng = np.random.default_rng(7)
    xs = np.concatenate((rng.normal(0.0, 1.0, 1500), np.full(3000, 0.25)))
    d = IsolationForest()
    d.score_learn_many(xs)
    assert d.score_one(0.25) < 1.0
    assert d.score_one(0.5) > 3.0


def test_iforest_state_pickles_small_and_bounded() -> None:
    xs, _ = noisy_metric(n=5000)
    d = IsolationForest()
    d.score_learn_many(xs)
    assert len(pickle.dumps(d)) < 200_000


def daily_stream(days: int = 14, seed: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Trend plus a daily cycle plus noise; anomalies: the daily peak level at the daily trough."""
    rng = np.random.default_rng(seed)
    t = np.arange(days * DAY)
    xs = 500.0 + 0.05 * t + 200.0 * np.sin(2 * np.pi * t / DAY) + rng.uniform(-50, 50, len(t))
    labels = np.zeros(len(t), dtype=bool)
    trough = 3 * DAY // 4
    where = np.array(
        [d * DAY + trough + o for d in range(5, days) for o in rng.integers(-60, 60, 2)]
    )
    xs[where] = 500.0 + 0.05 * where + 200.0 + rng.uniform(-50, 50, len(where))
    labels[where] = True
    return xs, labels


def test_seasonal_finds_values_wrong_for_the_time_of_day() -> None:
    xs, labels = daily_stream()
    live = np.arange(len(xs)) >= 5 * DAY
    # Every anomaly lies within the range of the ordinary values.
    assert xs[~labels].min() < xs[labels].min()
    assert xs[labels].max() < xs[~labels].max()
    seasonal = Seasonal().score_learn_many(xs)
    window = WindowedGaussian().score_learn_many(xs)
    for scores, good in ((seasonal, True), (window, False)):
        threshold = np.quantile(scores[live & ~labels], 0.99)  # 1 % false positives
        recall = np.mean(scores[live & labels] > threshold)
        if good:
            assert auc(scores[live], labels[live]) > 0.99
            assert recall > 0.95
        else:
            assert auc(scores[live], labels[live]) < 0.8
            assert recall < 0.2


def test_seasonal_ordinary_days_score_like_noise() -> None:
    xs, labels = daily_stream(days=10, seed=9)
    scores = Seasonal().score_learn_many(xs)
    settled = scores[5 * DAY :][~labels[5 * DAY :]]
    # Uniform noise of half-width 50 has sigma 29: robust z rarely passes 3.
    assert np.quantile(settled, 0.99) < 3.5


def test_seasonal_rejects_bins_that_do_not_fit_the_period() -> None:
    with pytest.raises(ValueError, match="seasonal: expected"):
        Seasonal(periods=(10,), bins=(20,))


@pytest.mark.parametrize("name", ["robust-z", "flatline", "gap"])
def test_batches_of_one_and_two_give_the_numbers_of_one_batch(name: str) -> None:
    rng = np.random.default_rng(5)
    xs = np.round(rng.normal(10.0, 2.0, 400), 1)
    xs[150:170] = 11.0
    xs[300] = 80.0
    whole = make_detector(name).score_learn_many(xs)
    small = make_detector(name)
    cuts = np.cumsum(np.tile([1, 2], 140))
    parts = [small.score_learn_many(p) for p in np.split(xs, cuts[cuts < 400])]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_repeat_runs_in_pieces_of_one_and_two_equal_one_pass() -> None:
    same = np.random.default_rng(9).random(300) < 0.6
    whole = repeat_runs(same, 4)
    pieces, carried = [], 4
    for part in np.split(same, np.cumsum(np.tile([1, 2], 100))[:-1]):
        runs = repeat_runs(part, carried)
        pieces.append(runs)
        carried = int(runs[-1])
    np.testing.assert_array_equal(np.concatenate(pieces), whole)
