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

    def observe_intervals(self, seconds: FloatArray) -> None:
        """Be told the event-time spacing of the next values (seasonal detectors use it).

        Called with the seconds between consecutive readings, before those
        readings are scored; detectors that ignore time keep this no-op.
        """
        del seconds  # a time-free detector has no use for the spacing

    def explain(self) -> dict[str, FloatArray]:
        """The parts behind each score of the last :meth:`score_learn_many` call.

        Alert reasons name the part that fired (for example the ``context``
        detector's rarity and novelty surprises). Detectors whose score is one
        quantity return ``{}``.
        """
        return {}

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


class RefreshingDetector(Detector):
    """A detector whose model changes only at known positions of the stream.

    Between two refreshes the model is fixed, so a whole stretch can be scored
    and learned at once; :meth:`score_learn_many` cuts a batch at each refresh
    point, which keeps it equal to the per-event form. Subclasses keep
    ``count`` (values learned so far) and implement :meth:`_next_refresh`,
    :meth:`_refresh` and :meth:`_score_learn`.
    """

    count: int

    @abstractmethod
    def _next_refresh(self) -> int:
        """The ``count`` at which the model is refreshed next."""

    @abstractmethod
    def _refresh(self) -> None:
        """Refresh the model (called when ``count`` reaches the refresh point)."""

    @abstractmethod
    def _score_learn(self, xs: FloatArray) -> FloatArray:
        """Score then learn a stretch with no refresh point inside; advances ``count``."""

    def learn_one(self, x: float) -> None:
        """Fold ``x`` into the model, refreshing it when due."""
        self.score_learn_many(np.array([x], dtype=np.float64))

    def score_learn_many(self, xs: FloatArray) -> FloatArray:
        """Score then learn each value; vectorised between refresh points."""
        xs = np.asarray(xs, dtype=np.float64)
        out = np.empty(len(xs), dtype=np.float64)
        i = 0
        while i < len(xs):
            due = self._next_refresh()
            end = min(i + due - self.count, len(xs))
            out[i:end] = self._score_learn(xs[i:end])
            if self.count == due:
                self._refresh()
            i = end
        return out
