"""Fuzzing the frame decode: every hostile message or file is refused with its reason, cheaply.

Beyond ``tests/unit/test_framecodec.py`` (random bytes and byte flips of two
valid messages, one PNG and one FITS bomb): every JSON field holding anything,
``ref`` paths of any text, PNG built chunk by chunk (any IHDR, corrupt or
bomb IDAT, ancillary-chunk bombs, bad CRCs), FITS built card by card (any
BITPIX, NAXIS, axes and data length) and frame files with hostile keywords
(times at the ends of the calendar, angles of 700 characters). FITS bombs
are in ``test_fits_bombs_fuzz.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

import numpy as np
import pytest
from astropy.io import fits  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from operators import frameimage
from operators.framecodec import FrameDecodeError, FrameLimits, decode_frame, read_frame_file
from operators.frameimage import decode_image
from operators.frames import ANOMALY_KINDS, UNUSABLE_KINDS
from tests.fuzz.budget import fuzz
from tests.fuzz.images import (
    FITS_PAYLOAD,
    FRAME,
    HEIGHT,
    IDAT_BOMB,
    MB,
    OBJ,
    PNG_PAYLOAD,
    WIDTH,
    Peak,
    card,
    fits_block,
    fits_files,
    ihdr,
    message,
    png,
    pngs,
    refused,
    with_header,
)
from tests.fuzz.readings import JSON_VALUES

pytestmark = pytest.mark.timeout(120)

LIMITS = FrameLimits(max_pixels=10_000)
T = TypeVar("T")


def attempt(call: Callable[[], T]) -> T | Refusal:
    """What ``call`` gives, or its refusal: only a :class:`FrameDecodeError` may escape it."""
    try:
        return call()
    except FrameDecodeError as err:
        return Refusal(str(err))


class Refusal(str):
    """The text of a :class:`FrameDecodeError`."""


# -- JSON fields ---------------------------------------------------------------------------------

HEADER_NUMBERS = [
    "ra_deg", "dec_deg", "altitude_deg", "azimuth_deg", "focus", "temperature_c",
    "latitude_deg", "longitude_deg", "weather",
]  # fmt: skip
FIELDS = [
    "frame_id", "camera", "header", "encoding", "truth", "unusable", "path", "extra",
    *(f"header.{k}" for k in ["width", "height", "ut", "object", *HEADER_NUMBERS]),
]  # fmt: skip
MISSING = object()
#: Offsets to the ends of what a ``datetime`` can hold: converting to UTC may leave the calendar.
ZONES = [
    UTC,
    timezone(timedelta(hours=14)),
    timezone(timedelta(hours=-14)),
    timezone(-timedelta(minutes=1)),
]
TIMES = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))
UT_TEXTS = (
    st.builds(lambda t, z: t.replace(tzinfo=z).isoformat(), TIMES, st.sampled_from(ZONES))
    | st.builds(lambda t: t.isoformat(), TIMES)
    | st.sampled_from(
        ["0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01", "2024-09-01T22:00:00Z"]
    )
)
BOXES = st.lists(
    st.tuples(
        st.integers(-2, WIDTH + 2), st.integers(-2, HEIGHT + 2), st.integers(-2, WIDTH + 2),
        st.integers(-2, HEIGHT + 2), st.sampled_from([*ANOMALY_KINDS, "ufo"]) | JSON_VALUES,
    ).map(list),
    max_size=4,
)  # fmt: skip
SPECIAL = st.sampled_from(
    [0, -1, 1, 2**63 - 1, 2**64 - 1, -(2**63), 1e308, -1e308, 5e-324, -0.0, "", "x" * 257,
     WIDTH, HEIGHT, "png", "fits", "ref", *UNUSABLE_KINDS, None, True, [], {}]
)  # fmt: skip


def value_for(path: str) -> st.SearchStrategy[Any]:
    any_value = st.just(MISSING) | JSON_VALUES | SPECIAL
    if path == "header.ut":
        return any_value | UT_TEXTS
    if path == "truth":
        return any_value | BOXES
    if path in ("header.width", "header.height"):
        return any_value | st.integers(0, 200)
    return any_value


def changed(path: str, value: Any) -> bytes:
    obj = {**OBJ, "header": dict(OBJ["header"])}
    *parents, last = path.split(".")
    node = obj["header"] if parents else obj
    if value is MISSING:
        node.pop(last, None)
    else:
        node[last] = value
    return message(obj, PNG_PAYLOAD)


#: What a reason may start with when ``path`` is at fault.
def allowed_faults(path: str) -> tuple[str, ...]:
    if path in ("header.width", "header.height"):
        return ("field 'header", "payload: ")
    if path == "encoding":
        return ("field 'encoding'", "payload: ", "field 'path'")
    return (f"field '{path}",)


@fuzz(300)
@given(data=st.data())
def test_any_field_holding_anything_is_decoded_or_named(data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(FIELDS), label="field")
    value = data.draw(value_for(path), label="value")
    frame = attempt(lambda: decode_frame(changed(path, value), limits=LIMITS))
    if isinstance(frame, Refusal):
        assert frame.startswith(allowed_faults(path)), (path, frame)
        return
    h = frame.header
    assert frame.pixels.shape == (h.height, h.width) == (HEIGHT, WIDTH)
    assert h.ut.tzinfo is UTC
    if path == "header.ut":
        assert h.ut == datetime.fromisoformat(value)
    elif path.removeprefix("header.") in HEADER_NUMBERS:
        assert math.isfinite(getattr(h, path.removeprefix("header.")))
    elif path in ("frame_id", "camera"):
        assert getattr(frame, path) == value


@pytest.mark.parametrize(
    "ut", ["0001-01-01T00:00:00+14:00", "0001-01-01T00:59:59+01:00", "9999-12-31T23:59:59-00:01"]
)
def test_a_header_time_that_leaves_the_calendar_in_utc_is_named(ut: str) -> None:
    reason = refused(lambda: decode_frame(changed("header.ut", ut)))
    assert reason.startswith("field 'header.ut': expected an ISO 8601 time"), reason


@pytest.fixture(scope="module")
def ref_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("refs")
    (root / "ok.png").write_bytes(PNG_PAYLOAD)
    (root / "ok.fits").write_bytes(FITS_PAYLOAD)
    (root / "bomb.png").write_bytes(png(ihdr(60_000, 60_000), IDAT_BOMB))
    (root / "dir").mkdir()
    return root


@fuzz(150)
@given(data=st.data())
def test_ref_paths_of_any_text_are_read_or_refused(ref_root: Path, data: st.DataObject) -> None:
    root = str(ref_root)
    path = data.draw(
        st.text(max_size=40)
        | st.text(max_size=40).map(lambda t: f"{root}/{t}")
        | st.sampled_from(
            [f"{root}/ok.png", f"{root}/ok.fits", f"{root}/bomb.png", f"{root}/dir", f"{root}/..",
             f"{root}/ok.png\x00", "/\x00", f"{root}/\x00/x", "/dev/zero", "/proc/self/mem", "/",
             f"{root}/../../etc/passwd", f"{root}/" + "a" * 300, "~/ok.png", ""]
        ),
        label="path",
    )  # fmt: skip
    value = message({**OBJ, "encoding": "ref", "path": path}, b"")
    limits = FrameLimits(max_pixels=10_000, ref_roots=(ref_root,))
    frame = attempt(lambda: decode_frame(value, limits=limits))
    if isinstance(frame, Refusal):
        assert frame.startswith(("field 'path'", "payload: ")), frame
        return
    assert path in (f"{root}/ok.png", f"{root}/ok.fits")
    np.testing.assert_array_equal(frame.pixels, FRAME.pixels)


# -- PNG -------------------------------------------------------------------------------------------


@fuzz(200)
@given(case=pngs())
def test_png_built_chunk_by_chunk_is_decoded_or_refused(case: tuple[bytes, int, int]) -> None:
    data, width, height = case
    whole_ihdr = len(data) >= 33 and data[8:16] == b"\x00\x00\x00\x0dIHDR"
    too_big = width * height > LIMITS.max_pixels or width == 0 or height == 0
    for colour in (False, True):
        with mock.patch.object(frameimage.Image, "open", wraps=Image.open) as opened:
            pixels = attempt(lambda: decode_image(data, LIMITS, colour=colour))  # noqa: B023
        if isinstance(pixels, Refusal):
            assert pixels.startswith("payload: "), pixels
            if whole_ihdr and too_big:
                assert f"pixels, got {width}x{height}" in pixels
                assert not opened.called, "a PNG over the limit was opened"
            continue
        assert whole_ihdr
        assert not too_big
        assert pixels.dtype == np.uint16
        assert pixels.shape == (height, width)
    value = message(with_header(max(1, min(width, 100)), max(1, min(height, 100))), data)
    frame = attempt(lambda: decode_frame(value, limits=LIMITS))
    if isinstance(frame, Refusal):
        assert frame.startswith(("payload: ", "field 'header'")), frame


@fuzz(60)
@given(
    width=st.integers(1, 2**32 - 1),
    height=st.integers(1, 2**32 - 1),
    depth=st.sampled_from([8, 16]),
    kind=st.sampled_from([0, 2, 3, 4, 6]),
)
def test_a_png_claiming_gigapixels_is_refused_unopened(
    width: int, height: int, depth: int, kind: int
) -> None:
    if width * height <= 2**26:
        width = 2**26 // height + 1
    bomb = png(ihdr(width, height, depth, kind), IDAT_BOMB)
    obj = with_header(WIDTH, HEIGHT)
    with (
        mock.patch.object(frameimage.Image, "open", side_effect=AssertionError("opened")),
        Peak() as peak,
    ):
        reason = refused(lambda: decode_frame(message(obj, bomb)))
        file_reason = refused(lambda: decode_image(bomb, colour=True))
    assert (
        reason
        == file_reason
        == (f"payload: expected an image of 1 to {2**26} pixels, got {width}x{height}")
    )
    assert peak.bytes < 4 * len(bomb) + MB


def test_a_small_png_whose_data_inflates_to_64_mb_decodes_only_its_pixels() -> None:
    # Pillow stops inflating once the rows the IHDR declares are filled.
    with Peak() as peak:
        pixels = decode_image(png(ihdr(100, 100), IDAT_BOMB))
    assert pixels.shape == (100, 100)
    assert not pixels.any()
    assert peak.bytes < 8 * MB


# -- FITS ------------------------------------------------------------------------------------------


@fuzz(200)
@given(data=fits_files())
def test_fits_built_card_by_card_is_decoded_or_refused(data: bytes) -> None:
    with Peak() as peak:
        pixels = attempt(lambda: decode_image(data, LIMITS))
    if isinstance(pixels, Refusal):
        assert pixels.startswith("payload: "), pixels
    else:
        assert pixels.dtype == np.uint16
        assert pixels.ndim == 2
        assert 1 <= pixels.size <= LIMITS.max_pixels
    assert peak.bytes < 2 * len(data) + 16 * MB


@fuzz(40)
@given(
    width=st.integers(1, 2**31 - 1),
    height=st.integers(1, 2**31 - 1),
    bitpix=st.sampled_from([8, 16, 32, 64, -32, -64]),
)
def test_a_fits_header_claiming_a_huge_image_is_refused_before_its_data(
    width: int, height: int, bitpix: int
) -> None:
    if width * height <= 2**26:
        width = 2**26 // height + 1
    head = fits_block([card("SIMPLE", "T"), card("BITPIX", bitpix), card("NAXIS", 2),
                       card("NAXIS1", width), card("NAXIS2", height)])  # fmt: skip
    bomb = head + bytes(4 * MB)
    with Peak() as peak:
        reason = refused(lambda: decode_frame(message({**OBJ, "encoding": "fits"}, bomb)))
    assert reason == f"payload: expected an image of 1 to {2**26} pixels, got {width}x{height}"
    assert peak.bytes < 2 * len(bomb) + MB


# -- frame files ----------------------------------------------------------------------------------

KEYWORDS = [
    "DATE-OBS", "TIME-OBS", "OBJECT", "RA", "OBJCTRA", "DEC", "OBJCTDEC", "OBJCTALT", "ALTITUDE",
    "CENTALT", "OBJCTAZ", "AZIMUTH", "FOCUSPOS", "FOCUS", "AMBTEMP", "TEMPERAT", "CCD-TEMP",
    "SITELAT", "SITELONG", "WEATHER",
]  # fmt: skip
KEYWORD_VALUES = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.booleans()
    | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
    | UT_TEXTS
    | st.builds(
        lambda n, s: "1" + s * n + "x", st.integers(1, 1_500), st.sampled_from([" ", ":", "1 "])
    )
)


@fuzz(80)
@given(data=st.data())
def test_frame_files_with_hostile_keywords_are_read_or_named(
    tmp_path: Path, data: st.DataObject
) -> None:
    cards = data.draw(st.dictionaries(st.sampled_from(KEYWORDS), KEYWORD_VALUES, max_size=4))
    hdu = fits.PrimaryHDU(np.zeros((3, 4), np.uint16))
    for key, value in cards.items():
        hdu.header[key] = value
    path = tmp_path / "hostile.fits"
    hdu.writeto(path, overwrite=True)
    frame = attempt(lambda: read_frame_file(path))
    if isinstance(frame, Refusal):
        if frame.startswith("payload: expected keyword strings of fewer than 16 CONTINUE"):
            assert any(isinstance(v, str) and len(v) > 15 * 67 for v in cards.values())
            return
        assert frame.startswith("keyword '"), frame
        assert frame.split("'")[1] in cards
        return
    assert frame.header.ut.tzinfo is UTC
    assert frame.pixels.shape == (3, 4)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DATE-OBS", "0001-01-01T00:00:00+14:00"),
        ("DATE-OBS", "9999-12-31T23:59:59-14:00"),
        ("OBJCTRA", "1" + " " * 700 + "x"),
        ("SITELAT", " " * 700 + "x"),
    ],
    ids=["date-before-year-1", "date-after-9999", "long-angle", "long-blank-angle"],
)
def test_frame_file_keywords_at_the_extremes_are_named(
    tmp_path: Path, key: str, value: str
) -> None:
    hdu = fits.PrimaryHDU(np.zeros((3, 4), np.uint16))
    hdu.header[key] = value
    hdu.writeto(tmp_path / "x.fits")
    assert refused(lambda: read_frame_file(tmp_path / "x.fits")).startswith(f"keyword '{key}'")


def test_a_colour_png_file_inflating_to_64_mb_decodes_only_its_pixels(tmp_path: Path) -> None:
    (tmp_path / "c.png").write_bytes(png(ihdr(50, 40, 8, 2), IDAT_BOMB))
    with Peak() as peak:
        assert read_frame_file(tmp_path / "c.png").pixels.shape == (40, 50)
    assert peak.bytes < 8 * MB
