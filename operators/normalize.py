"""Per-series normalizers: fixed min-max, online min-max and robust online scaling.

A normalizer maps raw values onto a common scale before detection. Each is a
small picklable object holding the state of one series; ``transform_many``
scales a batch and updates the state, giving exactly the numbers that
``transform_one`` would give one value at a time.

Example:
    >>> import numpy as np
    >>> FixedMinMax(21.0, 85.0).transform_many(np.array([21.0, 53.0, 85.0])).tolist()
    [0.0, 0.5, 1.0]
    >>> n = OnlineMinMax()
    >>> n.transform_many(np.array([10.0, 20.0, 15.0])).tolist()
    [0.5, 1.0, 0.5]

"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from operators.events import FloatArray


class Normalizer(ABC):
    """Scales one series' values; stateful, picklable."""

    name: str

    @abstractmethod
    def transform_many(self, xs: FloatArray) -> FloatArray:
        """Scale ``xs`` in order, updating the state as each value is seen."""

    def transform_one(self, x: float) -> float:
        """Scale one value (the per-event form of :meth:`transform_many`)."""
        return float(self.transform_many(np.array([x], dtype=np.float64))[0])


class FixedMinMax(Normalizer):
    """``(x - lo) / (hi - lo)`` with fixed bounds (the original used 21/85 °C).

    Values outside the bounds map outside [0, 1]; nothing is clipped, so a
    reading far beyond the expected range stays visibly far.
    """

    name = "fixed"

    def __init__(self, lo: float = 21.0, hi: float = 85.0) -> None:
        if not hi > lo:
            msg = f"normalize fixed: expected hi > lo, got lo={lo} hi={hi}"
            raise ValueError(msg)
        self.lo = lo
        self.hi = hi

    def transform_many(self, xs: FloatArray) -> FloatArray:
        """Scale with the fixed bounds (no state to update)."""
        return (xs - self.lo) / (self.hi - self.lo)

    def transform_one(self, x: float) -> float:
        """Scale one value: the same float operations as :meth:`transform_many`."""
        return (x - self.lo) / (self.hi - self.lo)


class OnlineMinMax(Normalizer):
    """Min-max scaling with the running minimum and maximum, current value included.

    A constant series (min equal to max) maps to 0.5.
    """

    name = "minmax"

    def __init__(self) -> None:
        self.lo = np.inf
        self.hi = -np.inf

    def transform_many(self, xs: FloatArray) -> FloatArray:
        """Scale with the running bounds, updated value by value."""
        if len(xs) == 0:
            return xs.astype(np.float64)
        lo = np.minimum.accumulate(np.concatenate(([self.lo], xs)))[1:]
        hi = np.maximum.accumulate(np.concatenate(([self.hi], xs)))[1:]
        self.lo = float(lo[-1])
        self.hi = float(hi[-1])
        span = hi - lo
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(span > 0, (xs - lo) / np.where(span > 0, span, 1.0), 0.5)
        return out.astype(np.float64)


class RobustScaler(Normalizer):
    """``(x - median) / IQR`` over the previous ``window`` values of the series.

    The statistics come from values *before* the current one, so a spike does
    not shrink its own scaled size. Until two values are seen the output is 0;
    a zero IQR falls back to ``min_scale``.
    """

    name = "robust"

    def __init__(self, window: int = 256, min_scale: float = 1e-6) -> None:
        if window < 2:
            msg = f"normalize robust: expected window >= 2, got {window}"
            raise ValueError(msg)
        self.window = window
        self.min_scale = min_scale
        self.history = np.empty(0, dtype=np.float64)

    def transform_many(self, xs: FloatArray) -> FloatArray:
        """Scale each value against the window of values before it."""
        out = np.empty(len(xs), dtype=np.float64)
        hist = self.history
        i = 0
        # Warm-up: while the window is not yet full its length changes, so
        # go one value at a time; afterwards every window has the same length.
        while i < len(xs) and len(hist) < self.window:
            out[i] = self._scale(xs[i], hist)
            hist = np.append(hist, xs[i])
            i += 1
        if i < len(xs):
            joined = np.concatenate((hist, xs[i:]))
            windows = sliding_window_view(joined, self.window)[: len(xs) - i]
            q25, med, q75 = np.percentile(windows, [25, 50, 75], axis=1)
            scale = np.maximum(q75 - q25, self.min_scale)
            out[i:] = (xs[i:] - med) / scale
            hist = joined[-self.window :]
        self.history = hist.copy()
        return out

    def _scale(self, x: float, hist: FloatArray) -> float:
        if len(hist) < 2:
            return 0.0
        q25, med, q75 = np.percentile(hist, [25, 50, 75])
        return float((x - med) / max(q75 - q25, self.min_scale))


NORMALIZERS: dict[str, Callable[..., Normalizer]] = {
    FixedMinMax.name: FixedMinMax,
    OnlineMinMax.name: OnlineMinMax,
    RobustScaler.name: RobustScaler,
}


def make_normalizer(name: str, **params: float) -> Normalizer:
    """Build a normalizer by name with its parameters.

    Raises:
        ValueError: for an unknown name, listing the known ones.

    Example:
        >>> make_normalizer("fixed", lo=0.0, hi=10.0).transform_one(5.0)
        0.5

    """
    try:
        factory = NORMALIZERS[name]
    except KeyError:
        msg = f"normalize: expected one of {sorted(NORMALIZERS)}, got {name!r}"
        raise ValueError(msg) from None
    return factory(**params)
