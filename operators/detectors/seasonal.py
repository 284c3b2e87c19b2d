"""Seasonal residual detector: learns daily and weekly profiles online.

The detector interface passes values only (``score_learn_many(values)``; the
detect step hands over a series' normalized values without their times), so
the phase within each season comes from the value's position in the series:
the constructor takes each period as a number of samples, for instance
``periods=(1440, 10080)`` for a day and a week of minute data. This assumes
regular sampling: a dropout shifts the phase by the number of missing samples
(the ``gap`` detector flags dropouts), and the profile re-learns the shift at
the rate ``season_rate`` per cycle.

The model is additive, ``expected = level + sum of the seasonal profiles``,
learned in error-correction form (Holt-Winters style). Each profile is a
fixed number of bins per period, linearly interpolated between bin centres,
so memory is fixed whatever the period. The score is the robust z-score of
the residual ``x - expected`` against the median and MAD of recent residuals.

Example:
    >>> import numpy as np
    >>> t = np.arange(20 * 96 + 72)
    >>> day = 10.0 + 5.0 * np.sin(2 * np.pi * t / 96)
    >>> d = Seasonal(periods=(96,), bins=(24,))
    >>> scores = d.score_learn_many(day + np.random.default_rng(0).normal(0, 0.3, len(t)))
    >>> float(np.quantile(scores[-500:], 0.99)) < 4
    True
    >>> d.count % 96  # the next value falls at the daily trough (sin = -1)
    72
    >>> bool(d.score_one(15.0) > 10)  # the daily peak level, at the trough
    True

"""

from __future__ import annotations

import numpy as np

from operators.detectors.base import Detector
from operators.detectors.scale import LongRunScale, finite_z, scale_floor
from operators.events import FloatArray, IntArray

MAD_TO_SIGMA = 1.4826


