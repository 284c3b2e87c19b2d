"""Windowed Gaussian: the z-score of a value against the last ``window`` values.

The classic NAB baseline ("windowedGaussian"): the mean and standard
deviation of a sliding window of recent values, updated in O(1) per value
from running sums of the values and their squares.

Example:
    >>> import numpy as np
    >>> d = WindowedGaussian(window=50)
    >>> xs = np.random.default_rng(0).normal(10.0, 1.0, 200)
    >>> float(np.quantile(d.score_learn_many(xs), 0.5)) < 1.5
    True
    >>> bool(d.score_one(20.0) > 8)
    True

"""

from __future__ import annotations

import numpy as np

from operators.detectors.base import RefreshingDetector
from operators.detectors.scale import LongRunScale, finite_z, scale_floor
from operators.events import FloatArray


class WindowedGaussian(RefreshingDetector):
    """``|x - mean| / std`` over the last ``window`` learned values.

    Running sums are kept relative to a pivot near the window's mean, so the
    variance does not cancel away for a series far from 0 (any input range
    works). Every ``refresh_every`` values the sums are recomputed from the
    window, which re-centres the pivot and stops rounding errors from
    accumulating; the batch form does the same refreshes at the same values
    and adds the same numbers in the same order, so both forms give identical
    scores.

    The standard deviation has a floor of ``floor_ratio`` times the series'
    long-run noise level (:mod:`operators.detectors.scale`), so that after a
    run of identical values longer than the window, ordinary readings do not
    score huge.

    Score range: [0, inf); about ``|N(0, 1)|`` for Gaussian noise. Scores 0
    until ``min_history`` values are learned.

    Args:
        window: Number of recent values in the mean and standard deviation
            (NAB's baseline uses 6400; memory is 8 bytes per value).
        min_history: Values to learn before scoring.
        floor_ratio: Floor of the scale as a fraction of the long-run noise level.
        floor_halflife: Values after which the long-run noise level has
            forgotten half of what it knew.
        refresh_every: Values between recomputations of the sums from the
            window (at most ``window``).

    Raises:
        ValueError: unless ``2 <= min_history <= window`` and ``refresh_every >= 1``.

    """

    name = "gaussian-window"
    score_range = "[0, inf): z-score against the mean and std of the last window values"
    calibrator = "gaussian"

    def __init__(
        self,
        window: int = 1000,
        min_history: int = 8,
        floor_ratio: float = 1.0,
        floor_halflife: float = 10_000.0,
        refresh_every: int = 128,
    ) -> None:
        if not 2 <= min_history <= window or refresh_every < 1:
            msg = (
                "gaussian-window: expected 2 <= min_history <= window and refresh_every >= 1,"
                f" got min_history={min_history}, window={window}, refresh_every={refresh_every}"
            )
            raise ValueError(msg)
        refresh_every = min(refresh_every, window)
        self.window = window
        self.min_history = min_history
        self.floor_ratio = floor_ratio
        self.refresh_every = refresh_every
        self.long_run = LongRunScale.with_halflife(floor_halflife, refresh_every)
        self.ring = np.zeros(window, dtype=np.float64)
        self.count = 0
        # Sums of (value - pivot) and its square over the window.
        self.pivot = 0.0
        self.sum1 = 0.0
        self.sum2 = 0.0

    def _next_refresh(self) -> int:
        if self.count < self.min_history:
            return self.min_history
        return (self.count // self.refresh_every + 1) * self.refresh_every

    def _recent(self) -> FloatArray:
        """The window's values, oldest first."""
        if self.count < self.window:
            return self.ring[: self.count]
        pos = self.count % self.window
        return np.concatenate((self.ring[pos:], self.ring[:pos]))

    def _refresh(self) -> None:
        recent = self._recent()
        self.pivot = float(np.mean(recent))
        dev = recent - self.pivot
        self.sum1 = float(np.sum(dev))
        self.sum2 = float(np.sum(dev * dev))
        self.long_run.update(recent)

    def _segment(self, xs: FloatArray, *, learn: bool) -> FloatArray:
        """Score (and learn) values between two refreshes, each against those before it."""
        if learn and self.count == 0:
            self.pivot = float(xs[0])  # until the first refresh centres it
        seen = self.count + np.arange(len(xs))
        slot = seen % self.window
        # The value each one evicts from a full window; 0 adds nothing to the sums.
        evicted = np.where(seen >= self.window, self.ring[slot] - self.pivot, 0.0)
        dev = xs - self.pivot
        sum1 = np.cumsum(np.concatenate(([self.sum1], dev - evicted)))
        sum2 = np.cumsum(np.concatenate(([self.sum2], dev * dev - evicted * evicted)))
        size = np.minimum(seen, self.window)
        denom = np.maximum(size, 1)
        mean_dev = sum1[:-1] / denom
        var = np.maximum(sum2[:-1] / denom - mean_dev * mean_dev, 0.0)
        center = self.pivot + mean_dev
        scale = np.maximum(np.sqrt(var), scale_floor(self.floor_ratio, self.long_run.value, center))
        out = np.where(size >= self.min_history, finite_z(xs - center, scale), 0.0)
        if learn:
            self.ring[slot] = xs
            self.count += len(xs)
            self.sum1 = float(sum1[-1])
            self.sum2 = float(sum2[-1])
        return np.asarray(out, dtype=np.float64)

    def score_one(self, x: float) -> float:
        """Z-score of ``x`` against the window."""
        return float(self._segment(np.array([x], dtype=np.float64), learn=False)[0])

    def _score_learn(self, xs: FloatArray) -> FloatArray:
        return self._segment(xs, learn=True)
