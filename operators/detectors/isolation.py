"""Isolation trees as flat numpy arrays: vectorised building and scoring.

An isolation tree (Liu, Ting and Zhou, 2008) splits a sample of points at a
random threshold of a random feature until each point is alone or the height
limit ``ceil(log2 n)`` is reached; anomalies are isolated near the root. The
path length of a point is the depth of the leaf it reaches plus ``c(size)``,
the average path length of the points left in that leaf, and the anomaly
score is ``2 ** (-mean path length / c(n))``.

Every tree here is a *complete* binary tree of height ``height``: internal
nodes in level order (the children of node ``i`` are ``2i + 1`` and
``2i + 2``; a value goes right when ``x[feature] >= threshold``) and one
value per bottom slot. A leaf above the bottom level is pushed down: its
threshold is ``+inf`` so every value goes left, to the bottom slot that holds
its path length. Scoring is then ``height`` vectorised steps over all trees
and values at once, with no branching.

Three departures from the textbook, all borrowed from robust random cut
forests (Guha et al., 2016), which suit features in the same units (here a
value and the median of the values before it). The feature to cut is drawn
with probability proportional to its range in the node, not uniformly, so a
feature that does not vary much does not dilute the isolation of a point that
is far out in another. A point outside the box of a tree's sample is
separated at once with the probability that a cut drawn over the box grown
to include it falls in the part it added; its path length is that mix of 1
and its path in the tree, so a far outlier is scored as far, not as the
sample's extreme point.
Finally, a leaf whose points are all identical
(a flat stretch of the series) cannot be split, so the textbook gives any
query that reaches it the long path ``depth + c(size)``, and a reading that
breaks a long flat run would look ordinary. Here such a leaf uses the levels
below it to check, feature by feature, that the query equals the points; a
query that differs is isolated by one more cut (path ``depth + 1``).

Path lengths are stored in fixed point (units of ``2 ** -24`` of ``c(n)``),
so summing over trees is exact integer arithmetic whose result does not
depend on how many values are scored at once.

Example:
    >>> rng = np.random.default_rng(0)
    >>> sample = rng.normal(0.0, 1.0, (8, 256, 1))
    >>> forest = build_trees(sample, height=8, rng=rng)
    >>> scores = isolation_scores(forest, np.array([[0.0], [6.0]]))
    >>> bool(scores[0] < 0.5 < 0.7 < scores[1])
    True

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from operators.events import FloatArray, IntArray

FIXED_ONE = 1 << 24
EULER_GAMMA = 0.5772156649015329


def average_path(n: FloatArray) -> FloatArray:
    """``c(n)``: average path length of an unsuccessful search in a BST of ``n`` points.

    Example:
        >>> average_path(np.array([0.0, 1.0, 2.0, 256.0])).round(3).tolist()
        [0.0, 0.0, 1.0, 10.245]

    """
    n = np.asarray(n, dtype=np.float64)
    safe = np.maximum(n, 3.0)
    c = 2.0 * (np.log(safe - 1.0) + EULER_GAMMA) - 2.0 * (safe - 1.0) / safe
    return np.where(n > 2.0, c, np.where(n == 2.0, 1.0, 0.0))


@dataclass(slots=True)
class Trees:
    """A set of complete isolation trees of one height.

    Attributes:
        feature: Feature of each internal node, shape (trees, 2**height - 1).
        threshold: Threshold of each internal node, same shape.
        path: Fixed-point path length of each bottom slot, shape (trees, 2**height).
        low: Smallest sample value of each tree in each feature, (trees, k).
        high: Largest sample value of each tree in each feature, (trees, k).
        unit: Fixed-point path length 1 of each tree, (trees,).

    """

    feature: npt.NDArray[np.int8]
    threshold: FloatArray
    path: npt.NDArray[np.int32]
    low: FloatArray
    high: FloatArray
    unit: FloatArray

    @property
    def height(self) -> int:
        """Levels of internal nodes."""
        return int(self.path.shape[1]).bit_length() - 1

    def replace(self, first: int, fresh: Trees) -> None:
        """Overwrite the trees from ``first`` on with ``fresh`` ones of the same shape."""
        end = first + len(fresh.threshold)
        self.feature[first:end] = fresh.feature
        self.threshold[first:end] = fresh.threshold
        self.path[first:end] = fresh.path
        self.low[first:end] = fresh.low
        self.high[first:end] = fresh.high
        self.unit[first:end] = fresh.unit


def build_trees(sample: FloatArray, height: int, rng: np.random.Generator) -> Trees:
    """Build one isolation tree per row of ``sample`` (trees, points, features).

    Args:
        sample: The points of each tree; every tree has the same number ``n``.
        height: Height of the arrays, at least ``ceil(log2 n)``; trees stop
            splitting at ``ceil(log2 n)``.
        rng: Source of the random features and thresholds.

    Raises:
        ValueError: if ``height`` is below the height limit of ``n`` points.

    """
    m, n, k = sample.shape
    limit = max(math.ceil(math.log2(max(n, 2))), 1)
    if limit > height:
        msg = f"isolation trees: expected height >= {limit} for {n} points, got {height}"
        raise ValueError(msg)
    c = average_path(np.arange(n + 1, dtype=np.float64))
    norm = float(c[n])
    out = Trees(
        feature=np.zeros((m, (1 << height) - 1), dtype=np.int8),
        threshold=np.full((m, (1 << height) - 1), np.inf),
        path=np.zeros((m, 1 << height), dtype=np.int32),
        low=sample.min(axis=1),
        high=sample.max(axis=1),
        unit=np.full(m, FIXED_ONE / norm),
    )
    # The nodes still splitting (their tree and index within the level) and
    # their points, grouped by node. With one feature the points are sorted,
    # so a split keeps each node's points in order without regrouping.
    tree = np.arange(m, dtype=np.int64)
    local = np.zeros(m, dtype=np.int64)
    points = (np.sort(sample, axis=1) if k == 1 else sample).reshape(m * n, k)
    node = np.repeat(np.arange(m, dtype=np.int64), n)
    for d in range(height + 1):
        size = np.bincount(node, minlength=len(tree))
        if d == height:
            _set_leaves(out, tree, local, d, d + c[size], norm)
            break
        starts = np.concatenate(([0], np.cumsum(size)[:-1]))
        lo = np.minimum.reduceat(points, starts, axis=0)
        hi = np.maximum.reduceat(points, starts, axis=0)
        spread = hi > lo
        movable = spread.any(axis=1)
        split = movable & (size > 1) & (d < limit)
        leaf = ~split & (movable | (size <= 1) | (d >= limit))
        flat = ~split & ~leaf
        if leaf.any():
            _set_leaves(out, tree[leaf], local[leaf], d, d + c[size[leaf]], norm)
        if flat.any():
            _check_flat(out, tree[flat], local[flat], d, lo[flat], d + c[size[flat]], norm)
        if not split.any():
            break
        draws = rng.random((2, len(tree)))
        if k == 1:
            dim = np.zeros(len(tree), dtype=np.int64)
        else:
            # A feature drawn with probability proportional to its range in the node.
            reach = np.cumsum(hi - lo, axis=1)
            dim = np.argmax(reach > (draws[0] * reach[:, -1])[:, None], axis=1)
        rows = np.arange(len(tree))
        low, high = lo[rows, dim], hi[rows, dim]
        cut = low + draws[1] * (high - low)
        cut = np.where(cut > low, cut, high)
        slot = (1 << d) - 1 + local
        out.feature[tree[split], slot[split]] = dim[split]
        out.threshold[tree[split], slot[split]] = cut[split]
        # (np.take and np.compress: several times faster than fancy indexing here.)
        if k == 1:
            go_right = points[:, 0] >= np.take(cut, node)
        else:
            at = np.arange(len(node)) * k + np.take(dim, node)
            go_right = np.take(points.ravel(), at) >= np.take(cut, node)
        keep = np.take(split, node)
        child = 2 * (np.cumsum(split) - 1)
        node = np.compress(keep, np.take(child, node) + go_right)
        points = np.compress(keep, points, axis=0)
        if k > 1:
            # Regroup: left children's points before right children's, stably.
            order = np.argsort(node, kind="stable")
            node, points = np.take(node, order), np.take(points, order, axis=0)
        tree = np.repeat(tree[split], 2)
        local = (2 * local[split])[:, None] + np.array([0, 1])
        local = local.ravel()
    return out


def _set_leaves(
    out: Trees, tree: IntArray, local: IntArray, depth: int, value: FloatArray, norm: float
) -> None:
    """Store the path lengths of leaves at ``depth``, pushed down to the bottom slots."""
    height = out.height
    bottom = local << (height - depth)
    out.path[tree, bottom] = np.round(value / norm * FIXED_ONE).astype(np.int32)


def _check_flat(
    out: Trees,
    tree: IntArray,
    local: IntArray,
    depth: int,
    point: FloatArray,
    inside: FloatArray,
    norm: float,
) -> None:
    """Leaves of identical points that send a query differing from them one level on.

    Each feature takes two levels below the leaf: ``x < point`` goes left,
    ``x >= nextafter(point)`` goes right, and both of those branches are
    leaves at ``depth + 1``; a query that passes every check that fits gets
    the leaf's own path ``inside`` (``depth + c(size)``).
    """
    outside = np.full(len(tree), depth + 1.0)
    level = depth
    for j in range(point.shape[1]):
        if level + 2 > out.height:
            break
        below = local  # node checking x >= point[j]
        above = 2 * below + 1  # its right child, checking x < nextafter(point[j])
        out.feature[tree, (1 << level) - 1 + below] = j
        out.threshold[tree, (1 << level) - 1 + below] = point[:, j]
        out.feature[tree, (1 << (level + 1)) - 1 + above] = j
        out.threshold[tree, (1 << (level + 1)) - 1 + above] = np.nextafter(point[:, j], np.inf)
        _set_leaves(out, tree, 2 * below, level + 1, outside, norm)
        _set_leaves(out, tree, 2 * above + 1, level + 2, outside, norm)
        local = 2 * above
        level += 2
    _set_leaves(out, tree, local, level, inside, norm)


def path_sums(trees: Trees, xs: FloatArray) -> IntArray:
    """Sum over the trees of each point's fixed-point path length; ``xs`` is (points, k)."""
    t, internal = trees.threshold.shape
    n, k = xs.shape
    row = (np.arange(t, dtype=np.int64) * internal)[:, None]
    thr = trees.threshold.ravel()
    node = np.zeros((t, n), dtype=np.int64)
    # (np.take: faster than fancy indexing for these gathers.)
    if k == 1:
        values = xs[:, 0]
        for _ in range(trees.height):
            node = 2 * node + 1 + (values >= np.take(thr, node + row))
    else:
        feat = trees.feature.ravel().astype(np.int64)
        flat = xs.T.ravel()
        col = np.arange(n, dtype=np.int64)
        for _ in range(trees.height):
            at = node + row
            value = np.take(flat, np.take(feat, at) * n + col)
            node = 2 * node + 1 + (value >= np.take(thr, at))
    bottom = (np.arange(t, dtype=np.int64) * (internal + 1))[:, None] + (node - internal)
    path = trees.path.ravel()[bottom]
    # Outside a tree's sample box, a cut drawn over the box grown to include
    # the point separates it at once with probability extension / grown span.
    extension = np.zeros((t, n))
    span = np.zeros((t, 1))
    for j in range(k):
        low, high = trees.low[:, j : j + 1], trees.high[:, j : j + 1]
        extension += np.maximum(low - xs[:, j], 0.0) + np.maximum(xs[:, j] - high, 0.0)
        span += high - low
    beyond = extension / np.where(extension > 0.0, span + extension, 1.0)
    outside = beyond > 0.0
    if outside.any():
        mixed = np.round(beyond * trees.unit[:, None] + (1.0 - beyond) * path).astype(np.int64)
        path = np.where(outside, mixed, path)
    return np.asarray(path.sum(axis=0, dtype=np.int64), dtype=np.int64)


def isolation_scores(trees: Trees, xs: FloatArray) -> FloatArray:
    """The isolation-forest anomaly score ``2 ** (-mean path / c(n))`` in (0, 1]."""
    mean = path_sums(trees, xs) / (len(trees.threshold) * FIXED_ONE)
    return np.asarray(np.exp2(-mean), dtype=np.float64)
