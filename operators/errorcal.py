"""Calibration of a series' model outputs: the upper-tail probability against its own.

A trained window model (:mod:`operators.windowmodel`) outputs a reconstruction error
or a probability. :class:`ErrorCalibrator` turns each into a surprise (``-log10`` of
its upper-tail probability against the series' own recent outputs, empirical inside
and generalised Pareto beyond, :class:`~operators.detectors.tailmodel.TailModel`),
which :func:`operators.calibrate.calibrate` maps to ``[0, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from operators.detectors.tailmodel import TailModel
from operators.events import FloatArray

F32 = npt.NDArray[np.float32]
#: Largest surprise reported (decimal digits): a calibrated score of 1 - 1e-10.
MAX_SURPRISE = 10.0


@dataclass
class ErrorCalibrator:
    """Upper-tail surprise of a series' model outputs against its own recent ones.

    Args:
        reference: Outputs of normal windows, used until ``min_history`` own ones.
        history: Own outputs kept.
        min_history: Own outputs before they replace ``reference``.
        refresh: Outputs between two refits of the tail model.
        skip_above: Outputs whose surprise reaches this many digits are not
            learned (an anomaly must not become the series' normal).
        tail: Most extreme outputs that fit the generalised Pareto tail.

    Example:
        >>> cal = ErrorCalibrator(reference=tuple(np.linspace(0.1, 0.3, 200)))
        >>> s = cal.surprise(np.array([0.2, 0.31, 0.9]))
        >>> bool(s[0] < 1.0 < s[1] < 3.0 < s[2])
        True

    """

    reference: tuple[float, ...] = ()
    history: int = 1000
    min_history: int = 200
    refresh: int = 50
    skip_above: float = 3.0
    tail: int = 50
    own: F32 = field(default_factory=lambda: np.empty(0, np.float32))
    since_fit: int = 0
    _model: TailModel | None = field(default=None, repr=False)

    def _fit(self) -> TailModel | None:
        sample = self.own if len(self.own) >= self.min_history else np.asarray(self.reference)
        if len(sample) < 10:
            return None
        return TailModel(sample, tail=self.tail, xi_max=0.9)

    def surprise(self, outputs: FloatArray) -> FloatArray:
        """``-log10`` upper-tail probability of each output, learning as it goes (``nan``: 0).

        The same numbers however the outputs are split into calls: the tail model is
        refitted exactly when ``refresh`` outputs have been learned since the last fit
        (or, without one, as soon as there are enough to fit).
        """
        n = len(outputs)
        out = np.zeros(n)
        lo = 0
        while lo < n:
            if self._model is None or self.since_fit >= self.refresh:
                self._model = self._fit()
                self.since_fit = 0
            # Up to the next point where a refit may be due (learned values only count).
            if self._model is None:
                step = max(self.min_history - len(self.own), 1)
            else:
                step = self.refresh - self.since_fit
            chunk = outputs[lo : lo + step]
            scores = out[lo : lo + len(chunk)]
            ok = np.isfinite(chunk)
            if self._model is not None and ok.any():
                scores[ok] = np.clip(-self._model.log10_upper(chunk[ok]), 0.0, MAX_SURPRISE)
            learn = chunk[ok & (scores < self.skip_above)]
            if len(learn):
                self.own = np.concatenate((self.own, learn.astype(np.float32)))[-self.history :]
                self.since_fit += len(learn)
            lo += len(chunk)
        return out
