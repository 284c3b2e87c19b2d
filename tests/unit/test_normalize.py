from __future__ import annotations

import pickle

import numpy as np
import pytest

from operators.normalize import (
    NORMALIZERS,
    FixedMinMax,
    OnlineMinMax,
    RobustScaler,
    make_normalizer,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("name", sorted(NORMALIZERS))
def test_batch_equals_one_by_one_and_pickles(name: str) -> None:
    xs = np.random.default_rng(1).normal(24, 2, 900)
    a, b = make_normalizer(name), make_normalizer(name)
    one = np.array([a.transform_one(float(x)) for x in xs[:600]])
    parts = [b.transform_many(xs[i : i + s]) for i, s in ((0, 3), (3, 250), (253, 347))]
    np.testing.assert_allclose(np.concatenate(parts), one, rtol=0, atol=1e-12)
    clone = pickle.loads(pickle.dumps(b))
    np.testing.assert_array_equal(clone.transform_many(xs[600:]), b.transform_many(xs[600:]))


def test_fixed_matches_the_original_scaling() -> None:
    assert FixedMinMax().transform_one(85.0) == 1.0
    assert FixedMinMax().transform_one(21.0) == 0.0
    assert FixedMinMax().transform_one(149.0) == 2.0  # not clipped


def test_online_minmax_tracks_running_bounds() -> None:
    n = OnlineMinMax()
    assert n.transform_many(np.array([5.0, 5.0, 7.0, 6.0])).tolist() == [0.5, 0.5, 1.0, 0.5]


def test_robust_scaler_is_shift_and_scale_free() -> None:
    xs = np.random.default_rng(2).normal(0, 1, 600)
    a = RobustScaler(window=64).transform_many(xs)
    b = RobustScaler(window=64).transform_many(100 + 7 * xs)
    np.testing.assert_allclose(a[2:], b[2:], rtol=1e-9, atol=1e-9)


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="hi > lo"):
        FixedMinMax(5, 5)
    with pytest.raises(ValueError, match="expected one of"):
        make_normalizer("zscore")
