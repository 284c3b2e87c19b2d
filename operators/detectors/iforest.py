"""Streaming isolation forest over a sliding window, rebuilt tree by tree.

The original noisy-metric pipeline refit a batch Isolation Forest with
``contamination=0.1``, so a tenth of all points were flagged whatever the
data. Here the forest is online: its trees are built from random samples of
a sliding window of recent points, and every ``rebuild_every`` values the oldest
``n_trees * rebuild_every / window`` trees are rebuilt from the current
window, so the whole forest follows the series once per window at a cost
spread evenly over it.

A point is a value together with its context, the median of the ``context``
values before it, so a value is judged against where the series just was
(a jump, or a value wrong for the current stretch, stands out even inside
the overall range). Plain shingles (the vector of the last few values) would
also do that, but a spike then sits in the next few shingles too and makes
the readings after it look anomalous; the median of the context ignores a
single spike. ``context=0`` scores the value alone.

Why rotating isolation trees rather than a robust random cut forest (RRCF)
with insert/delete: RRCF changes every tree at every value, which costs
``O(trees * depth)`` interpreted steps per value and cannot be vectorised.
Here the trees only change at known values, so the batch form scores a whole
stretch between two rebuilds at once (``O(height)`` numpy steps for all trees
and values) and gives exactly the per-value numbers. The RRCF ideas that
matter here are kept (see :mod:`operators.detectors.isolation`): the feature
to cut is drawn in proportion to its range, and a value beyond a tree's
sample range is scored by how far beyond it is.

The isolation score ``2 ** (-E[h] / c(n))`` is not comparable across series
(about 0.5 for ordinary values, but how high an ordinary extreme goes depends
on the data). The detector therefore reports the *surprise* ``-log10 p`` of
the isolation score among its own recent isolation scores: empirical below
their ``1 - tail`` quantile, above it an exponential tail fitted to the
excesses (peaks over threshold) but never less surprising than the ranks
show, so that a calibrated 0.999 means "as isolated as one in a thousand
recent values", and a value more isolated than every recent one scores at
least ``log10(window + 1)``. Because the isolation score saturates
for far outliers, so does the surprise: a gross spike typically scores 3
to 6 (calibrated 0.999 to 0.999999), not the astronomical values of a
Gaussian z-score. Score range: [0, 47) (at most ``log10(window + 1) + 1 /
(0.01 ln 10)``); 0 during warm-up (the first ``2 * min_history`` values).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d = IsolationForest()
    >>> ordinary = d.score_learn_many(np.sin(0.1 * np.arange(3000)) + rng.normal(0, 0.1, 3000))
    >>> bool(np.mean(ordinary[1000:] > 3) < 0.005)  # calibrated 0.999
    True
    >>> bool(d.score_one(5.0) > 6)
    True

"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from operators.detectors.base import RefreshingDetector
from operators.detectors.isolation import Trees, build_trees, isolation_scores
from operators.events import FloatArray

LN10 = math.log(10.0)


class IsolationForest(RefreshingDetector):
    """Isolation forest on a sliding window, scored as a calibrated surprise.

    Args:
        n_trees: Number of trees.
        sample_size: Points sampled from the window for each tree.
        window: Recent points the trees are sampled from, and recent
            isolation scores the surprise is calibrated against.
        context: Values before each one whose median is its context (0: none).
        rebuild_every: Values between rebuilds of a group of trees; a multiple
            of ``window / n_trees`` that divides ``window``.
        tail: Share of the recent isolation scores modelled as the tail.
        min_history: Values before the first forest; the forest is rebuilt
            whole at ``min_history`` and each doubling of it below ``window``.
        seed: Seed of the random samples, features and thresholds.

    Raises:
        ValueError: for inconsistent sizes.

    """

    name = "iforest"
    score_range = "[0, 47): -log10 tail probability of the isolation score among recent ones"
    calibrator = "surprise"
    beta_min = 0.01  # isolation scores differing by less than this are not told apart

    def __init__(
        self,
        n_trees: int = 32,
        sample_size: int = 256,
        window: int = 1024,
        context: int = 3,
        rebuild_every: int = 512,
        tail: float = 0.1,
        min_history: int = 32,
        seed: int = 42,
    ) -> None:
        ok = (
            0 <= context < min_history < window
            and min_history >= 2
            and 2 <= sample_size <= window
            and rebuild_every >= 1
            and window % rebuild_every == 0
            and (n_trees * rebuild_every) % window == 0
            and 0.0 < tail < 1.0
        )
        if not ok:
            msg = (
                "iforest: expected 0 <= context < min_history < window, 2 <= min_history, "
                "2 <= sample_size <= window, rebuild_every dividing window with "
                "n_trees * rebuild_every a multiple of window, and 0 < tail < 1, got "
                f"n_trees={n_trees}, sample_size={sample_size}, window={window}, "
                f"context={context}, rebuild_every={rebuild_every}, tail={tail}, "
                f"min_history={min_history}"
            )
            raise ValueError(msg)
        self.n_trees = n_trees
        self.sample_size = sample_size
        self.window = window
        self.context = context
        self.rebuild_every = rebuild_every
        self.group = n_trees * rebuild_every // window
        self.tail = tail
        self.min_history = min_history
        self.height = max(math.ceil(math.log2(sample_size)), 1)
        self.rng = np.random.default_rng(seed)
        self.count = 0
        self.values = np.zeros(window + context, dtype=np.float64)
        self.trees: Trees | None = None
        self.next_tree = 0
        self.recent = np.zeros(window, dtype=np.float64)
        self.recent_count = 0
        # Frozen calibration between rebuilds: sorted recent isolation scores,
        # the surprise of each rank, and the tail threshold, its surprise and scale.
        self.ref = np.empty(0, dtype=np.float64)
        self.rank_surprise = np.empty(0, dtype=np.float64)
        self.u = 1.0
        self.u_surprise = 0.0
        self.beta = self.beta_min

    def _next_refresh(self) -> int:
        if self.count >= self.window:
            return (self.count // self.rebuild_every + 1) * self.rebuild_every
        due = self.min_history
        while due <= self.count:
            due *= 2
        return min(due, self.window)

    def _chronological(self, n: int) -> FloatArray:
        """The last ``n`` learned values, oldest first."""
        size = len(self.values)
        end = self.count % size
        idx = (end - n + np.arange(n)) % size
        return self.values[idx]

    def _features(self, joined: FloatArray) -> FloatArray:
        """Points of the values of ``joined`` after its first ``context`` ones."""
        c = self.context
        if c == 0:
            return joined[:, None]
        windows = sliding_window_view(joined[:-1], c)
        if c % 2:
            before = np.partition(windows, c // 2, axis=1)[:, c // 2]
        else:
            mid = np.partition(windows, (c // 2 - 1, c // 2), axis=1)
            before = (mid[:, c // 2 - 1] + mid[:, c // 2]) / 2.0
        return np.stack((joined[c:], before), axis=1)

    def _points(self, xs: FloatArray) -> FloatArray:
        """Points of ``xs``, the next values; the first value pads a short context."""
        have = min(self.count, self.context)
        pad = np.full(self.context - have, self.values[0] if self.count else xs[0])
        return self._features(np.concatenate((pad, self._chronological(have), xs)))

    def _isolation(self, xs: FloatArray) -> FloatArray:
        if self.trees is None:
            return np.zeros(len(xs), dtype=np.float64)
        return isolation_scores(self.trees, self._points(xs))

    def _surprise(self, iso: FloatArray) -> FloatArray:
        n = len(self.ref)
        if n == 0:
            return np.zeros(len(iso), dtype=np.float64)
        empirical = self.rank_surprise[n - np.searchsorted(self.ref, iso, "left")]
        # Above the threshold the fitted tail extrapolates, but never below what
        # the ranks already show (more isolated than all N recent: p <= 1 / (N + 1)).
        beyond = np.maximum(self.u_surprise + (iso - self.u) / (self.beta * LN10), empirical)
        return np.asarray(np.where(iso > self.u, beyond, empirical), dtype=np.float64)

    def _rebuild(self) -> None:
        points = min(self.count - self.context, self.window)
        features = self._features(self._chronological(points + self.context))
        n = min(self.sample_size, points)
        if self.trees is None or self.count < self.window:
            first, m = 0, self.n_trees
        else:
            first, m = self.next_tree, self.group
            self.next_tree = (first + m) % self.n_trees
        keys = self.rng.random((m, points))
        picks = np.argpartition(keys, n - 1, axis=1)[:, :n] if n < points else keys.argsort(axis=1)
        fresh = build_trees(features[picks], self.height, self.rng)
        if self.trees is None or m == self.n_trees:
            self.trees = fresh
        else:
            self.trees.replace(first, fresh)

    def _recalibrate(self) -> None:
        n = min(self.recent_count, self.window)
        if n < self.min_history:
            return
        ref = np.sort(self.recent[:n])
        self.ref = ref
        self.rank_surprise = -np.log10((np.arange(n + 1) + 1.0) / (n + 1.0))
        self.u = float(ref[int((1.0 - self.tail) * (n - 1))])
        self.u_surprise = float(self.rank_surprise[n - np.searchsorted(ref, self.u, "left")])
        excess = ref[ref > self.u] - self.u
        typical = float(np.median(excess)) / math.log(2.0) if len(excess) else 0.0
        self.beta = max(typical, self.beta_min)

    def _learn(self, xs: FloatArray, iso: FloatArray) -> None:
        """Learn a stretch with no refresh before its last value."""
        size = len(self.values)
        self.values[(self.count + np.arange(len(xs))) % size] = xs
        if self.trees is not None:
            self.recent[(self.recent_count + np.arange(len(iso))) % self.window] = iso
            self.recent_count += len(iso)
        self.count += len(xs)

    def _refresh(self) -> None:
        self._rebuild()
        self._recalibrate()

    def score_one(self, x: float) -> float:
        """Surprise of the isolation score of ``x`` (with the values before it)."""
        xs = np.array([x], dtype=np.float64)
        return float(self._surprise(self._isolation(xs))[0])

    def _score_learn(self, xs: FloatArray) -> FloatArray:
        iso = self._isolation(xs)
        out = self._surprise(iso)
        self._learn(xs, iso)
        return out
