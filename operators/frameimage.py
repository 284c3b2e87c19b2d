"""Image bytes of telescope frames: 16-bit PNG and FITS, with limits checked before decoding.

:func:`decode_image` reads the dimensions from the PNG ``IHDR`` chunk or the
FITS ``NAXIS`` keywords and refuses an image larger than
:attr:`FrameLimits.max_pixels` (or of another size than expected) *before*
any pixel is decompressed, so a tiny file that claims 60000x60000 pixels costs
nothing. Every failure is a :class:`FrameDecodeError`.

Example:
    >>> import numpy as np
    >>> data = png_bytes(np.array([[0, 65535]], np.uint16))
    >>> decode_image(data).tolist()
    [[0, 65535]]
    >>> decode_image(data, FrameLimits(max_pixels=1))
    Traceback (most recent call last):
    ...
    operators.frameimage.FrameDecodeError: payload: expected an image of 1 to 1 pixels, got 2x1

"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from operators.frames import Frame, PixelArray

__all__ = [
    "DEFAULT_LIMITS",
    "FITS_SIGNATURE",
    "PNG_SIGNATURE",
    "FrameDecodeError",
    "FrameLimits",
    "bad_field",
    "decode_image",
    "describe",
    "fits_bytes",
    "fits_cards",
    "png_bytes",
    "read_fits",
    "read_ref",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FITS_SIGNATURE = b"SIMPLE  ="
# zlib level 1: a 650x500 frame in ~17 ms; level 6 saves 7% for 10x the time.
PNG_LEVEL = 1
# Headers astropy would take minutes to read, found in the raw bytes first: it
# parses a string continued over n CONTINUE cards in time growing like n**3
# (3,000 cards: minutes), and loops over NAXIS, ZNAXIS and TFIELDS, which the
# FITS standard caps at 999, whatever they claim.
_SLOW_HEADERS = (
    (
        re.compile(rb"CONTINUE(?:.{72}CONTINUE){15}", re.DOTALL),
        "expected keyword strings of fewer than 16 CONTINUE cards, got more",
    ),
    (re.compile(rb"NAXIS *= *\+?0*[1-9][0-9]{3}"), "expected NAXIS of at most 999, got more"),
    (re.compile(rb"TFIELDS *= *\+?0*[1-9][0-9]{3}"), "expected TFIELDS of at most 999, got more"),
)
#: Tile compressions whose astropy decoders stay in bounds on hostile tiles.
_TILE_COMPRESSIONS = ("RICE_1", "RICE_ONE", "PLIO_1", "GZIP_1", "GZIP_2", "NOCOMPRESS")
# Python's gzip copies the rest of a stream for every member: quadratic.
_GZIP_MEMBERS = 4
_INFLATE_STEP = 2**20


class FrameDecodeError(ValueError):
    """A message or file that is not a valid frame.

    Args:
        field: What is at fault (``"field 'header.weather'"``, ``"magic"``, ``"payload"``).
        detail: What was expected and what arrived.

    Attributes:
        field: What is at fault.
        detail: What was expected and what arrived.

    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


@dataclass(frozen=True, slots=True)
class FrameLimits:
    """What decoding accepts, so that no message or file can exhaust memory.

    Attributes:
        max_message_bytes: Largest message (a larger one is refused unread).
        max_json_bytes: Largest JSON header.
        max_pixels: Largest image, ``width * height``, checked from the PNG
            ``IHDR`` chunk or the FITS ``NAXIS`` keywords before decoding.
        max_boxes: Most ground-truth boxes.
        max_file_bytes: Largest file a ``"ref"`` message may point at.
        ref_roots: Folders that ``"ref"`` paths must lie under (after symbolic
            links are resolved); empty: references are refused.

    """

    max_message_bytes: int = 16 * 2**20
    max_json_bytes: int = 2**20
    max_pixels: int = 64 * 2**20
    max_boxes: int = 10_000
    max_file_bytes: int = 512 * 2**20
    ref_roots: tuple[Path, ...] = ()


#: The limits used when none are given.
DEFAULT_LIMITS = FrameLimits()


def describe(value: Any) -> str:
    """A value for an error message: its type and a shortened ``repr``.

    Example:
        >>> describe("cloudy")
        "str 'cloudy'"

    """
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def bad_field(name: str, expected: str, value: Any) -> FrameDecodeError:
    """The error of a field that is not what was expected.

    Example:
        >>> str(bad_field("header.weather", "a number 0-100", "cloudy"))
        "field 'header.weather': expected a number 0-100, got str 'cloudy'"

    """
    return FrameDecodeError(f"field '{name}'", f"expected {expected}, got {describe(value)}")


