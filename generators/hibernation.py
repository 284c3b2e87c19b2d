"""A brown bear's yearly heart-rate curve: active summer, autumn decline, hibernation, spring rise.

The default levels and dates follow the daily heart rate of the Swedish brown bear
W1304 (2016-2017) that the original bear pipeline replayed: about 63 bpm in May and
September with a summer high of about 73 bpm at the end of July, a decline from late
September to about 45 bpm, a sharp fall at den entry (around 23 October) to about 20
bpm within a week, about 20 bpm through the winter, and a slow rise from mid-February
back to the active level in early May.

The curve is piecewise, joined by half-cosine ramps so that it is continuous and
smooth, in days of the calendar year ``doy`` (0 = 1 January):

* ``[0, rise_start)``: ``hibernation``;
* ``[rise_start, rise_start + rise_days)``: ramp up to ``active``;
* up to ``fall_start``: ``active`` plus a ``summer_peak`` bump (``sin^2``, highest midway);
* ``[fall_start, den_entry)``: ramp down to ``pre_den``;
* ``[den_entry, den_entry + entry_days)``: ramp down to ``hibernation``; then ``hibernation``.

Example:
    >>> s = Season()
    >>> [round(float(v), 1) for v in s.curve(np.array([0.0, 126.0, 194.5, 296.0, 330.0]))]
    [20.0, 63.0, 73.0, 45.0, 20.0]
    >>> s.hibernating(np.array([10.0, 200.0, 350.0])).tolist()
    [True, False, True]

"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from operators.events import BoolArray, FloatArray

__all__ = ["Season", "ramp"]

DAYS_PER_YEAR = 365.0


def ramp(x: FloatArray) -> FloatArray:
    """Half-cosine step from 0 (``x <= 0``) to 1 (``x >= 1``), flat at both ends.

    Example:
        >>> ramp(np.array([-1.0, 0.0, 0.5, 1.0, 2.0])).round(6).tolist()
        [0.0, 0.0, 0.5, 1.0, 1.0]

    """
    return 0.5 - 0.5 * np.cos(math.pi * np.clip(x, 0.0, 1.0))


@dataclass(frozen=True, slots=True)
class Season:
    """Levels (bpm) and dates (day of the year) of one bear's yearly heart-rate curve.

    Attributes:
        hibernation: Heart rate through the winter.
        active: Heart rate at the start and end of the active season.
        summer_peak: Extra heart rate at midsummer (0 at both ends of the summer).
        pre_den: Heart rate reached by the autumn decline, just before den entry.
        rise_start: Day the spring rise starts.
        rise_days: Days the spring rise takes.
        fall_start: Day the autumn decline starts.
        den_entry: Day of den entry, when the sharp fall starts.
        entry_days: Days the fall into hibernation takes.

    """

    hibernation: float = 20.0
    active: float = 63.0
    summer_peak: float = 10.0
    pre_den: float = 45.0
    rise_start: float = 41.0
    rise_days: float = 85.0
    fall_start: float = 263.0
    den_entry: float = 296.0
    entry_days: float = 7.0

    def problems(self) -> list[tuple[str, str]]:
        """What is inconsistent about these settings: ``(field, message)`` pairs (none: valid).

        Example:
            >>> [field for field, _ in Season(den_entry=250.0, entry_days=0.0).problems()]
            ['entry_days', 'den_entry']

        """
        out = []
        if not 0.0 < self.hibernation <= self.pre_den <= self.active:
            got = f"{self.hibernation}, {self.pre_den}, {self.active}"
            out.append(("pre_den", f"expected 0 < hibernation <= pre_den <= active, got {got}"))
        if self.summer_peak < 0.0:
            out.append(("summer_peak", f"expected >= 0, got {self.summer_peak}"))
        if self.rise_days <= 0.0:
            out.append(("rise_days", f"expected > 0, got {self.rise_days}"))
        if self.entry_days <= 0.0:
            out.append(("entry_days", f"expected > 0, got {self.entry_days}"))
        rise_end = self.rise_start + self.rise_days
        if not (self.rise_start >= 0.0 and rise_end < self.fall_start < self.den_entry):
            got = f"{rise_end}, {self.fall_start}, {self.den_entry}"
            out.append(
                (
                    "den_entry",
                    f"expected rise_start + rise_days < fall_start < den_entry, got {got}",
                )
            )
        if self.den_entry + self.entry_days > DAYS_PER_YEAR:
            got = f"{self.den_entry + self.entry_days}"
            out.append(("entry_days", f"expected den_entry + entry_days <= 365, got {got}"))
        return out

    def shifted(self, rise: float, fall: float, entry: float) -> Season:
        """The same season with its three dates moved by the given days, kept in order.

        Example:
            >>> Season().shifted(5.0, -3.0, 100.0).den_entry
            358.0

        """
        rise_start = float(
            np.clip(self.rise_start + rise, 0.0, self.fall_start - self.rise_days - 2)
        )
        fall_start = max(self.fall_start + fall, rise_start + self.rise_days + 1.0)
        last_entry = DAYS_PER_YEAR - self.entry_days
        den_entry = float(np.clip(self.den_entry + entry, fall_start + 1.0, last_entry))
        return replace(self, rise_start=rise_start, fall_start=fall_start, den_entry=den_entry)

    def scaled(self, active: float, hibernation: float) -> Season:
        """Active-season levels times ``active``, winter level plus ``hibernation`` bpm.

        Example:
            >>> s = Season().scaled(1.1, -2.0)
            >>> round(s.active, 2), s.hibernation
            (69.3, 18.0)

        """
        h = self.hibernation + hibernation
        return replace(
            self,
            hibernation=h,
            active=self.active * active,
            summer_peak=self.summer_peak * active,
            pre_den=max(self.pre_den * active, h),
        )

    def curve(self, doy: FloatArray) -> FloatArray:
        """Heart rate (bpm) on days of the year ``doy``."""
        d = np.asarray(doy, dtype=np.float64)
        h, a = self.hibernation, self.active
        rise_end = self.rise_start + self.rise_days
        spring = h + (a - h) * ramp((d - self.rise_start) / self.rise_days)
        summer = (
            a
            + self.summer_peak
            * np.sin(math.pi * np.clip((d - rise_end) / (self.fall_start - rise_end), 0.0, 1.0))
            ** 2
        )
        autumn = a + (self.pre_den - a) * ramp(
            (d - self.fall_start) / (self.den_entry - self.fall_start)
        )
        entry = self.pre_den + (h - self.pre_den) * ramp((d - self.den_entry) / self.entry_days)
        out = np.where(d < rise_end, spring, summer)
        out = np.where(d >= self.fall_start, autumn, out)
        return np.asarray(np.where(d >= self.den_entry, entry, out), dtype=np.float64)

    def hibernating(self, doy: FloatArray) -> BoolArray:
        """Whether days ``doy`` are in deep hibernation (the curve at its winter level)."""
        d = np.asarray(doy, dtype=np.float64)
        return np.asarray((d < self.rise_start) | (d >= self.den_entry + self.entry_days))
