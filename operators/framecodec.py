"""Wire format of telescope frames: a small binary envelope, a JSON header and the image.

One Kafka message holds one frame (the key is the camera id)::

    b"VGFR" | version (1 byte, 1) | n (uint32, big-endian) | n bytes of JSON (UTF-8) | payload

The JSON object is ``{"frame_id", "camera", "header", "encoding", "path",
"truth", "unusable"}``: ``header`` holds every :class:`~operators.frames.FrameHeader`
field (``ut`` as ISO 8601 with its UTC offset), ``truth`` the ground-truth
boxes as ``[x0, y0, x1, y1, kind]`` lists and ``unusable`` ``null`` or an
:data:`~operators.frames.UNUSABLE_KINDS` entry. ``encoding`` says what the
payload is: ``"png"`` a 16-bit greyscale PNG, ``"fits"`` the bytes of a FITS
file, ``"ref"`` nothing: the image is the FITS or PNG file at ``path`` on a
shared filesystem, for frames too large for Kafka's 1 MB default.

Decoding never trusts its input: every bad message raises
:class:`FrameDecodeError` naming the field, what was expected and what
arrived, and image dimensions are checked against :class:`FrameLimits` and the
header *before* any pixel is decompressed. FITS files of a user's own
telescope are read by :func:`read_frame_file` (from :mod:`operators.framefiles`;
the image bytes are :mod:`operators.frameimage`'s).

Example:
    >>> from datetime import datetime, timezone
    >>> import numpy as np
    >>> from operators.frames import Box, Frame, FrameHeader
    >>> h = FrameHeader(4, 3, datetime(2024, 9, 1, 22, tzinfo=timezone.utc), "M31", 10.68,
    ...                 41.27, 62.0, 71.0, 7200.0, 11.5, 48.4, 8.9, 92.0)
    >>> f = Frame("cam1-000001", "cam1", h, np.arange(12, dtype=np.uint16).reshape(3, 4),
    ...           truth=(Box(1, 0, 3, 2, "hot_pixel"),))
    >>> value = encode_frame(f)
    >>> value[:4], value[4]
    (b'VGFR', 1)
    >>> g = decode_frame(value)
    >>> g.header == h, g.pixels.tolist() == f.pixels.tolist(), g.truth[0].kind
    (True, True, 'hot_pixel')
    >>> decode_frame(value[:20])
    Traceback (most recent call last):
    ...
    operators.frameimage.FrameDecodeError: json: expected 348 bytes of JSON, got 11

"""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from operators.framefiles import FileDefaults, read_frame_file, write_fits
from operators.frameimage import (
    DEFAULT_LIMITS,
    FrameDecodeError,
    FrameLimits,
    bad_field,
    decode_image,
    describe,
    fits_bytes,
    png_bytes,
    read_ref,
)
from operators.frames import ANOMALY_KINDS, UNUSABLE_KINDS, Box, Frame, FrameHeader

__all__ = [
    "ENCODINGS",
    "MAGIC",
    "VERSION",
    "FileDefaults",
    "FrameDecodeError",
    "FrameLimits",
    "decode_frame",
    "encode_frame",
    "header_dict",
    "read_frame_file",
    "write_fits",
]

MAGIC = b"VGFR"
VERSION = 1
ENCODINGS = ("png", "fits", "ref")
_PREFIX = struct.Struct(">4sBI")
_MAX_TEXT = 256

# Field, check and what was expected, for the numbers of the header.
_HEADER_NUMBERS: dict[str, tuple[float, float, str]] = {
    "ra_deg": (0.0, 360.0, "a number 0-360 (degrees)"),
    "dec_deg": (-90.0, 90.0, "a number -90-90 (degrees)"),
    "altitude_deg": (-90.0, 90.0, "a number -90-90 (degrees)"),
    "azimuth_deg": (0.0, 360.0, "a number 0-360 (degrees)"),
    "focus": (-1e12, 1e12, "a finite number"),
    "temperature_c": (-273.15, 200.0, "a number -273.15-200 (degrees Celsius)"),
    "latitude_deg": (-90.0, 90.0, "a number -90-90 (degrees)"),
    "longitude_deg": (-180.0, 360.0, "a number -180-360 (degrees)"),
    "weather": (0.0, 100.0, "a number 0-100"),
}


def _text(obj: dict[str, Any], key: str, name: str, *, empty: bool = False) -> str:
    if key not in obj:
        raise FrameDecodeError(f"field '{name}'", "missing")
    value = obj[key]
    if not isinstance(value, str) or len(value) > _MAX_TEXT or (not empty and not value):
        raise bad_field(
            name, f"a {'' if empty else 'non-empty '}string of <= {_MAX_TEXT} chars", value
        )
    return value