def read_ref(path: str, limits: FrameLimits) -> bytes:
    """The bytes of the file a ``"ref"`` message names.

    The path must be absolute, exist, resolve (symbolic links followed) to a
    regular file under one of ``limits.ref_roots`` and hold at most
    ``limits.max_file_bytes``.

    Raises:
        FrameDecodeError: naming the field ``path`` and why it was refused.

    """
    if not limits.ref_roots:
        msg = f"expected no file reference (FrameLimits.ref_roots is empty), got {describe(path)}"
        raise FrameDecodeError("field 'path'", msg)
    target = Path(path)
    if not target.is_absolute():
        raise bad_field("path", "an absolute path", path)
    try:
        resolved = target.resolve(strict=True)
    except (OSError, RuntimeError, ValueError):  # ValueError: a NUL byte in the path
        raise bad_field("path", "an existing file", path) from None
    roots = [Path(r).resolve() for r in limits.ref_roots]
    if not any(resolved.is_relative_to(r) for r in roots):
        raise bad_field("path", f"a file under {[str(r) for r in roots]}", path)
    try:
        if not resolved.is_file():
            raise bad_field("path", "a regular file", path)
        size = resolved.stat().st_size
        if size > limits.max_file_bytes:
            raise bad_field(
                "path", f"a file of at most {limits.max_file_bytes} bytes ({size})", path
            )
        return resolved.read_bytes()
    except OSError as exc:
        raise bad_field("path", f"a readable file ({exc.strerror})", path) from None


def decode_image(
    data: bytes,
    limits: FrameLimits = DEFAULT_LIMITS,
    *,
    expect: tuple[int, int] | None = None,
    colour: bool = False,
) -> PixelArray:
    """The ``uint16`` pixels of PNG or FITS bytes, dimensions checked before decoding.

    PNG: 8- or 16-bit greyscale (8-bit values are kept, 0-255); with ``colour``
    also colour or palette images, converted to 8-bit grey. FITS: the first
    HDU with a 2-D image (a third axis of length 1 is dropped), integer or
    float data with ``BZERO``/``BSCALE`` applied, then rounded and clipped to
    0-65535 (``NaN`` becomes 0).

    Args:
        data: The file's bytes.
        limits: ``max_pixels`` bounds ``width * height``.
        expect: ``(width, height)`` the image must have.
        colour: Accept colour PNG (files of a user's camera, not the wire).

    Raises:
        FrameDecodeError: naming what is wrong.

    Example:
        >>> decode_image(png_bytes(np.full((2, 3), 7, np.uint16))).tolist()
        [[7, 7, 7], [7, 7, 7]]

    """
    if data.startswith(PNG_SIGNATURE):
        return _decode_png(data, limits, expect, colour)
    if data.startswith(FITS_SIGNATURE):
        return read_fits(data, limits, expect, keywords=())[0]
    raise FrameDecodeError("payload", f"expected PNG or FITS bytes, got {bytes(data[:8])!r}")


def _check_size(
    width: int, height: int, limits: FrameLimits, expect: tuple[int, int] | None
) -> None:
    if width < 1 or height < 1 or width * height > limits.max_pixels:
        msg = f"expected an image of 1 to {limits.max_pixels} pixels, got {width}x{height}"
        raise FrameDecodeError("payload", msg)
    if expect is not None and (width, height) != expect:
        msg = f"expected the header's {expect[0]}x{expect[1]} image, got {width}x{height}"
        raise FrameDecodeError("payload", msg)


def _decode_png(
    data: bytes, limits: FrameLimits, expect: tuple[int, int] | None, colour: bool
) -> PixelArray:
    # IHDR is the first chunk: length 13, type, width, height, bit depth, colour type.
    if len(data) < 33 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        raise FrameDecodeError("payload", "expected a PNG IHDR chunk, got a truncated PNG")
    width, height, depth, kind = struct.unpack(">IIBB", data[16:26])
    _check_size(width, height, limits, expect)
    grey = kind == 0 and depth in (8, 16)
    if not grey and not (colour and kind in (2, 3, 4, 6) and depth <= 8):
        expected = "8- or 16-bit greyscale" + (", or 8-bit colour" if colour else "")
        msg = f"expected a {expected} PNG, got bit depth {depth}, colour type {kind}"
        raise FrameDecodeError("payload", msg)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data), formats=["PNG"])
            image.load()
            array = np.asarray(image if grey else image.convert("L"))
    except Exception as exc:  # Pillow raises many kinds on corrupt data
        raise FrameDecodeError("payload", f"expected a valid PNG, got {exc!r:.120}") from None
    if array.shape != (height, width):
        msg = f"expected a {width}x{height} image, got shape {array.shape}"
        raise FrameDecodeError("payload", msg)
    if array.dtype == np.uint16:
        return array.copy()
    return np.clip(array.astype(np.int64), 0, 65535).astype(np.uint16)