class Seasonal(Detector):
    """Robust z-score of the residual after level and seasonal profiles.

    The model is frozen within blocks of ``block`` values and updated at the
    end of each block from that block's residuals (clipped to ``clip`` times
    the residual scale, so an anomaly barely moves the model). Scores within
    a block therefore use the same model, which is what lets the batch form
    score a block at once; the per-event form updates at the same values with
    the same arithmetic, so both forms give identical scores.

    Updates per block: the level moves by ``level_rate`` times the sum of the
    residuals; each bin of a profile moves by ``season_rate`` times its
    (interpolation-weighted) share of the residuals, scaled so that a whole
    cycle corrects a ``season_rate`` fraction of a persistent error in that
    bin. Profiles are then re-centred to mean 0, their mean going to the level.

    Score range: [0, inf); about ``|N(0, 1)|`` when the residual is Gaussian.
    Scores 0 until ``min_history`` values are learned.

    Args:
        periods: Length of each season in samples.
        bins: Number of profile bins for each period.
        block: Values between model updates.
        level_rate: Fraction of each residual that goes into the level.
        season_rate: Fraction of a persistent error corrected per cycle.
        clip: Residuals are clipped to this many residual scales for learning.
        residual_window: Recent residuals behind the median and MAD.
        min_history: Values to learn before scoring (at least ``block``).
        floor_ratio: Floor of the residual scale as a fraction of its long-run
            noise level (see :mod:`operators.detectors.scale`).
        floor_halflife: Values after which that long-run level forgets half.

    Raises:
        ValueError: for inconsistent arguments (each period at least 2 bins of
            at least 1 sample, ``block <= min_history``,
            ``block <= residual_window``, ``level_rate * block <= 1``).

    """

    name = "seasonal"
    score_range = "[0, inf): robust z-score of the residual after level and seasonality"
    calibrator = "gaussian"

    def __init__(
        self,
        periods: tuple[int, ...] = (1440, 10080),
        bins: tuple[int, ...] = (48, 168),
        block: int = 32,
        level_rate: float = 0.01,
        season_rate: float = 0.1,
        clip: float = 4.0,
        residual_window: int = 256,
        min_history: int = 64,
        floor_ratio: float = 1.0,
        floor_halflife: float = 10_000.0,
    ) -> None:
        ok = (
            len(periods) == len(bins)
            and all(2 <= b <= p for p, b in zip(periods, bins, strict=True))
            and 1 <= block <= min(min_history, residual_window)
            and 0.0 < level_rate * block <= 1.0
            and 0.0 < season_rate <= 1.0
            and clip > 0.0
        )
        if not ok:
            msg = (
                "seasonal: expected one bins count per period with 2 <= bins <= period, "
                "1 <= block <= min(min_history, residual_window), 0 < level_rate * block <= 1, "
                f"0 < season_rate <= 1 and clip > 0, got periods={periods}, bins={bins}, "
                f"block={block}, min_history={min_history}, residual_window={residual_window}, "
                f"level_rate={level_rate}, season_rate={season_rate}, clip={clip}"
            )
            raise ValueError(msg)
        self.periods = tuple(periods)
        self.bins = tuple(bins)
        self.block = block
        self.level_rate = level_rate
        self.season_rate = season_rate
        self.clip = clip
        self.min_history = min_history
        self.floor_ratio = floor_ratio
        self.long_run = LongRunScale.with_halflife(floor_halflife, block)
        self.count = 0
        self.level = 0.0
        self.profiles = [np.zeros(b, dtype=np.float64) for b in bins]
        self.pending = np.zeros(block, dtype=np.float64)
        self.residuals = np.zeros(residual_window, dtype=np.float64)
        self.center = 0.0
        self.scale = 0.0

    def _bins_of(self, t: IntArray, k: int) -> tuple[IntArray, IntArray, FloatArray]:
        """Bins either side of positions ``t`` in profile ``k``, and the upper one's weight."""
        period, nbins = self.periods[k], self.bins[k]
        # Bin centres sit at (b + 0.5) * period / nbins.
        u = (t % period * nbins) / period - 0.5
        lower = np.floor(u)
        frac = u - lower
        b0 = lower.astype(np.int64) % nbins
        return b0, (b0 + 1) % nbins, frac

    def _expected(self, t: IntArray) -> FloatArray:
        out = np.full(len(t), self.level, dtype=np.float64)
        for k, profile in enumerate(self.profiles):
            b0, b1, frac = self._bins_of(t, k)
            out += (1.0 - frac) * profile[b0] + frac * profile[b1]
        return out

    def _residual_scale(self) -> float:
        return float(
            np.maximum(self.scale, scale_floor(self.floor_ratio, self.long_run.value, self.level))
        )

    def _score(self, xs: FloatArray) -> FloatArray:
        """Scores of values at the next positions, against the frozen model."""
        t = self.count + np.arange(len(xs), dtype=np.int64)
        residual = xs - self._expected(t) - self.center
        scored = finite_z(residual, np.full(len(xs), self._residual_scale()))
        return np.where(t >= self.min_history, scored, 0.0)

    def _recent_residuals(self) -> FloatArray:
        size = len(self.residuals)
        if self.count < size:
            return self.residuals[: self.count]
        pos = self.count % size
        return np.concatenate((self.residuals[pos:], self.residuals[:pos]))

    def _update(self) -> None:
        """Learn from the block of values that has just been completed."""
        t = self.count - self.block + np.arange(self.block, dtype=np.int64)
        xs = self.pending
        if self.count == self.block:
            self.level = float(np.median(xs))
        residual = xs - self._expected(t)
        slots = t % len(self.residuals)
        self.residuals[slots] = residual
        if self.count > self.block:
            limit = self.clip * self._residual_scale()
            learn = np.clip(residual - self.center, -limit, limit) + self.center
            self.level += self.level_rate * float(np.sum(learn))
            for k, profile in enumerate(self.profiles):
                b0, b1, frac = self._bins_of(t, k)
                nbins = self.bins[k]
                share = np.bincount(b0, (1.0 - frac) * learn, nbins) + np.bincount(
                    b1, frac * learn, nbins
                )
                profile += (self.season_rate * nbins / self.periods[k]) * share
                shift = float(np.mean(profile))
                profile -= shift
                self.level += shift
        recent = self._recent_residuals()
        self.center = float(np.median(recent))
        self.scale = MAD_TO_SIGMA * float(np.median(np.abs(recent - self.center)))
        self.long_run.update(recent)

    def score_one(self, x: float) -> float:
        """Robust z-score of the residual of ``x`` at the next position."""
        return float(self._score(np.array([x], dtype=np.float64))[0])

    def learn_one(self, x: float) -> None:
        """Queue ``x``; at the end of a block, update the model."""
        self.pending[self.count % self.block] = x
        self.count += 1
        if self.count % self.block == 0:
            self._update()

    def score_learn_many(self, xs: FloatArray) -> FloatArray:
        """Score then learn each value; one vectorised step per block."""
        xs = np.asarray(xs, dtype=np.float64)
        out = np.empty(len(xs), dtype=np.float64)
        i = 0
        while i < len(xs):
            end = min(i + self.block - self.count % self.block, len(xs))
            out[i:end] = self._score(xs[i:end])
            self.pending[self.count % self.block : self.count % self.block + end - i] = xs[i:end]
            self.count += end - i
            if self.count % self.block == 0:
                self._update()
            i = end
        return out
