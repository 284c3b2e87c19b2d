"""Peaks-over-threshold tail surprise with a quiet period: the project's streaming detector.

How unusual is a value compared with the last ``window`` values? Inside the bulk
of that history the answer is empirical: the share of the history at least as
extreme (upper or lower side). Beyond the ``tail`` most extreme values of a side
the history says little, so the tail is modelled as extreme value theory
suggests (peaks over threshold, Pickands-Balkema-de Haan): the excesses over the
``tail``-th most extreme value follow a generalised Pareto distribution, fitted
by the method of moments on those ``tail`` excesses. The two-sided tail
probability ``p`` (twice the smaller side) is turned into a surprise
``-log10 p``, capped at ``max_surprise``.

A burst of unusual readings is one event, not many. A reading whose surprise
does not exceed the surprise of every one of the previous ``quiet`` readings is
not news: its surprise is multiplied by ``damping``. So only the first and any
larger surprise of a burst stand out, with no alert threshold inside the
detector (the alert policy still decides).

Everything is relative to the history's own spread, so the detector works on
any value range (scale- and shift-free). Score range: [0, ``max_surprise``],
a surprise in decimal digits, calibrated with ``surprise`` (``1 - p``).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d = TailSurprise()
    >>> ordinary = d.score_learn_many(rng.normal(20.0, 1.0, 500))
    >>> bool(ordinary.max() < 4.0)
    True
    >>> spike = d.score_one(30.0)
    >>> bool(spike > 6.0)
    True

"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from typing import Any

import numpy as np

from operators.detectors.base import Detector
from operators.events import FloatArray

LOG10_2 = math.log10(2.0)


def gpd_moments(mean: float, var: float, xi_min: float, xi_max: float) -> tuple[float, float]:
    """Method-of-moments generalised Pareto shape and scale from the excesses' mean and variance.

    The shape is clipped to ``[xi_min, xi_max]`` (``xi_min`` when the excesses
    have no spread) and the scale matches the mean excess.

    Example:
        >>> gpd_moments(2.0, 8.0, 0.0, 0.9)
        (0.25, 1.5)

    """
    xi = 0.5 * (1.0 - mean * mean / var) if var > 0.0 else xi_min
    xi = min(max(xi, xi_min), xi_max)
    return xi, mean * (1.0 - xi)


def gpd_log10_tail(excesses: list[float], d: float, xi_min: float, xi_max: float) -> float:
    """``log10 P(Y > d)`` for a generalised Pareto ``Y`` fitted to ``excesses``.

    The shape ``xi`` and scale ``sigma`` are method-of-moments estimates (shape
    clipped to ``[xi_min, xi_max]``, scale matching the mean excess). A tail
    with no spread at all makes any ``d > 0`` impossible (``-inf``).

    Args:
        excesses: Non-negative excesses over the tail threshold (two or more).
        d: Excess of the value being scored, ``> 0``.
        xi_min: Smallest shape allowed.
        xi_max: Largest shape allowed (``< 1`` so that the mean exists).

    Example:
        >>> round(gpd_log10_tail([1.0, 2.0, 3.0, 0.5, 1.5], 2.0, 0.0, 0.9), 3)
        -0.543

    """
    k = len(excesses)
    mean = sum(excesses) / k
    var = sum((y - mean) * (y - mean) for y in excesses) / (k - 1)
    if mean <= 0.0:
        return -math.inf
    xi, sigma = gpd_moments(mean, var, xi_min, xi_max)
    if abs(xi) < 1e-9:
        return -d / sigma / math.log(10.0)
    base = 1.0 + xi * d / sigma
    if base <= 0.0:
        return -math.inf
    return -math.log10(base) / xi


class TailSurprise(Detector):
    """Two-sided peaks-over-threshold surprise over a window, with a quiet period.

    Args:
        window: Number of recent learned values that define "ordinary".
        tail: Number of most extreme values per side that fit each tail model.
        min_history: Values to learn before scoring anything but 0.
        quiet: Readings after a surprise during which smaller surprises are damped.
        damping: Factor on the surprise of a reading that is not a new high
            within the quiet period (0 silences it, 1 disables the quiet period).
        max_surprise: Cap of the surprise, in decimal digits.
        xi_min: Smallest generalised Pareto shape of a tail fit.
        xi_max: Largest generalised Pareto shape of a tail fit.

    Non-finite values score ``max_surprise`` and are not learned.

    """

    name = "tail"
    score_range = "[0, 10]: -log10 two-sided tail probability, damped inside a quiet period"
    calibrator = "surprise"

    def __init__(
        self,
        window: int = 1000,
        tail: int = 50,
        min_history: int = 30,
        quiet: int = 200,
        damping: float = 0.1,
        max_surprise: float = 10.0,
        xi_min: float = 0.0,
        xi_max: float = 0.9,
    ) -> None:
        if not 3 <= min_history <= window or tail < 2 or quiet < 0:
            msg = (
                "tail: expected 3 <= min_history <= window, tail >= 2, quiet >= 0, got "
                f"min_history={min_history}, window={window}, tail={tail}, quiet={quiet}"
            )
            raise ValueError(msg)
        if not 0.0 <= damping <= 1.0 or not xi_min <= xi_max < 1.0 or max_surprise <= 0:
            msg = (
                "tail: expected 0 <= damping <= 1, xi_min <= xi_max < 1, max_surprise > 0, "
                f"got {damping}, {xi_min}, {xi_max}, {max_surprise}"
            )
            raise ValueError(msg)
        self.window = window
        self.tail = tail
        self.min_history = min_history
        self.quiet = quiet
        self.damping = damping
        self.max_surprise = max_surprise
        self.xi_min = xi_min
        self.xi_max = xi_max
        self._values: deque[float] = deque()
        self._sorted: list[float] = []
        # Raw surprises of the last ``quiet`` readings that may still be the
        # highest: (reading index, surprise), surprises strictly decreasing.
        self._highs: deque[tuple[int, float]] = deque()
        self._seen = 0

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # The sorted copy is rebuilt on load: only the window itself is stored.
        state["_values"] = np.array(self._values, dtype=np.float64)
        del state["_sorted"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        values = state.pop("_values").tolist()
        self.__dict__.update(state)
        self._values = deque(values)
        self._sorted = sorted(values)

    def _surprise(self, x: float) -> float:
        """Capped two-sided tail surprise of ``x`` against the window (no damping)."""
        srt = self._sorted
        m = len(srt)
        if not math.isfinite(x):
            return self.max_surprise
        if m < self.min_history:
            return 0.0
        k = min(self.tail, m // 3)
        log_k = math.log10(k / (m + 1))
        upper = srt[m - k]
        if x > upper:
            excess = [v - upper for v in srt[m - k :]]
            lp_up = log_k + gpd_log10_tail(excess, x - upper, self.xi_min, self.xi_max)
        else:
            lp_up = math.log10((m - bisect_left(srt, x) + 1) / (m + 1))
        lower = srt[k - 1]
        if x < lower:
            excess = [lower - v for v in srt[:k]]
            lp_low = log_k + gpd_log10_tail(excess, lower - x, self.xi_min, self.xi_max)
        else:
            lp_low = math.log10((bisect_right(srt, x) + 1) / (m + 1))
        s = -(LOG10_2 + min(lp_up, lp_low))
        return min(max(s, 0.0), self.max_surprise)

    def _damped(self, s: float) -> float:
        """The reported score: ``s``, damped unless it tops the quiet period."""
        if self._highs and s <= self._highs[0][1]:
            return s * self.damping
        return s

    def _learn(self, x: float, s: float) -> None:
        highs = self._highs
        while highs and highs[-1][1] <= s:
            highs.pop()
        highs.append((self._seen, s))
        while highs and highs[0][0] <= self._seen - self.quiet:
            highs.popleft()
        self._seen += 1
        if not math.isfinite(x):
            return
        self._values.append(x)
        insort(self._sorted, x)
        if len(self._values) > self.window:
            old = self._values.popleft()
            del self._sorted[bisect_left(self._sorted, old)]

    def score_one(self, x: float) -> float:
        """Surprise of ``x`` against the window, damped inside a quiet period."""
        return self._damped(self._surprise(float(x)))

    def learn_one(self, x: float) -> None:
        """Add ``x`` to the window and its surprise to the quiet period."""
        x = float(x)
        self._learn(x, self._surprise(x))

    def score_learn_many(self, xs: FloatArray) -> FloatArray:
        """Score then learn each value; one pass, the same numbers as the per-event form."""
        out = []
        surprise, damped, learn = self._surprise, self._damped, self._learn
        for x in xs.tolist():
            s = surprise(x)
            out.append(damped(s))
            learn(x, s)
        return np.array(out, dtype=np.float64)