def _fits() -> Any:
    try:
        from astropy.io import fits  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - astropy is a dependency
        raise ImportError("FITS needs astropy: pip install astropy") from exc
    return fits


def read_fits(
    data: bytes,
    limits: FrameLimits = DEFAULT_LIMITS,
    expect: tuple[int, int] | None = None,
    keywords: Collection[str] | None = None,
) -> tuple[PixelArray, dict[str, Any]]:
    """The pixels and keywords of the first 2-D image HDU of FITS bytes.

    A tile-compressed image is checked before astropy decodes it (see
    :func:`_check_tiles`).

    Args:
        data: The FITS file's bytes.
        limits: ``max_pixels`` bounds ``NAXIS1 * NAXIS2`` (checked before reading data).
        expect: ``(width, height)`` the image must have.
        keywords: The keywords to read (``None``: every one); only these values are parsed.

    Returns:
        The ``uint16`` pixels (see :func:`decode_image`) and the keywords of
        that HDU (``COMMENT``, ``HISTORY`` and blank cards left out).

    Raises:
        FrameDecodeError: naming what is wrong.

    """
    for pattern, refusal in _SLOW_HEADERS:
        if pattern.search(data):
            raise FrameDecodeError("payload", refusal)
    fits = _fits()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=True) as hdus:
                found = (
                    (i, h) for i, h in enumerate(hdus) if h.is_image and h.header.get("NAXIS", 0)
                )
                index, hdu = next(found, (-1, None))
                if hdu is None:
                    raise FrameDecodeError("payload", "expected a FITS image HDU, got none")
                head = hdu.header
                count = int(head["NAXIS"])
                if count not in (2, 3):
                    msg = f"expected a 2-D image (NAXIS 2), got NAXIS {count}"
                    raise FrameDecodeError("payload", msg)
                naxis = [int(head.get(f"NAXIS{i}", 0)) for i in range(1, count + 1)]
                if len(naxis) == 3 and naxis[2] != 1:
                    msg = f"expected a 2-D image (NAXIS 2), got axes {naxis}"
                    raise FrameDecodeError("payload", msg)
                _check_size(naxis[0], naxis[1], limits, expect)
                if isinstance(hdu, fits.CompImageHDU):
                    _check_tiles(data, index, naxis[0] * naxis[1])
                pairs = (
                    head.items()
                    if keywords is None
                    else [(k, head[k]) for k in keywords if k in head]
                )
                keys = {
                    str(k): v
                    for k, v in pairs
                    if k and k not in ("COMMENT", "HISTORY") and isinstance(v, str | int | float)
                }
                array = np.asarray(hdu.data).reshape(naxis[1], naxis[0])
                if array.dtype == np.uint16:
                    return array.copy(), keys
                floats = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=65535.0)
                return np.clip(np.rint(floats), 0, 65535).astype(np.uint16), keys
    except FrameDecodeError:
        raise
    except Exception as exc:  # astropy raises many kinds on corrupt data
        raise FrameDecodeError("payload", f"expected a valid FITS file, got {exc!r:.120}") from None


def _check_tiles(data: bytes, index: int, pixels: int) -> None:
    """Refuse a tile-compressed image that astropy's decoders would not take safely or cheaply.

    The compressed table is read as it is (``disable_image_compression``): the
    compression must be one of :data:`_TILE_COMPRESSIONS` (astropy's HCOMPRESS
    decoder writes as many pixels as the tile's stream claims, past the
    buffer of a smaller tile), RICE's ``BYTEPIX`` 1, 2, 4 or 8 (others crash
    its decoder), and the GZIP tiles must inflate to at most 8 bytes a pixel
    in all (astropy inflates each tile whole, so a few kilobytes could claim
    gigabytes), counted here in bounded steps.
    """
    fits = _fits()
    raw = io.BytesIO(data)
    with fits.open(raw, memmap=False, lazy_load_hdus=True, disable_image_compression=True) as hdus:
        table = hdus[index]
        kind = table.header.get("ZCMPTYPE")
        if kind not in _TILE_COMPRESSIONS:
            msg = f"expected a tile compression of {_TILE_COMPRESSIONS}, got {describe(kind)}"
            raise FrameDecodeError("payload", msg)
        bytepix = _tile_setting(table.header, "BYTEPIX", 4)
        if kind.startswith("RICE") and (isinstance(bytepix, bool) or bytepix not in (1, 2, 4, 8)):
            msg = f"expected a RICE BYTEPIX of 1, 2, 4 or 8, got {describe(bytepix)}"
            raise FrameDecodeError("payload", msg)
        gzipped = ["GZIP_COMPRESSED_DATA"]
        if kind.startswith("GZIP"):
            gzipped.append("COMPRESSED_DATA")
        budget = 8 * pixels  # BITPIX -64, the widest pixel
        for name in gzipped:
            if name not in table.columns.names:
                continue
            for tile in table.data[name]:
                stream = np.asarray(tile)
                big_endian = stream.astype(stream.dtype.newbyteorder(">"), copy=False)
                budget -= _inflated_size(big_endian.tobytes(), budget)
                if budget < 0:
                    msg = f"expected gzip tiles of at most {8 * pixels} bytes in all, got more"
                    raise FrameDecodeError("payload", msg)


