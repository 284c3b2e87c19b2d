"""Frames from image files: a user's own telescope's FITS (or PNG) files, and FITS out.

:func:`read_frame_file` maps the keywords that camera and observatory
software (MaxIm DL, N.I.N.A., SGP, ASCOM drivers) write to the fields of a
:class:`~operators.frames.FrameHeader`; the first keyword present wins:

============== ========================================================
field          keywords (then the :class:`FileDefaults` value)
============== ========================================================
width, height  ``NAXIS1``, ``NAXIS2`` (the image itself)
ut             ``DATE-OBS`` (with ``TIME-OBS`` when it holds only a date;
               UTC when it has no offset), else the file's modification time
object         ``OBJECT``
ra_deg         ``RA``, ``OBJCTRA`` (degrees, or a sexagesimal string in hours)
dec_deg        ``DEC``, ``OBJCTDEC`` (degrees, or a sexagesimal string)
altitude_deg   ``OBJCTALT``, ``ALTITUDE``, ``CENTALT``
azimuth_deg    ``OBJCTAZ``, ``AZIMUTH``, ``CENTAZ``
focus          ``FOCUSPOS``, ``FOCUS``
temperature_c  ``AMBTEMP``, ``TEMPERAT``, ``CCD-TEMP`` (ambient before sensor)
latitude_deg   ``SITELAT`` (degrees or sexagesimal)
longitude_deg  ``SITELONG`` (degrees or sexagesimal, east positive)
weather        ``WEATHER`` (0-100)
============== ========================================================

PNG files carry no keywords: every field but the size comes from
:class:`FileDefaults` (``object`` from a command-line option, say).

Example:
    >>> from datetime import datetime, timezone
    >>> import numpy as np
    >>> from operators.frames import Frame, FrameHeader
    >>> h = FrameHeader(3, 2, datetime(2024, 9, 1, 22, tzinfo=timezone.utc), "M13", 250.42,
    ...                 36.46, 70.0, 80.0, 7200.0, 9.5, 48.4, 8.9, 95.0)
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "m13.fits"
    ...     write_fits(path, Frame("f1", "cam1", h, np.ones((2, 3), np.uint16)))
    ...     f = read_frame_file(path)
    >>> f.frame_id, f.header == h, f.pixels.shape
    ('m13.fits', True, (2, 3))
    >>> parse_angle("16:41:41.6", hours=True), parse_angle("+36 27 37")
    (250.42333333333335, 36.46027777777778)

"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from operators.frameimage import (
    DEFAULT_LIMITS,
    FITS_SIGNATURE,
    PNG_SIGNATURE,
    FrameDecodeError,
    FrameLimits,
    decode_image,
    describe,
    fits_bytes,
    read_fits,
)
from operators.frames import Frame, FrameHeader

__all__ = ["FileDefaults", "parse_angle", "read_frame_file", "write_fits"]

_SEXAGESIMAL = re.compile(
    r"^\s*([+-]?)\s*(\d+(?:\.\d*)?)(?:[\s:hd°]+(\d+(?:\.\d*)?))?"
    r"(?:[\s:m']+(\d+(?:\.\d*)?))?\s*[s\"]?\s*$"
)
# Header field, keywords in order of preference, range, and whether a string is in hours.
_KEYWORDS: tuple[tuple[str, tuple[str, ...], float, float, bool], ...] = (
    ("ra_deg", ("RA", "OBJCTRA"), 0.0, 360.0, True),
    ("dec_deg", ("DEC", "OBJCTDEC"), -90.0, 90.0, False),
    ("altitude_deg", ("OBJCTALT", "ALTITUDE", "CENTALT"), -90.0, 90.0, False),
    ("azimuth_deg", ("OBJCTAZ", "AZIMUTH", "CENTAZ"), 0.0, 360.0, False),
    ("focus", ("FOCUSPOS", "FOCUS"), -1e12, 1e12, False),
    ("temperature_c", ("AMBTEMP", "TEMPERAT", "CCD-TEMP"), -273.15, 200.0, False),
    ("latitude_deg", ("SITELAT",), -90.0, 90.0, False),
    ("longitude_deg", ("SITELONG",), -180.0, 360.0, False),
    ("weather", ("WEATHER",), 0.0, 100.0, False),
)
# The keywords read, so that astropy parses no other value of a hostile header.
_WORDS = ("DATE-OBS", "TIME-OBS", "OBJECT", *(w for _, words, *_ in _KEYWORDS for w in words))


@dataclass(frozen=True, slots=True)
class FileDefaults:
    """Header values of a frame file whose keyword is missing (all of them for PNG).

    Attributes:
        object: Target name: frames are compared with references of the same target.
        ut: Start of the exposure; ``None``: the file's modification time.
        ra_deg: Right ascension, degrees.
        dec_deg: Declination, degrees.
        altitude_deg: Altitude, degrees (90: the zenith).
        azimuth_deg: Azimuth, degrees.
        focus: Focuser position.
        temperature_c: Temperature, degrees Celsius.
        latitude_deg: Site latitude, degrees.
        longitude_deg: Site longitude, degrees.
        weather: Sky quality 0-100; 100 (clear) so that a file without a
            weather station's value is taken as usable.

    """

    object: str = "unknown"
    ut: datetime | None = None
    ra_deg: float = 0.0
    dec_deg: float = 0.0
    altitude_deg: float = 90.0
    azimuth_deg: float = 0.0
    focus: float = 0.0
    temperature_c: float = 0.0
    latitude_deg: float = 0.0
    longitude_deg: float = 0.0
    weather: float = 100.0


def parse_angle(value: str | float, *, hours: bool = False) -> float:
    """Degrees from a number or a sexagesimal string (``"16:41:41.6"``, ``"+36 27 37"``).

    Args:
        value: Degrees as a number, or a string of one to three parts
            separated by spaces, colons or ``h``/``d``/``m`` letters.
        hours: A sexagesimal string is in hours (a right ascension); numbers,
            and strings of one decimal number, are always degrees.

    Raises:
        ValueError: when ``value`` is neither.

    Example:
        >>> parse_angle("10h42m44s", hours=True), parse_angle("-05:30"), parse_angle(12.5)
        (160.68333333333334, -5.5, 12.5)

    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _SEXAGESIMAL.match(str(value))
    if match is None:
        raise ValueError(f"expected degrees or a sexagesimal angle, got {value!r}")
    sign, whole, minutes, seconds = match.groups()
    if minutes is None:
        out = float(whole)
    else:
        out = float(whole) + float(minutes) / 60.0 + float(seconds or 0.0) / 3600.0
        out *= 15.0 if hours else 1.0
    return -out if sign == "-" else out


