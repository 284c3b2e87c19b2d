"""Which frames are usable: header rules and image checks against a target's references.

An unusable frame (clouds, defocus, poor weather, too low in the sky) is not
scored: comparing it with clear, focused references would only raise false
alarms. It is routed away with the reason. The header decides first (the
weather station's sky quality, the focuser position, the altitude); two
cheap image measurements then catch what the header missed:

* *signal*: the brightest stars' height above the sky (99.9th percentile
  minus the median), relative to the references': clouds dim the stars;
* *background*: the sky level (median) relative to the references': clouds
  lit by the moon or a town raise it.

Example:
    >>> from datetime import datetime, timezone
    >>> import numpy as np
    >>> from operators.frames import Frame, FrameHeader
    >>> h = FrameHeader(64, 48, datetime(2024, 9, 1, tzinfo=timezone.utc), "M31", 10.7, 41.3,
    ...                 60.0, 70.0, 7200.0, 11.0, 48.4, 8.9, weather=35.0)
    >>> f = Frame("f1", "cam1", h, np.full((48, 64), 1000, np.uint16))
    >>> unusable_reason(f, QualityRules())
    'weather: sky quality 35 below the minimum 65'

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from operators.frames import Frame, PixelArray


@dataclass(frozen=True, slots=True)
class QualityRules:
    """Limits a usable frame stays within.

    Attributes:
        min_weather: Lowest header sky quality (0-100).
        min_altitude_deg: Lowest altitude, degrees.
        focus_tolerance: Largest distance of the focuser from the references' focus (steps).
        min_signal: Lowest star signal, as a share of the references'.
        max_background: Highest sky level, as a multiple of the references'.

    """

    min_weather: float = 65.0
    min_altitude_deg: float = 15.0
    focus_tolerance: float = 60.0
    min_signal: float = 0.5
    max_background: float = 1.5

    def __post_init__(self) -> None:
        if not (0.0 <= self.min_weather <= 100.0 and self.focus_tolerance > 0.0):
            msg = (
                "quality rules: expected 0 <= min_weather <= 100 and focus_tolerance > 0, got "
                f"{self.min_weather}, {self.focus_tolerance}"
            )
            raise ValueError(msg)
        if not (0.0 <= self.min_signal < 1.0 < self.max_background):
            msg = (
                "quality rules: expected 0 <= min_signal < 1 < max_background, got "
                f"{self.min_signal}, {self.max_background}"
            )
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class ReferenceStats:
    """What a target's reference frames looked like (medians over the references).

    Attributes:
        focus: Focuser position.
        signal: Star signal (99.9th percentile minus median), counts.
        background: Sky level (median), counts.

    """

    focus: float
    signal: float
    background: float

    @classmethod
    def of(cls, frames: list[Frame]) -> ReferenceStats:
        """Medians over ``frames`` (at least one)."""
        if not frames:
            raise ValueError("reference stats: expected at least one reference frame, got none")
        measured = np.array([image_stats(f.pixels) for f in frames])
        signal, background = np.median(measured, axis=0).tolist()
        focus = float(np.median([f.header.focus for f in frames]))
        return cls(focus=focus, signal=signal, background=background)


def image_stats(pixels: PixelArray) -> tuple[float, float]:
    """``(signal, background)`` of an image; a subsample keeps it cheap.

    Example:
        >>> img = np.full((100, 100), 500, np.uint16); img[50, 50] = 9000
        >>> image_stats(img)
        (0.0, 500.0)

    """
    sample = pixels[::2, ::2].astype(np.float32)
    background, top = np.percentile(sample, [50.0, 99.9]).tolist()
    return top - background, background


def unusable_reason(
    frame: Frame, rules: QualityRules, reference: ReferenceStats | None = None
) -> str | None:
    """Why ``frame`` must not be scored, or ``None`` when it is usable.

    Header rules apply always; the focus and image checks need the target's
    ``reference`` statistics.
    """
    h = frame.header
    if h.weather < rules.min_weather:
        return f"weather: sky quality {h.weather:.0f} below the minimum {rules.min_weather:.0f}"
    if h.altitude_deg < rules.min_altitude_deg:
        return f"altitude: {h.altitude_deg:.1f} deg below the minimum {rules.min_altitude_deg:.1f}"
    if reference is None:
        return None
    off = h.focus - reference.focus
    if abs(off) > rules.focus_tolerance:
        return (
            f"defocus: focuser at {h.focus:.0f}, {off:+.0f} steps from the references' "
            f"{reference.focus:.0f} (tolerance {rules.focus_tolerance:.0f})"
        )
    signal, background = image_stats(frame.pixels)
    if reference.signal > 0.0 and signal < rules.min_signal * reference.signal:
        return (
            f"clouds: star signal {signal:.0f} is {signal / reference.signal:.2f} of the "
            f"references' {reference.signal:.0f} (minimum {rules.min_signal:.2f})"
        )
    if reference.background > 0.0 and background > rules.max_background * reference.background:
        return (
            f"clouds: sky level {background:.0f} is {background / reference.background:.1f} "
            f"times the references' {reference.background:.0f} (maximum {rules.max_background:.1f})"
        )
    return None
