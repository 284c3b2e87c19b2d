"""Every registered detector through the same checks (STYLE.md, "Detectors")."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from operators.calibrate import calibrate
from operators.detectors import DETECTORS, Detector, make_detector

NAMES = sorted(DETECTORS)
pytestmark = pytest.mark.timeout(120)


def labelled_stream(name: str, n: int = 3000, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A seeded stream with the anomaly kind the detector is built for, and its labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=bool)
    if name == "gap":
        # Intervals between readings: one second, sometimes many readings missing.
        xs = np.ones(n)
        where = rng.choice(np.arange(100, n), 20, replace=False)
        xs[where] = rng.integers(5, 60, len(where))
    elif name == "flatline":
        xs = np.round(rng.uniform(0.0, 0.11, n), 4)
        for start in rng.choice(np.arange(100, n - 20, 40), 15, replace=False):
            xs[start : start + 8] = xs[start - 1]
            labels[start + 2 : start + 8] = True
        return xs, labels
    else:
        # Values scaled to about [0, 0.11] (21-28 °C on the 21/85 scale), spikes far above.
        xs = rng.uniform(0.0, 0.11, n)
        where = rng.choice(np.arange(100, n), 30, replace=False)
        xs[where] = rng.uniform(0.7, 1.0, len(where))
    labels[where] = True
    return xs, labels


def run_one_by_one(d: Detector, xs: np.ndarray) -> np.ndarray:
    out = []
    for x in xs.tolist():
        out.append(d.score_one(x))
        d.learn_one(x)
    return np.array(out)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that an anomaly outscores a normal point (ties count half)."""
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


@pytest.mark.parametrize("name", NAMES)
def test_scores_before_learning_are_finite(name: str) -> None:
    d = make_detector(name)
    for x in (0.0, 0.5, 1.0, -3.0, 1e6):
        s = d.score_one(x)
        assert np.isfinite(s), (name, x, s)


@pytest.mark.parametrize("name", NAMES)
def test_scores_finite_and_non_negative_on_stream(name: str) -> None:
    xs, _ = labelled_stream(name)
    scores = make_detector(name).score_learn_many(xs)
    assert np.all(np.isfinite(scores))
    assert np.all(scores >= 0)
    cal = calibrate(make_detector(name).calibrator, scores)
    assert np.all((cal >= 0) & (cal <= 1))


@pytest.mark.parametrize("name", NAMES)
def test_batch_form_equals_per_event_form(name: str) -> None:
    xs, _ = labelled_stream(name, n=1500)
    one = run_one_by_one(make_detector(name), xs)
    d = make_detector(name)
    # Uneven batch sizes cross warm-up and window boundaries.
    sizes = [1, 2, 5, 50, 137, 1000, 305]
    parts, i = [], 0
    for size in sizes:
        parts.append(d.score_learn_many(xs[i : i + size]))
        i += size
    assert i == len(xs)
    np.testing.assert_array_equal(np.concatenate(parts), one)


@pytest.mark.parametrize("name", NAMES)
def test_pickle_round_trip_gives_same_next_scores(name: str) -> None:
    xs, _ = labelled_stream(name, n=800)
    d = make_detector(name)
    d.score_learn_many(xs[:500])
    clone = pickle.loads(pickle.dumps(d))
    np.testing.assert_array_equal(clone.score_learn_many(xs[500:]), d.score_learn_many(xs[500:]))


@pytest.mark.parametrize("name", NAMES)
def test_same_construction_same_scores(name: str) -> None:
    xs, _ = labelled_stream(name, n=800)
    np.testing.assert_array_equal(
        make_detector(name).score_learn_many(xs), make_detector(name).score_learn_many(xs)
    )


@pytest.mark.parametrize("name", NAMES)
def test_memory_is_bounded_on_long_stream(name: str) -> None:
    rng = np.random.default_rng(3)
    d = make_detector(name)
    d.score_learn_many(rng.uniform(1.0, 1.1, 5000))
    size_early = len(pickle.dumps(d))
    for _ in range(10):
        d.score_learn_many(rng.uniform(1.0, 1.1, 5000))
    size_late = len(pickle.dumps(d))
    assert size_late <= size_early * 1.1 + 256, (size_early, size_late)


FLOORS = {"hst-original": 0.8}


@pytest.mark.parametrize("name", NAMES)
def test_quality_above_floor_on_labelled_stream(name: str) -> None:
    xs, labels = labelled_stream(name)
    scores = make_detector(name).score_learn_many(xs)
    assert auc(scores, labels) >= FLOORS.get(name, 0.95)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("gap", "flatline")])
def test_scores_settle_after_injected_spike(name: str) -> None:
    rng = np.random.default_rng(11)
    xs = rng.uniform(0.0, 0.11, 2000)
    xs[1000] = 0.9
    scores = make_detector(name).score_learn_many(xs)
    normal_level = np.quantile(scores[500:1000], 0.99)
    assert scores[1000] > normal_level
    assert np.quantile(scores[1300:], 0.99) <= normal_level * 1.5 + 1e-9