def _tile_setting(header: Any, name: str, default: Any) -> Any:
    """A tile compression setting: the ``ZVALn`` of the ``ZNAMEn`` called ``name``."""
    for i in range(1, 1000):
        label = header.get(f"ZNAME{i}")
        if label is None:
            break
        if isinstance(label, str) and label.lower() == name.lower():
            return header.get(f"ZVAL{i}")
    return default


def _inflated_size(stream: bytes, limit: int) -> int:
    """Bytes the gzip members of ``stream`` inflate to, counted in steps until past ``limit``.

    A truncated stream is counted as far as it goes and a corrupt one raises
    ``zlib.error`` (astropy would refuse either). More than :data:`_GZIP_MEMBERS`
    members are refused: Python's ``gzip`` copies the rest of the stream for each.
    """
    total = 0
    for _ in range(_GZIP_MEMBERS):
        inflater = zlib.decompressobj(wbits=31)
        rest = stream
        while not inflater.eof and total <= limit:
            out = inflater.decompress(rest, _INFLATE_STEP)
            rest = inflater.unconsumed_tail
            total += len(out)
            if not (out or rest or inflater.eof):  # truncated
                return total
        stream = inflater.unused_data.lstrip(b"\x00")
        if not inflater.eof or not stream:
            return total
    msg = f"expected at most {_GZIP_MEMBERS} gzip members in a tile, got more"
    raise FrameDecodeError("payload", msg)


def png_bytes(pixels: PixelArray, level: int = PNG_LEVEL) -> bytes:
    """A 16-bit greyscale PNG of ``pixels`` (lossless).

    Example:
        >>> png_bytes(np.zeros((2, 2), np.uint16))[:8] == PNG_SIGNATURE
        True

    """
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint16)).save(
        buf, format="PNG", compress_level=level
    )
    return buf.getvalue()


def fits_cards(frame: Frame) -> list[tuple[str, Any, str]]:
    """The FITS keywords of a frame's header: ``(keyword, value, comment)``.

    ``DATE-OBS`` is UTC without an offset, as FITS has it; the other keywords
    are those :func:`operators.framefiles.read_frame_file` reads first.

    """
    h = frame.header
    ut = h.ut.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")
    return [
        ("DATE-OBS", ut, "start of exposure, UTC"),
        ("OBJECT", h.object, "target"),
        ("RA", h.ra_deg, "right ascension of the field centre, deg"),
        ("DEC", h.dec_deg, "declination of the field centre, deg"),
        ("OBJCTALT", h.altitude_deg, "altitude, deg"),
        ("OBJCTAZ", h.azimuth_deg, "azimuth, deg"),
        ("FOCUSPOS", h.focus, "focuser position, steps"),
        ("AMBTEMP", h.temperature_c, "ambient temperature, C"),
        ("SITELAT", h.latitude_deg, "site latitude, deg"),
        ("SITELONG", h.longitude_deg, "site longitude, deg"),
        ("WEATHER", h.weather, "sky quality 0 (overcast) to 100 (clear)"),
        ("INSTRUME", frame.camera[:68], "camera"),
        ("FRAMEID", frame.frame_id[:68], "frame id"),
    ]


def fits_bytes(frame: Frame) -> bytes:
    """The FITS file of a frame: ``uint16`` pixels and the keywords of :func:`fits_cards`.

    Example:
        >>> from datetime import datetime, timezone
        >>> from operators.frames import FrameHeader
        >>> h = FrameHeader(3, 2, datetime(2024, 9, 1, tzinfo=timezone.utc), "M13", 250.4,
        ...                 36.5, 70.0, 80.0, 7200.0, 9.0, 48.4, 8.9, 95.0)
        >>> data = fits_bytes(Frame("f1", "cam1", h, np.ones((2, 3), np.uint16)))
        >>> data[:9] == FITS_SIGNATURE, len(data) % 2880, decode_image(data).tolist()
        (True, 0, [[1, 1, 1], [1, 1, 1]])

    """
    fits = _fits()
    hdu = fits.PrimaryHDU(data=np.ascontiguousarray(frame.pixels, dtype=np.uint16))
    for key, value, comment in fits_cards(frame):
        hdu.header[key] = (value, comment)
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()
