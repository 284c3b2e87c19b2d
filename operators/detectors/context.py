"""Contextual tail surprise: the project's default detector.

A reading is anomalous when it is both **rare** and **new**:

* *rare*: its value lies in a tail of the recent distribution, or its
  *seasonal residual* (the value minus the median of the readings around the
  same time of the previous day) lies in a tail of the recent residuals. The
  last ``window`` learned values (residuals) define "ordinary"; inside their
  range the tail probability is empirical (the share at least as extreme),
  beyond the ``tail`` most extreme values of a side it follows a generalised
  Pareto fit of the excesses (peaks over threshold, as in
  :mod:`operators.detectors.tail`).
* *new*: nothing like it was seen in its context. Its distance to the nearest
  of the last ``recent`` readings, and of the readings around the same time of
  the previous day (``period`` readings ago, ``+- jitter``), is scored against
  the recent history of such distances with the same tail model (upper side).
  A value the series has just shown, or shows every day at this hour, is not
  new: a daily batch job's spike or a level held since the last reading is
  rare yet expected.

Each is a surprise ``-log10 p``; the detector reports the smaller of the two,
so both must agree. An event is reported once: after a surprise ``s`` at
reading ``i``, a later surprise is damped (multiplied by ``damping``) unless it
exceeds ``s - decay * (j - i)``, a refractory bar that falls by ``decay``
decimal digits per reading.

What the detector learns from readings it flags is a choice (``flagged``):
``learn`` everything, ``skip`` values whose rarity surprise reaches
``flag_level`` (so the anomaly is not learned as normal), or ``clip`` them to
the edge of the current tail (down-weighting). A run of ``max_skip`` flagged
readings in a row is learned anyway, so a level shift becomes the new normal
instead of freezing the model.

The models (sorted windows and tail fits) are refreshed every ``refresh``
readings, and at ``min_history`` and each doubling of it while warming up.
Between refreshes a whole stretch is scored at once in numpy: the batch form
gives exactly the per-event numbers, at a few hundred thousand readings per
second.

The daily period comes from the readings' spacing (:meth:`observe_intervals`),
or from ``period`` (readings per day) when given; periods above
``max_period`` readings are not used, which bounds the state (under 32 KB).

Score range: [0, ``max_surprise``] decimal digits, calibrated with ``surprise``.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d = ContextSurprise()
    >>> ordinary = d.score_learn_many(rng.normal(20.0, 1.0, 2000))
    >>> bool(ordinary[200:].max() < 4.0)
    True
    >>> bool(d.score_learn_many(np.array([35.0]))[0] > 5.0)
    True

"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from operators.detectors.base import RefreshingDetector
from operators.detectors.tail import gpd_moments
from operators.events import BoolArray, FloatArray, IntArray

FLAGGED_CHOICES = ("learn", "skip", "clip")
# What scoring a stretch changes; every one is rebound, never mutated in place.
_MUTABLE = ("count", "_values", "_dists", "_resids", "_history", "_skips", "_bar", "_parts")
#: Names of the surprises :meth:`ContextSurprise.explain` reports, in digits.
PARTS = ("rare", "rare for the time of day", "new")
LOG10_2 = math.log10(2.0)


class TailModel:
    """Tail probabilities of values against a sorted sample, fixed between refreshes.

    Args:
        sample: The values that define "ordinary" (any order, finite).
        tail: Most extreme values per side that fit each generalised Pareto tail.
        xi_max: Largest shape of a tail fit (``< 1``).

    Example:
        >>> m = TailModel(np.arange(100.0), tail=10, xi_max=0.9)
        >>> m.log10_upper(np.array([50.0, 99.0, 150.0])).round(2).tolist()
        [-0.3, -1.7, -6.79]

    """

    def __init__(self, sample: FloatArray, tail: int, xi_max: float) -> None:
        self.sorted = np.sort(sample)
        m = len(self.sorted)
        self.k = max(2, min(tail, m // 3))
        self.log_k = math.log10(self.k / (m + 1))
        top = self.sorted[m - self.k :]
        bottom = self.sorted[: self.k]
        self.upper, self.up_xi, self.up_sigma = self._fit(top - top[0], float(top[0]), xi_max)
        self.lower, self.low_xi, self.low_sigma = self._fit(
            bottom[-1] - bottom, float(bottom[-1]), xi_max
        )

    @staticmethod
    def _fit(excess: FloatArray, edge: float, xi_max: float) -> tuple[float, float, float]:
        """Method-of-moments generalised Pareto shape and scale of the excesses."""
        mean = float(excess.mean())
        if mean <= 0.0:
            return edge, 0.0, 0.0
        return edge, *gpd_moments(mean, float(excess.var(ddof=1)), 0.0, xi_max)

    def _gpd(self, d: FloatArray, xi: float, sigma: float) -> FloatArray:
        """``log10 P(excess > d)`` under the fitted tail, ``d > 0``."""
        if sigma <= 0.0:
            return np.full(len(d), -np.inf)
        if xi < 1e-9:
            return self.log_k - d / sigma / math.log(10.0)
        return self.log_k - np.log10(1.0 + xi * d / sigma) / xi

    def log10_upper(self, x: FloatArray) -> FloatArray:
        """``log10`` of the share of the sample at least as large as ``x`` (tail-modelled)."""
        srt = self.sorted
        m = len(srt)
        p: FloatArray = np.log10((m - np.searchsorted(srt, x, "left") + 1.0) / (m + 1.0))
        beyond = x > self.upper
        if beyond.any():
            g = self._gpd(x[beyond] - self.upper, self.up_xi, self.up_sigma)
            # Inside the sample's range the count is the better estimate.
            inside = x[beyond] <= srt[-1]
            p[beyond] = np.where(inside, np.maximum(g, p[beyond]), g)
        return p

    def log10_lower(self, x: FloatArray) -> FloatArray:
        """``log10`` of the share of the sample at most as large as ``x`` (tail-modelled)."""
        srt = self.sorted
        m = len(srt)
        p: FloatArray = np.log10((np.searchsorted(srt, x, "right") + 1.0) / (m + 1.0))
        beyond = x < self.lower
        if beyond.any():
            g = self._gpd(self.lower - x[beyond], self.low_xi, self.low_sigma)
            inside = x[beyond] >= srt[0]
            p[beyond] = np.where(inside, np.maximum(g, p[beyond]), g)
        return p


class ContextSurprise(RefreshingDetector):
    """Rare-and-new surprise with a refractory period; see the module docstring.

    Args:
        window: Learned values (and distances) that define "ordinary".
        tail: Most extreme values per side that fit each tail model.
        min_history: Learned values before anything scores above 0.
        recent: Readings back whose values make the recent context.
        period: Readings per day, or ``None`` to learn it from the spacing.
        jitter: Readings either side of "same time yesterday" in the context.
        max_period: Longest daily period used (bounds the state).
        refresh: Readings between two refreshes of the model.
        decay: Decimal digits per reading by which the refractory bar falls.
        damping: Factor on a surprise under the refractory bar.
        flagged: What is learned from flagged values: ``learn``, ``skip`` or ``clip``.
        flag_level: Rarity surprise (digits) at which a value is flagged.
        max_skip: Flagged values in a row after which they are learned anyway.
        max_surprise: Cap of the surprise, in decimal digits.
        xi_max: Largest generalised Pareto shape of a tail fit.
        season_s: Seconds in the seasonal period (a day).

    Non-finite values score ``max_surprise`` and are not learned.

    """

    name = "context"
    score_range = "[0, 10]: -log10 p of a value both rare and new, damped after an event"
    calibrator = "surprise"

    def __init__(
        self,
        window: int = 1000,
        tail: int = 50,
        min_history: int = 30,
        recent: int = 100,
        period: int | None = None,
        jitter: int = 20,
        max_period: int = 1440,
        refresh: int = 128,
        decay: float = 0.02,
        damping: float = 0.1,
        flagged: str = "skip",
        flag_level: float = 4.0,
        max_skip: int = 50,
        max_surprise: float = 10.0,
        xi_max: float = 0.9,
        season_s: float = 86400.0,
    ) -> None:
        if not 3 <= min_history <= window or tail < 2 or recent < 1 or refresh < 1:
            msg = (
                "context: expected 3 <= min_history <= window, tail >= 2, recent >= 1, "
                f"refresh >= 1, got min_history={min_history}, window={window}, tail={tail}, "
                f"recent={recent}, refresh={refresh}"
            )
            raise ValueError(msg)
        if flagged not in FLAGGED_CHOICES:
            msg = f"context: expected flagged in {FLAGGED_CHOICES}, got {flagged!r}"
            raise ValueError(msg)
        if not 0.0 <= damping <= 1.0 or decay < 0.0 or max_surprise <= 0.0 or not xi_max < 1.0:
            msg = (
                "context: expected 0 <= damping <= 1, decay >= 0, max_surprise > 0, "
                f"xi_max < 1, got {damping}, {decay}, {max_surprise}, {xi_max}"
            )
            raise ValueError(msg)
        self.window = window
        self.tail = tail
        self.min_history = min_history
        self.recent = recent
        self.jitter = jitter
        self.max_period = max_period
        self.refresh = refresh
        self.decay = decay
        self.damping = damping
        self.flagged = flagged
        self.flag_level = flag_level
        self.max_skip = max_skip
        self.max_surprise = max_surprise
        self.xi_max = xi_max
        self.season_s = season_s
        self.count = 0
        self.period = 0
        self._intervals: list[float] = []
        if period is not None:
            self._set_period(period)
        self._values = np.empty(0, dtype=np.float64)  # learned values, oldest first
        self._dists = np.empty(0, dtype=np.float64)  # novelty distances, oldest first
        self._resids = np.empty(0, dtype=np.float64)  # seasonal residuals, oldest first
        # Every reading, for the context; float32 halves the longest part of the state.
        self._history = np.empty(0, dtype=np.float32)
        self._fitted = (0, 0, 0)  # how many values / distances / residuals the models cover
        self._skips = 0
        self._bar = -math.inf  # refractory bar plus decay * reading index
        self._value_model: TailModel | None = None
        self._dist_model: TailModel | None = None
        self._resid_model: TailModel | None = None
        self._parts: tuple[FloatArray, ...] = ()  # per stretch of the last batch, for explain()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # The models are rebuilt on load from the windows they were fitted on.
        del state["_value_model"], state["_dist_model"], state["_resid_model"], state["_parts"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._parts = ()
        self._fit_models()

    def _set_period(self, period: int) -> None:
        self.period = period if 2 * self.jitter < period <= self.max_period else 0

    def observe_intervals(self, seconds: FloatArray) -> None:
        """Learn the daily period from the spacing of the first readings.

        The median of the first eight positive intervals fixes the period
        (``season_s`` divided by it); later intervals are ignored.
        """
        if self.period or len(self._intervals) >= 8:
            return
        positive = seconds[seconds > 0.0][: 8 - len(self._intervals)]
        self._intervals.extend(positive.tolist())
        if len(self._intervals) == 8:
            self._set_period(round(self.season_s / float(np.median(self._intervals))))

    def _fit_models(self) -> None:
        samples = (self._values, self._dists, self._resids)
        self._value_model, self._dist_model, self._resid_model = (
            TailModel(sample[:n], self.tail, self.xi_max) if n >= self.min_history else None
            for sample, n in zip(samples, self._fitted, strict=True)
        )

    def _next_refresh(self) -> int:
        if self.count < self.refresh:
            # Warming up: refit at min_history, then each time the history doubles.
            due = self.min_history
            while due <= self.count:
                due *= 2
            return min(due, self.refresh)
        return (self.count // self.refresh + 1) * self.refresh

    def _refresh(self) -> None:
        self._values = self._values[-self.window :]
        self._dists = self._dists[-self.window :]
        self._resids = self._resids[-self.window :]
        self._fitted = (len(self._values), len(self._dists), len(self._resids))
        self._fit_models()

    def _lags(self) -> IntArray:
        lags = np.arange(1, self.recent + 1, dtype=np.int64)
        if self.period:
            start = max(self.period - self.jitter, self.recent + 1)
            lags = np.concatenate(
                (lags, np.arange(start, self.period + self.jitter + 1, dtype=np.int64))
            )
        return lags

    def _context(self, xs: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Per value: distance to its nearest context value, and its seasonal residual.

        The residual is the value minus the median of the readings around the
        same time of the previous day. NaN where there is no such context yet.
        """
        lags = self._lags()
        # Values are compared at the precision the history keeps them in.
        xs32 = xs.astype(np.float32).astype(np.float64)
        ext = np.concatenate((self._history.astype(np.float64), xs32))
        pos = len(self._history) + np.arange(len(xs))
        idx = pos[:, None] - lags[None, :]
        refs = np.where(idx >= 0, ext[np.maximum(idx, 0)], np.nan)
        gaps = np.abs(xs32[:, None] - refs)
        gaps[np.isnan(gaps)] = np.inf
        dists: FloatArray = gaps.min(axis=1)
        dists[np.isinf(dists)] = np.nan
        resids = np.full(len(xs), np.nan)
        if self.period:
            day = refs[:, lags >= self.period - self.jitter]
            full = ~np.isnan(day).any(axis=1)
            if full.any():
                resids[full] = xs32[full] - np.median(day[full], axis=1)
        keep = int(lags[-1])
        self._history = ext[-keep:].astype(np.float32)
        return dists, resids

    @staticmethod
    def _surprise(model: TailModel | None, xs: FloatArray, two_sided: bool) -> FloatArray:
        """Tail surprise of ``xs``, upper side or two-sided (0 where NaN or without a model)."""
        out = np.zeros(len(xs))
        ok = np.isfinite(xs)
        if model is not None and ok.any():
            if two_sided:
                lp = np.minimum(model.log10_upper(xs[ok]), model.log10_lower(xs[ok]))
                out[ok] = -(LOG10_2 + lp)
            else:
                out[ok] = -model.log10_upper(xs[ok])
        return out

    def _learn_mask(self, rare: FloatArray, finite: BoolArray) -> BoolArray:
        """Which values are learned as they are (the rest are skipped or clipped)."""
        learn = finite.copy()
        if self.flagged == "learn":
            return learn
        flagged = np.flatnonzero((rare >= self.flag_level) & finite)
        last = -1 if self._skips else -2
        for i in flagged.tolist():
            # A run of flagged values continues only through consecutive readings.
            self._skips = self._skips + 1 if i == last + 1 else 1
            last = i
            if self._skips <= self.max_skip:
                learn[i] = False
            else:
                self._skips = 0
        if len(flagged) == 0 or flagged[-1] != len(rare) - 1:
            self._skips = 0
        return learn

    def score_learn_many(self, xs: FloatArray) -> FloatArray:
        """Score then learn each value (vectorised between refreshes); see :meth:`explain`."""
        self._parts = ()
        return super().score_learn_many(xs)

    def explain(self) -> dict[str, FloatArray]:
        """Rarity of the value, rarity for the time of day and novelty, per reading (digits)."""
        if not self._parts:
            return {}
        return dict(zip(PARTS, np.hstack(self._parts), strict=True))

    def score_one(self, x: float) -> float:
        """Surprise of ``x`` in its context, without learning it."""
        saved = {k: self.__dict__[k] for k in _MUTABLE}
        try:
            return float(self._score_learn(np.array([x], dtype=np.float64))[0])
        finally:
            self.__dict__.update(saved)

    def _score_learn(self, xs: FloatArray) -> FloatArray:
        n = len(xs)
        finite = np.isfinite(xs)
        safe = np.where(finite, xs, 0.0)
        dists, resids = self._context(np.where(finite, xs, np.nan))
        rare = self._surprise(self._value_model, safe, two_sided=True)
        # Rare for the time of day counts too (a dip at the busiest hour).
        seasonal_rare = self._surprise(self._resid_model, resids, two_sided=True)
        new = self._surprise(self._dist_model, dists, two_sided=False)
        total = np.clip(np.minimum(np.maximum(rare, seasonal_rare), new), 0.0, self.max_surprise)
        parts = np.vstack((rare, seasonal_rare, new))
        self._parts = (*self._parts, np.minimum(parts, self.max_surprise))
        total[~finite] = self.max_surprise
        # Refractory period: damped unless above the decaying bar of earlier surprises.
        index = self.count + np.arange(n, dtype=np.float64)
        lifted = total + self.decay * index
        bars = np.maximum.accumulate(np.concatenate(([self._bar], lifted)))
        self._bar = float(bars[-1])
        under = total <= bars[:-1] - self.decay * index
        out = np.where(under, total * self.damping, total)

        learn = self._learn_mask(rare, finite)
        learned = safe[learn]
        if self.flagged == "clip" and self._value_model is not None:
            model = self._value_model
            clipped = finite & ~learn
            learned = np.where(learn, safe, np.clip(safe, model.lower, model.upper))[
                learn | clipped
            ]
        self._values = np.concatenate((self._values, learned))
        self._dists = np.concatenate((self._dists, dists[np.isfinite(dists)]))
        self._resids = np.concatenate((self._resids, resids[np.isfinite(resids)]))
        self.count += n
        return out
