"""The one interface every Vigil detector implements.

A detector scores a univariate stream: ``score_one`` says how anomalous a value
is (higher is more anomalous, always finite, defined before any learning) and
``learn_one`` folds the value into the model. ``score_learn_many`` is the batch
form of "score, then learn" over a numpy array; it gives exactly the numbers of
the per-event form, only faster. Detectors are pure: no Bytewax, no I/O, and
their state pickles.

Example:
    >>> import numpy as np
    >>> from operators.detectors import make_detector
    >>> d = make_detector("robust-z")
    >>> d.score_one(1.0)
    0.0
    >>> scores = d.score_learn_many(np.array([1.0, 1.1, 0.9, 1.0] * 3 + [9.0]))
    >>> bool(scores[-1] > 10)
    True

"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from operators.events import FloatArray


class Detector(ABC):
    """A streaming univariate anomaly detector.

    Class attributes:
        name: Registry name.
        score_range: Human-readable range of the raw score, for the docs.
        calibrator: Name of the calibrator that maps the raw score to [0, 1].
    """

    name: ClassVar[str]
    score_range: ClassVar[str]
    calibrator: ClassVar[str]

    @abstractmethod
    def score_one(self, x: float) -> float:
        """Score ``x`` against what was learned so far (does not learn)."""

    @abstractmethod
    def learn_one(self, x: float) -> None:
        """Fold ``x`` into the model."""

    def score_learn_many(self, xs: FloatArray) -> FloatArray:
        """Score then learn each value of ``xs`` in order; the batch form.

        Subclasses override this with a vectorised version that returns the
        same numbers; this default is the reference loop.
        """
        out = np.empty(len(xs), dtype=np.float64)
        for i, x in enumerate(xs.tolist()):
            out[i] = self.score_one(x)
            self.learn_one(x)
        return out