def _number(obj: dict[str, Any], key: str, lo: float, hi: float, expected: str) -> float:
    name = f"header.{key}"
    if key not in obj:
        raise FrameDecodeError(f"field '{name}'", "missing")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad_field(name, expected, value)
    out = float(value)
    if not (math.isfinite(out) and lo <= out <= hi):
        raise bad_field(name, expected, value)
    return out


def _integer(obj: dict[str, Any], key: str, name: str, lo: int, hi: int) -> int:
    if key not in obj:
        raise FrameDecodeError(f"field '{name}'", "missing")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise bad_field(name, f"an integer {lo}-{hi}", value)
    return value


def _header(obj: Any, limits: FrameLimits) -> FrameHeader:
    if not isinstance(obj, dict):
        raise bad_field("header", "an object", obj)
    width = _integer(obj, "width", "header.width", 1, limits.max_pixels)
    height = _integer(obj, "height", "header.height", 1, limits.max_pixels)
    if width * height > limits.max_pixels:
        raise FrameDecodeError(
            "field 'header'",
            f"expected at most {limits.max_pixels} pixels, got {width}x{height}",
        )
    raw_ut = _text(obj, "ut", "header.ut")
    try:
        ut = datetime.fromisoformat(raw_ut)
    except ValueError:
        raise bad_field("header.ut", "an ISO 8601 time", raw_ut) from None
    if ut.tzinfo is None:
        raise bad_field("header.ut", "an ISO 8601 time with a UTC offset", raw_ut)
    try:
        ut = ut.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC
        expected = "an ISO 8601 time within years 1-9999 in UTC"
        raise bad_field("header.ut", expected, raw_ut) from None
    numbers = {k: _number(obj, k, lo, hi, what) for k, (lo, hi, what) in _HEADER_NUMBERS.items()}
    return FrameHeader(
        width=width,
        height=height,
        ut=ut,
        object=_text(obj, "object", "header.object"),
        **numbers,
    )


def _truth(obj: Any, header: FrameHeader, limits: FrameLimits) -> tuple[Box, ...]:
    if not isinstance(obj, list) or len(obj) > limits.max_boxes:
        raise bad_field("truth", f"a list of at most {limits.max_boxes} boxes", obj)
    boxes = []
    for i, item in enumerate(obj):
        name = f"truth[{i}]"
        if not (isinstance(item, list) and len(item) == 5):
            raise bad_field(name, "[x0, y0, x1, y1, kind]", item)
        x0, y0, x1, y1, kind = item
        coords = (x0, y0, x1, y1)
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in coords) or not (
            0 <= x0 < x1 <= header.width and 0 <= y0 < y1 <= header.height
        ):
            expected = f"integers 0 <= x0 < x1 <= {header.width}, 0 <= y0 < y1 <= {header.height}"
            raise bad_field(name, expected, item)
        if kind not in ANOMALY_KINDS:
            raise bad_field(f"{name}.kind", f"one of {ANOMALY_KINDS}", kind)
        boxes.append(Box(x0, y0, x1, y1, kind))
    return tuple(boxes)


