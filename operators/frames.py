"""Event types of the telescope frame flow: a frame, its header, boxes and scored results.

A :class:`Frame` is one exposure: a 16-bit image (``uint16``, rows x columns)
and the header fields of the original system. Frames that a simulator made
also carry their ground truth: the boxes of injected anomalies and, for an
unusable frame, why it is unusable.

Example:
    >>> from datetime import datetime, timezone
    >>> import numpy as np
    >>> h = FrameHeader(width=4, height=3, ut=datetime(2024, 9, 1, 22, tzinfo=timezone.utc),
    ...                 object="M31", ra_deg=10.68, dec_deg=41.27, altitude_deg=62.0,
    ...                 azimuth_deg=71.0, focus=7200.0, temperature_c=11.5,
    ...                 latitude_deg=48.4, longitude_deg=8.9, weather=92.0)
    >>> f = Frame("cam1-000001", "cam1", h, np.zeros((3, 4), np.uint16))
    >>> f.target, f.shape
    ('M31', (3, 4))
    >>> Box(10, 20, 14, 30, "asteroid").area
    40

"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

PixelArray = npt.NDArray[np.uint16]
MapArray = npt.NDArray[np.float32]

#: Kinds of injected anomaly a simulator labels with a box.
ANOMALY_KINDS = ("asteroid", "satellite_trail", "hot_pixel", "hot_column", "cosmic_ray")
#: Reasons a frame is unusable (not scored, routed away with the reason).
UNUSABLE_KINDS = ("clouds", "defocus", "weather")


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The header fields of a frame (FITS keywords in the original).

    Attributes:
        width: Image width in pixels (``NAXIS1``).
        height: Image height in pixels (``NAXIS2``).
        ut: Start of the exposure, timezone-aware UTC (``DATE-OBS``).
        object: Name of the target (``OBJECT``): frames are compared only
            with references of the same target.
        ra_deg: Right ascension of the field centre, degrees.
        dec_deg: Declination of the field centre, degrees.
        altitude_deg: Altitude of the telescope, degrees above the horizon.
        azimuth_deg: Azimuth of the telescope, degrees.
        focus: Focuser position (steps).
        temperature_c: Ambient (or sensor) temperature, degrees Celsius.
        latitude_deg: Site latitude, degrees.
        longitude_deg: Site longitude, degrees.
        weather: Sky quality from the weather station, 0 (overcast, rain)
            to 100 (clear, photometric).

    """

    width: int
    height: int
    ut: datetime
    object: str
    ra_deg: float
    dec_deg: float
    altitude_deg: float
    azimuth_deg: float
    focus: float
    temperature_c: float
    latitude_deg: float
    longitude_deg: float
    weather: float


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in pixel coordinates, ``x0 <= x < x1``, ``y0 <= y < y1``.

    Attributes:
        x0: First column.
        y0: First row.
        x1: One past the last column.
        y1: One past the last row.
        kind: What is inside (an :data:`ANOMALY_KINDS` entry for ground truth,
            ``"anomaly"`` for a detected region).
        score: Peak anomaly score inside a detected box (``nan`` for ground truth).

    """

    x0: int
    y0: int
    x1: int
    y1: int
    kind: str = "anomaly"
    score: float = float("nan")

    @property
    def area(self) -> int:
        """Pixels inside the box."""
        return max(0, self.x1 - self.x0) * max(0, self.y1 - self.y0)


@dataclass(frozen=True, slots=True, eq=False)
class Frame:
    """One exposure with its header, as it crosses the steps of the frame flow.

    Attributes:
        frame_id: Stable id of the frame (camera and sequence number, or file name).
        camera: Key of the camera (the Kafka message key).
        header: The header fields.
        pixels: The image, ``uint16``, shape ``(height, width)``.
        truth: Boxes of injected anomalies when a simulator made the frame.
        unusable: Ground truth of an unusable frame (an :data:`UNUSABLE_KINDS`
            entry), ``None`` when usable or unknown.
        origin: Source topic (or ``"simulator"``, or a file path).
        partition: Source partition.
        offset: Source offset.

    """

    frame_id: str
    camera: str
    header: FrameHeader
    pixels: PixelArray
    truth: tuple[Box, ...] = ()
    unusable: str | None = None
    origin: str = ""
    partition: int = 0
    offset: int = 0

    @property
    def target(self) -> str:
        """The target the frame observes (the header's ``object``)."""
        return self.header.object

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the image."""
        h, w = self.pixels.shape
        return int(h), int(w)


@dataclass(frozen=True, slots=True, eq=False)
class ScoredFrame:
    """A frame after scoring against the memory bank.

    Attributes:
        frame: The frame.
        score: Frame score: the largest patch score (distance to the nearest
            references, in units of the calibrated patch threshold).
        threshold: The frame threshold from leave-one-out calibration.
        is_anomaly: ``score > threshold``.
        anomaly_map: Patch scores upsampled to the image, ``float32``
            ``(height, width)``.
        boxes: Boxes of the anomalous regions.
        skipped: Why the frame was not scored (unusable), else ``None``.

    """

    frame: Frame
    score: float
    threshold: float
    is_anomaly: bool
    anomaly_map: MapArray | None
    boxes: tuple[Box, ...] = field(default=())
    skipped: str | None = None