def _keyword_time(keys: dict[str, Any]) -> datetime | None:
    raw = keys.get("DATE-OBS")
    if raw is None:
        return None
    text = str(raw).strip()
    if "T" not in text and "TIME-OBS" in keys:
        text = f"{text}T{str(keys['TIME-OBS']).strip()}"
    try:
        ut = datetime.fromisoformat(text)
        return ut.replace(tzinfo=UTC) if ut.tzinfo is None else ut.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: out of years 1-9999 in UTC
        msg = f"expected an ISO 8601 time, got {describe(raw)}"
        raise FrameDecodeError("keyword 'DATE-OBS'", msg) from None


def _header_values(keys: dict[str, Any], defaults: FileDefaults) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, words, lo, hi, hours in _KEYWORDS:
        word = next((w for w in words if w in keys), None)
        if word is None:
            out[name] = getattr(defaults, name)
            continue
        raw = keys[word]
        try:
            value = parse_angle(raw, hours=hours)
        except ValueError:
            value = math.nan
        if name in ("ra_deg", "azimuth_deg") and math.isfinite(value):
            value %= 360.0
        if not (math.isfinite(value) and lo <= value <= hi):
            msg = f"expected a number {lo:g}-{hi:g}, got {describe(raw)}"
            raise FrameDecodeError(f"keyword '{word}'", msg)
        out[name] = value
    return out


def read_frame_file(
    path: str | Path,
    *,
    camera: str = "file",
    defaults: FileDefaults = FileDefaults(),
    limits: FrameLimits = DEFAULT_LIMITS,
) -> Frame:
    """A frame from a FITS or PNG file of a user's telescope (see the module docstring).

    Args:
        path: The file (FITS, also tile-compressed, or PNG; told by content, not name).
        camera: Camera id of the frame.
        defaults: Header values for missing keywords (all of them for PNG).
        limits: ``max_file_bytes`` and ``max_pixels`` bound what is read.

    Returns:
        The frame, ``frame_id`` the file's name and ``origin`` its path.

    Raises:
        FrameDecodeError: for a file that cannot be read, is not FITS or PNG,
            is too large, or has a keyword of the wrong type or range.

    """
    file = Path(path)
    try:
        stat = file.stat()
        if stat.st_size > limits.max_file_bytes:
            msg = f"expected at most {limits.max_file_bytes} bytes, got {stat.st_size}"
            raise FrameDecodeError(f"file '{file}'", msg)
        data = file.read_bytes()
    except OSError as exc:
        raise FrameDecodeError(f"file '{file}'", f"cannot be read: {exc.strerror}") from None
    keys: dict[str, Any] = {}
    if data.startswith(FITS_SIGNATURE):
        pixels, keys = read_fits(data, limits, keywords=_WORDS)
    elif data.startswith(PNG_SIGNATURE):
        pixels = decode_image(data, limits, colour=True)
    else:
        msg = f"expected a FITS or PNG file, got {data[:8]!r}"
        raise FrameDecodeError(f"file '{file}'", msg)
    ut = _keyword_time(keys) or defaults.ut or datetime.fromtimestamp(stat.st_mtime, tz=UTC)
    height, width = pixels.shape
    obj = str(keys.get("OBJECT", "")).strip() or defaults.object
    header = FrameHeader(
        width=int(width),
        height=int(height),
        ut=ut.astimezone(UTC),
        object=obj,
        **_header_values(keys, defaults),
    )
    return Frame(file.name, camera, header, pixels, origin=str(file))


def write_fits(path: str | Path, frame: Frame) -> None:
    """Write a frame as a FITS file with the keywords :func:`read_frame_file` reads first.

    The pixels are stored as ``uint16`` (``BITPIX 16``, ``BZERO 32768``); the
    ground truth is not written (the simulator keeps it in ``truth.jsonl``).

    """
    Path(path).write_bytes(fits_bytes(frame))
