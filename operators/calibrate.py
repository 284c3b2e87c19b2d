"""Calibrators: map each detector's raw score onto a comparable [0, 1].

A calibrated score reads as "how sure are we this is not ordinary": 0.999 means
the reading is as unusual as one in a thousand ordinary readings. One alert
threshold therefore means the same for every detector and every series.

* ``gaussian``: a robust z-score ``z`` maps to ``1 - P(|Z| > z)`` for a standard
  normal ``Z`` (``erf(z / sqrt 2)``).
* ``surprise``: a surprise ``s = -log10 p`` maps to ``1 - p``.
* ``unit``: a score already in [0, 1] (such as HalfSpaceTrees') is clipped.

Example:
    >>> import numpy as np
    >>> calibrate("surprise", np.array([0.0, 3.0])).round(6).tolist()
    [0.0, 0.999]
    >>> round(float(calibrate("gaussian", np.array([1.959964]))[0]), 4)
    0.95

"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from operators.events import FloatArray

_SQRT2 = math.sqrt(2.0)


def _gaussian(z: FloatArray) -> FloatArray:
    # math.erf value by value (numpy has no erf); fromiter skips the object array.
    half = np.abs(z) / _SQRT2
    return np.fromiter(map(math.erf, half.ravel().tolist()), np.float64, half.size).reshape(
        half.shape
    )


def _surprise(s: FloatArray) -> FloatArray:
    return np.asarray(-np.expm1(-np.maximum(s, 0.0) * math.log(10.0)), dtype=np.float64)


def _unit(x: FloatArray) -> FloatArray:
    return np.clip(x, 0.0, 1.0).astype(np.float64)


CALIBRATORS: dict[str, Callable[[FloatArray], FloatArray]] = {
    "gaussian": _gaussian,
    "surprise": _surprise,
    "unit": _unit,
}


def calibrate(name: str, raw: FloatArray) -> FloatArray:
    """Map raw scores to [0, 1] with the named calibrator.

    Raises:
        ValueError: for an unknown calibrator name.

    """
    try:
        fn = CALIBRATORS[name]
    except KeyError:
        msg = f"calibrate: expected one of {sorted(CALIBRATORS)}, got {name!r}"
        raise ValueError(msg) from None
    return fn(raw)
