"""A scale floor that follows the series: the long-run noise level.

Windowed z-scores divide by a scale measured over a short window. After a
long run of identical values that scale is 0, and an absolute floor (a fixed
constant in input units) is wrong for every series whose units differ from
the constant's: each normal reading after the run scores huge. The floor
here is instead a fraction of the series' own long-run noise level, an
exponentially weighted average of the noise level of recent windows, so a
run of identical values lowers it only slowly.

The noise level of a window is estimated from its successive differences
(``sqrt(pi) / 2`` times their mean absolute value, which is the standard
deviation for independent Gaussian noise). Differences ignore slow level
changes, trends and seasonality, so the floor stays below the scale of a
window that holds a pattern, and only matters when the window is calmer than
the series has been.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> long_run = LongRunScale(weight=0.05)
    >>> for _ in range(100):
    ...     long_run.update(rng.normal(0.0, 2.0, 50))
    >>> round(long_run.value, 1)
    2.0
    >>> long_run.update(np.full(50, 3.0))  # a flat window moves it by 5 %
    >>> round(long_run.value, 1)
    1.9
    >>> float(scale_floor(0.5, long_run.value, 3.0)) > 0.3
    True

"""

from __future__ import annotations

import math

import numpy as np

from operators.events import FloatArray

MEAN_ABS_DIFF_TO_SIGMA = math.sqrt(math.pi) / 2.0
# Relative to the series' level: some 50 times the spacing of float64 numbers there.
LEVEL_EPS = 1e-14
# Keeps the scale positive for a series that sits at exactly 0; its square
# root leaves room for any realistic numerator before overflow.
TINY_SCALE = math.sqrt(np.finfo(np.float64).tiny)
MAX_SCORE = float(np.finfo(np.float64).max)


def diff_sigma(window: FloatArray) -> float:
    """Noise level of a window from its successive differences (0 for < 2 values).

    Example:
        >>> diff_sigma(np.array([1.0, 2.0, 1.0, 2.0]))  # |diffs| are all 1
        0.886...

    """
    if len(window) < 2:
        return 0.0
    return float(MEAN_ABS_DIFF_TO_SIGMA * np.mean(np.abs(np.diff(window))))


def diff_sigmas(rows: FloatArray) -> FloatArray:
    """:func:`diff_sigma` of each row of a 2-D array (rows of >= 2 values), the same numbers.

    Example:
        >>> diff_sigmas(np.array([[1.0, 2.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0]])).round(3).tolist()
        [0.886, 0.0]

    """
    sigmas: FloatArray = MEAN_ABS_DIFF_TO_SIGMA * np.mean(np.abs(np.diff(rows, axis=1)), axis=1)
    return sigmas


class LongRunScale:
    """Exponentially weighted average of the noise level of recent windows.

    The first updates are a plain average (weight ``1 / n``) so the estimate
    does not start from 0; afterwards each update has weight ``weight``.

    Args:
        weight: Weight of each new window, in (0, 1].

    Attributes:
        value: The current long-run noise level, 0 before any update.

    """

    def __init__(self, weight: float) -> None:
        if not 0.0 < weight <= 1.0:
            msg = f"long-run scale: expected 0 < weight <= 1, got {weight}"
            raise ValueError(msg)
        self.weight = weight
        self.value = 0.0
        self.updates = 0

    @classmethod
    def with_halflife(cls, halflife: float, every: int) -> LongRunScale:
        """One updated every ``every`` values that forgets half in ``halflife`` values."""
        return cls(1.0 - 0.5 ** (every / halflife))

    def update(self, window: FloatArray) -> None:
        """Fold in the noise level of ``window`` (chronological values)."""
        if len(window) < 2:
            return
        self.fold(diff_sigma(window))

    def fold(self, sigma: float) -> None:
        """Fold in a window's noise level already measured (see :func:`diff_sigmas`)."""
        self.updates += 1
        w = max(1.0 / self.updates, self.weight)
        self.value += w * (sigma - self.value)


def scale_floor(
    ratio: float, long_run: float | FloatArray, center: float | FloatArray
) -> FloatArray:
    """Smallest scale to divide by: ``ratio`` of the long-run noise level.

    Never below the resolution of the series' level (``1e-14 * |center|``,
    some 50 float64 spacings) or a tiny positive constant, so the score stays
    finite even for a series that has only ever been constant.
    """
    level = LEVEL_EPS * np.abs(center)
    return np.maximum(np.maximum(ratio * long_run, level), TINY_SCALE)


def finite_z(deviation: FloatArray, scale: FloatArray) -> FloatArray:
    """``|deviation| / scale``, clipped to the largest finite float."""
    return np.minimum(np.abs(deviation) / scale, MAX_SCORE).astype(np.float64)
