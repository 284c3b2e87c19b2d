"""Greedy k-center coreset: distinct, deterministic indices that cover the set, outliers first."""

from __future__ import annotations

import numpy as np
import pytest

from operators.coreset import coreset_indices

pytestmark = pytest.mark.timeout(60)


def blobs(n: int, dim: int = 64, seed: int = 0, latent: int = 4) -> np.ndarray:
    """Clustered points of low intrinsic dimension, like patch features: 20 blobs in a subspace."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(20, latent))
    z = centres[rng.integers(20, size=n)] + rng.normal(size=(n, latent))
    mixing = rng.normal(size=(latent, dim)) / np.sqrt(latent)
    return (z @ mixing + 0.05 * rng.normal(size=(n, dim))).astype(np.float32)


def covering_radius(x: np.ndarray, keep: np.ndarray) -> float:
    """Largest distance from any point to its nearest kept point (exact, in the original space)."""
    kept = x[keep].astype(np.float64)
    xx = x.astype(np.float64)
    d2 = (xx**2).sum(1)[:, None] - 2 * xx @ kept.T + (kept**2).sum(1)[None, :]
    return float(np.sqrt(max(d2.min(axis=1).max(), 0.0)))


def reference_greedy(x: np.ndarray, n_keep: int, first: int) -> list[int]:
    """Textbook farthest-point selection in float64, for comparison."""
    xx = x.astype(np.float64)
    nearest = np.full(len(x), np.inf)
    picked = [first]
    for _ in range(n_keep - 1):
        nearest = np.minimum(nearest, ((xx - xx[picked[-1]]) ** 2).sum(1))
        nearest[picked] = -1.0
        picked.append(int(nearest.argmax()))
    return picked


def test_indices_are_distinct_int64_and_deterministic() -> None:
    x = blobs(3000)
    idx = coreset_indices(x, 300, seed=3)
    assert idx.dtype == np.int64
    assert idx.shape == (300,)
    assert len(np.unique(idx)) == 300
    assert idx.min() >= 0
    assert idx.max() < 3000
    assert np.array_equal(idx, coreset_indices(x, 300, seed=3))
    assert not np.array_equal(idx, coreset_indices(x, 300, seed=4))


def test_n_keep_at_least_n_returns_all_and_zero_returns_none() -> None:
    x = blobs(50)
    assert coreset_indices(x, 50).tolist() == list(range(50))
    assert coreset_indices(x, 500).tolist() == list(range(50))
    assert coreset_indices(x, 0).shape == (0,)


def test_outliers_are_kept() -> None:
    x = blobs(5000, seed=1)
    outliers = [17, 2500, 4999]
    for k, i in enumerate(outliers):
        x[i] += 200.0 * np.eye(x.shape[1], dtype=np.float32)[k]
    idx = coreset_indices(x, 50, seed=2)
    assert set(outliers) <= set(idx[:4].tolist())


def test_covers_better_than_a_random_subset() -> None:
    x = blobs(4000, seed=5)
    idx = coreset_indices(x, 200)
    random_keep = np.random.default_rng(0).choice(len(x), 200, replace=False)
    assert covering_radius(x, idx) < 0.8 * covering_radius(x, random_keep)


def test_without_projection_matches_the_textbook_greedy() -> None:
    x = blobs(800, dim=8, seed=7)
    idx = coreset_indices(x, 60, proj_dim=None)
    assert idx.tolist() == reference_greedy(x, 60, first=int(idx[0]))


def test_duplicates_still_give_distinct_indices() -> None:
    x = np.repeat(np.eye(3, dtype=np.float32), 10, axis=0)  # 3 distinct points, 30 rows
    idx = coreset_indices(x, 12)
    assert len(np.unique(idx)) == 12
    assert {int(i) // 10 for i in idx[:3]} == {0, 1, 2}


@pytest.mark.parametrize(
    ("vectors", "n_keep", "proj_dim", "match"),
    [
        (np.zeros(5), 2, 16, "2-D"),
        (np.zeros((5, 2)), -1, 16, "n_keep"),
        (np.zeros((5, 2)), 2, 0, "proj_dim"),
        (np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 2.0]]), 2, 16, "NaN"),
    ],
)
def test_bad_input_is_named(vectors: np.ndarray, n_keep: int, proj_dim: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        coreset_indices(vectors, n_keep, proj_dim=proj_dim)
