"""Registered detectors: every one is built by name and passes the same contract.

Example:
    >>> sorted(DETECTORS)  # doctest: +NORMALIZE_WHITESPACE
    ['context', 'flatline', 'gap', 'gaussian-window', 'hst', 'hst-original', 'iforest',
     'robust-z', 'seasonal', 'tail']
    >>> make_detector("robust-z").calibrator
    'gaussian'
    >>> DEFAULT_DETECTOR, DENSE_ANOMALY_DETECTOR
    ('context', 'robust-z')

"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from operators.detectors.base import Detector
from operators.detectors.context import ContextSurprise
from operators.detectors.gaussian import WindowedGaussian
from operators.detectors.hst import HalfSpaceTrees, HalfSpaceTreesOriginal
from operators.detectors.iforest import IsolationForest
from operators.detectors.robust import Flatline, Gap, RobustZ
from operators.detectors.seasonal import Seasonal
from operators.detectors.tail import TailSurprise

DETECTORS: dict[str, Callable[..., Detector]] = {
    cls.name: cls for cls in (RobustZ, Flatline, Gap, HalfSpaceTrees, HalfSpaceTreesOriginal)
}
DETECTORS[TailSurprise.name] = TailSurprise
DETECTORS[WindowedGaussian.name] = WindowedGaussian
DETECTORS[IsolationForest.name] = IsolationForest
DETECTORS[Seasonal.name] = Seasonal
DETECTORS[ContextSurprise.name] = ContextSurprise
#: The best detector on labelled real-world streams (NAB), where anomalies are rare:
#: what ``vigil-score``, ``vigil-evaluate`` and any flow without its own choice use.
DEFAULT_DETECTOR = ContextSurprise.name
#: For streams where anomalies are a percent of the readings or more (the sensors
#: simulator spikes 5 % of the time): a calibrated tail probability cannot call
#: something that frequent rare, a robust distance from the typical value can.
DENSE_ANOMALY_DETECTOR = RobustZ.name


def make_detector(name: str, options: Mapping[str, Any] | None = None) -> Detector:
    """Build a registered detector by name, with constructor ``options``.

    Example:
        >>> make_detector("context", {"flagged": "clip"}).flagged
        'clip'

    Raises:
        ValueError: for an unknown name, listing the registered ones, or for
            options the detector does not take or accept.

    """
    try:
        factory = DETECTORS[name]
    except KeyError:
        msg = f"detect: expected a detector in {sorted(DETECTORS)}, got {name!r}"
        raise ValueError(msg) from None
    try:
        return factory(**(options or {}))
    except TypeError as exc:
        msg = f"detect: options {dict(options or {})} do not fit detector {name!r}: {exc}"
        raise ValueError(msg) from None


__all__ = ["DEFAULT_DETECTOR", "DENSE_ANOMALY_DETECTOR", "DETECTORS", "Detector", "make_detector"]