def _prefix(value: Any, limits: FrameLimits) -> tuple[dict[str, Any], memoryview]:
    """The JSON object and the payload of a message, after the envelope checks."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise FrameDecodeError("message", f"expected bytes, got {type(value).__name__}")
    if len(value) > limits.max_message_bytes:
        msg = f"expected at most {limits.max_message_bytes} bytes, got {len(value)}"
        raise FrameDecodeError("message", msg)
    if len(value) < _PREFIX.size:
        msg = f"expected at least {_PREFIX.size} bytes (magic, version, length), got {len(value)}"
        raise FrameDecodeError("message", msg)
    magic, version, n = _PREFIX.unpack_from(value)
    if magic != MAGIC:
        raise FrameDecodeError("magic", f"expected {MAGIC!r}, got {bytes(magic)!r}")
    if version != VERSION:
        raise FrameDecodeError("version", f"expected {VERSION}, got {version}")
    if n > limits.max_json_bytes:
        raise FrameDecodeError("json", f"expected at most {limits.max_json_bytes} bytes, got {n}")
    view = memoryview(value)
    text = view[_PREFIX.size : _PREFIX.size + n]
    if len(text) < n:
        raise FrameDecodeError("json", f"expected {n} bytes of JSON, got {len(text)}")
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise FrameDecodeError(
            "json", f"expected a UTF-8 JSON object, got an error: {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise FrameDecodeError("json", f"expected an object, got {describe(obj)}")
    return obj, view[_PREFIX.size + n :]


def decode_frame(value: bytes, *, limits: FrameLimits = DEFAULT_LIMITS) -> Frame:
    """Decode one message into a :class:`~operators.frames.Frame`.

    Args:
        value: The message value.
        limits: Size limits and the folders ``"ref"`` paths may point into.

    Returns:
        The frame (``origin``, ``partition`` and ``offset`` left at their
        defaults for the caller to fill in).

    Raises:
        FrameDecodeError: for every kind of bad input, naming the field, what
            was expected and what arrived.

    """
    obj, payload = _prefix(value, limits)
    frame_id = _text(obj, "frame_id", "frame_id")
    camera = _text(obj, "camera", "camera")
    if "header" not in obj:
        raise FrameDecodeError("field 'header'", "missing")
    header = _header(obj["header"], limits)
    encoding = obj.get("encoding")
    if encoding not in ENCODINGS:
        raise bad_field("encoding", f"one of {ENCODINGS}", encoding)
    truth = _truth(obj.get("truth", []), header, limits)
    unusable = obj.get("unusable")
    if unusable is not None and unusable not in UNUSABLE_KINDS:
        raise bad_field("unusable", f"null or one of {UNUSABLE_KINDS}", unusable)
    if encoding == "ref":
        if len(payload):
            raise FrameDecodeError("payload", f"expected none for 'ref', got {len(payload)} bytes")
        data = read_ref(_text(obj, "path", "path"), limits)
    else:
        data = bytes(payload)
    pixels = decode_image(data, limits, expect=(header.width, header.height))
    return Frame(frame_id, camera, header, pixels, truth, unusable)


def header_dict(header: FrameHeader) -> dict[str, Any]:
    """The header as its JSON object: ``ut`` in ISO 8601 (UTC), numbers as Python numbers.

    Example:
        >>> from datetime import datetime, timezone
        >>> h = FrameHeader(4, 3, datetime(2024, 9, 1, 22, tzinfo=timezone.utc), "M31", 10.68,
        ...                 41.27, 62.0, 71.0, 7200.0, 11.5, 48.4, 8.9, 92.0)
        >>> header_dict(h)["ut"], header_dict(h)["weather"]
        ('2024-09-01T22:00:00+00:00', 92.0)

    """
    out: dict[str, Any] = {"width": int(header.width), "height": int(header.height)}
    out["ut"] = header.ut.astimezone(UTC).isoformat()
    out["object"] = header.object
    out.update((key, float(getattr(header, key))) for key in _HEADER_NUMBERS)
    return out


def _check_frame(frame: Frame) -> None:
    h = frame.header
    if frame.pixels.dtype != np.uint16 or frame.pixels.shape != (h.height, h.width):
        msg = (
            f"encode_frame: expected uint16 pixels of shape ({h.height}, {h.width}), "
            f"got {frame.pixels.dtype} {frame.pixels.shape}"
        )
        raise ValueError(msg)
    if h.ut.tzinfo is None:
        raise ValueError(f"encode_frame: expected a timezone-aware header.ut, got {h.ut!r}")
    for key in _HEADER_NUMBERS:
        if not math.isfinite(getattr(h, key)):
            raise ValueError(f"encode_frame: header.{key}: expected a finite number")


def encode_frame(
    frame: Frame, encoding: str = "png", *, ref_path: str | Path | None = None
) -> bytes:
    """Encode a frame as one message value (the key is ``frame.camera.encode()``).

    Args:
        frame: The frame.
        encoding: ``"png"`` or ``"fits"`` (the image travels in the message),
            or ``"ref"`` (the message names ``ref_path``, an existing FITS or
            PNG file of the same image, stored as an absolute path).
        ref_path: The file of a ``"ref"`` message.

    Raises:
        ValueError: for a bad encoding, a missing ``ref_path`` or a frame that
            could not be decoded again (pixels not ``uint16`` of the header's
            size, a naive ``ut``, a non-finite header number).

    """
    _check_frame(frame)
    obj: dict[str, Any] = {
        "frame_id": frame.frame_id,
        "camera": frame.camera,
        "header": header_dict(frame.header),
        "encoding": encoding,
    }
    if encoding == "png":
        payload = png_bytes(frame.pixels)
    elif encoding == "fits":
        payload = fits_bytes(frame)
    elif encoding == "ref":
        if ref_path is None or not Path(ref_path).is_file():
            raise ValueError(f"encode_frame: 'ref' needs an existing ref_path, got {ref_path!r}")
        obj["path"] = str(Path(ref_path).resolve())
        payload = b""
    else:
        raise ValueError(f"encode_frame: expected an encoding in {ENCODINGS}, got {encoding!r}")
    obj["truth"] = [[b.x0, b.y0, b.x1, b.y1, b.kind] for b in frame.truth]
    obj["unusable"] = frame.unusable
    text = orjson.dumps(obj)
    return _PREFIX.pack(MAGIC, VERSION, len(text)) + text + payload
