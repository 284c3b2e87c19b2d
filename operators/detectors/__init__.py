"""Registered detectors: every one is built by name and passes the same contract.

Example:
    >>> sorted(DETECTORS)  # doctest: +NORMALIZE_WHITESPACE
    ['context', 'flatline', 'gap', 'gaussian-window', 'hst', 'hst-original', 'iforest',
     'robust-z', 'seasonal', 'tail']
    >>> make_detector("robust-z").calibrator
    'gaussian'

"""

from __future__ import annotations

from collections.abc import Callable

from operators.detectors.base import Detector
from operators.detectors.context import ContextSurprise
from operators.detectors.gaussian import WindowedGaussian
from operators.detectors.hst import HalfSpaceTrees, HalfSpaceTreesOriginal
from operators.detectors.iforest import IsolationForest
from operators.detectors.robust import Flatline, Gap, RobustZ
from operators.detectors.seasonal import Seasonal
from operators.detectors.tail import TailSurprise

DETECTORS: dict[str, Callable[[], Detector]] = {
    cls.name: cls for cls in (RobustZ, Flatline, Gap, HalfSpaceTrees, HalfSpaceTreesOriginal)
}
DETECTORS[TailSurprise.name] = TailSurprise
DETECTORS[WindowedGaussian.name] = WindowedGaussian
DETECTORS[IsolationForest.name] = IsolationForest
DETECTORS[Seasonal.name] = Seasonal
DETECTORS[ContextSurprise.name] = ContextSurprise
DEFAULT_DETECTOR = "robust-z"


def make_detector(name: str) -> Detector:
    """Build a registered detector by name.

    Raises:
        ValueError: for an unknown name, listing the registered ones.

    """
    try:
        factory = DETECTORS[name]
    except KeyError:
        msg = f"detect: expected a detector in {sorted(DETECTORS)}, got {name!r}"
        raise ValueError(msg) from None
    return factory()


__all__ = ["DEFAULT_DETECTOR", "DETECTORS", "Detector", "make_detector"]
