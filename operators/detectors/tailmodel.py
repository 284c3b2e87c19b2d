"""Tail probabilities against a fixed sample: empirical inside, generalised Pareto beyond.

The ``context`` detector (:mod:`operators.detectors.context`) scores values,
distances and seasonal residuals against the last learned ones with this model.
Inside the sample's range the tail probability is the share of the sample at
least as extreme; beyond the ``tail`` most extreme values of a side it follows
a generalised Pareto fit of the excesses (peaks over threshold, as in
:mod:`operators.detectors.tail`), so a value far outside the sample still gets
a finite, graded probability.

Example:
    >>> import numpy as np
    >>> m = TailModel(np.arange(100.0), tail=10, xi_max=0.9)
    >>> tail_surprise(m, np.array([80.0, -20.0, np.nan]), two_sided=True).round(2).tolist()
    [0.38, 3.5, 0.0]

"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from operators.detectors.tail import gpd_moments
from operators.events import FloatArray

LOG10_2 = math.log10(2.0)


class TailModel:
    """Tail probabilities of values against a sorted sample, fixed between refreshes.

    Args:
        sample: The values that define "ordinary" (any order, finite; float32
            samples are fitted in float64).
        tail: Most extreme values per side that fit each generalised Pareto tail.
        xi_max: Largest shape of a tail fit (``< 1``).

    Example:
        >>> m = TailModel(np.arange(100.0), tail=10, xi_max=0.9)
        >>> m.log10_upper(np.array([50.0, 99.0, 150.0])).round(2).tolist()
        [-0.3, -1.7, -6.79]

    """

    def __init__(
        self, sample: npt.NDArray[np.float32] | FloatArray, tail: int, xi_max: float
    ) -> None:
        self.sorted: FloatArray = sample.astype(np.float64)  # a copy, sorted in place
        self.sorted.sort()
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
        # What mean() and var(ddof=1) compute, without their overhead (a fit per refresh).
        k = len(excess)
        mean = float(excess.sum()) / k
        if mean <= 0.0:
            return edge, 0.0, 0.0
        dev = excess - mean
        return edge, *gpd_moments(mean, float((dev * dev).sum()) / (k - 1), 0.0, xi_max)

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

    def upper_quantile(self, digits: float) -> float:
        """The value whose upper-tail surprise is ``digits`` (the tail's edge if that is inside).

        The inverse of :meth:`log10_upper` beyond the edge of the fitted tail.

        Example:
            >>> m = TailModel(np.arange(100.0), tail=10, xi_max=0.9)
            >>> x = m.upper_quantile(4.0)
            >>> round(float(-m.log10_upper(np.array([x]))[0]), 6)
            4.0

        """
        beyond = digits + self.log_k  # digits past the edge of the fitted tail
        if beyond <= 0.0 or self.up_sigma <= 0.0:
            return self.upper
        xi, sigma = self.up_xi, self.up_sigma
        if xi < 1e-9:
            return self.upper + sigma * beyond * math.log(10.0)
        return self.upper + sigma / xi * math.expm1(beyond * xi * math.log(10.0))

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


def tail_surprise(model: TailModel | None, xs: FloatArray, two_sided: bool) -> FloatArray:
    """Surprise ``-log10 p`` of ``xs``: upper tail, or two-sided (twice the smaller side).

    0 where ``xs`` is not finite, and everywhere without a model (too little
    history to fit one yet).
    """
    out = np.zeros(len(xs))
    ok = np.isfinite(xs)
    if model is not None and ok.any():
        if two_sided:
            lp = np.minimum(model.log10_upper(xs[ok]), model.log10_lower(xs[ok]))
            out[ok] = -(LOG10_2 + lp)
        else:
            out[ok] = -model.log10_upper(xs[ok])
    return out
