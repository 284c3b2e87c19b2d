"""Registered detectors: every one is built by name and passes the same contract.

Example:
    >>> sorted(DETECTORS)
    ['flatline', 'gap', 'hst', 'hst-original', 'robust-z']
    >>> make_detector("robust-z").calibrator
    'gaussian'

"""

from __future__ import annotations

from collections.abc import Callable

from operators.detectors.base import Detector
from operators.detectors.hst import HalfSpaceTrees, HalfSpaceTreesOriginal
from operators.detectors.robust import Flatline, Gap, RobustZ

DETECTORS: dict[str, Callable[[], Detector]] = {
    cls.name: cls for cls in (RobustZ, Flatline, Gap, HalfSpaceTrees, HalfSpaceTreesOriginal)
}
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
