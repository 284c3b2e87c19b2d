"""The frame wire format, its image bytes and frame files: round trips and every bad input."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from astropy.io import fits  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from generators.telescope import TelescopeSimConfig, iter_frames, iter_messages
from operators import frameimage
from operators.framecodec import (
    FileDefaults,
    FrameDecodeError,
    FrameLimits,
    decode_frame,
    encode_frame,
    read_frame_file,
    write_fits,
)
from operators.frameimage import decode_image, fits_bytes, png_bytes
from operators.frames import Box, Frame, FrameHeader

pytestmark = pytest.mark.timeout(120)

UT = datetime(2024, 9, 1, 22, 15, 30, 250_000, tzinfo=UTC)
HEADER = FrameHeader(
    width=40, height=30, ut=UT, object="M31", ra_deg=10.684, dec_deg=41.269, altitude_deg=62.5,
    azimuth_deg=71.25, focus=7203.0, temperature_c=11.5, latitude_deg=48.4, longitude_deg=8.9,
    weather=92.5,
)  # fmt: skip


def make_frame(**changes: Any) -> Frame:
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    pixels[0, :2] = (0, 65535)
    truth = (Box(1, 2, 5, 9, "asteroid"), Box(30, 0, 31, 30, "hot_column"))
    frame = Frame("cam1-000007", "cam1", HEADER, pixels, truth=truth)
    return replace(frame, **changes)


def assert_same(got: Frame, want: Frame) -> None:
    assert (got.frame_id, got.camera, got.header) == (want.frame_id, want.camera, want.header)
    assert got.pixels.dtype == np.uint16
    np.testing.assert_array_equal(got.pixels, want.pixels)
    assert [(b.x0, b.y0, b.x1, b.y1, b.kind) for b in got.truth] == [
        (b.x0, b.y0, b.x1, b.y1, b.kind) for b in want.truth
    ]
    assert got.unusable == want.unusable


def split(value: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack(">I", value[5:9])[0]
    return orjson.loads(value[9 : 9 + n]), value[9 + n :]


def join(obj: dict[str, Any], payload: bytes) -> bytes:
    text = orjson.dumps(obj)
    return b"VGFR\x01" + struct.pack(">I", len(text)) + text + payload


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["png", "fits"])
def test_round_trip_is_bit_exact(encoding: str) -> None:
    frame = make_frame(unusable="clouds")
    value = encode_frame(frame, encoding)
    assert value[:5] == b"VGFR\x01"
    assert_same(decode_frame(value), frame)


def test_ref_round_trip_reads_the_file_under_an_allowed_root(tmp_path: Path) -> None:
    frame = make_frame()
    path = tmp_path / "f.fits"
    write_fits(path, frame)
    value = encode_frame(frame, "ref", ref_path=path)
    obj, payload = split(value)
    assert (obj["encoding"], obj["path"], payload) == ("ref", str(path.resolve()), b"")
    assert_same(decode_frame(value, limits=FrameLimits(ref_roots=(tmp_path,))), frame)
    png = tmp_path / "f.png"
    png.write_bytes(png_bytes(frame.pixels))
    got = decode_frame(
        encode_frame(frame, "ref", ref_path=png), limits=FrameLimits(ref_roots=(tmp_path,))
    )
    assert_same(got, frame)


def test_simulated_frames_round_trip_and_a_650x500_png_message_is_under_1_mb() -> None:
    cfg = TelescopeSimConfig(count=6, references=2, seed=3)
    for frame, (key, value) in zip(iter_frames(cfg), iter_messages(cfg), strict=True):
        assert key == b"cam1"
        assert len(value) < 1_000_000
        assert_same(decode_frame(value), frame)
    hubble = replace(cfg, fields=("hubble",), count=2)
    assert all(len(v) < 1_000_000 for _, v in iter_messages(hubble))


def test_ut_with_another_offset_decodes_to_utc() -> None:
    obj, payload = split(encode_frame(make_frame()))
    obj["header"]["ut"] = "2024-09-02T00:15:30.25+02:00"
    assert decode_frame(join(obj, payload)).header.ut == UT
    assert decode_frame(join(obj, payload)).header.ut.tzinfo is UTC


def test_8_bit_png_and_scaled_or_float_fits_become_uint16() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 7, 255]], np.uint8)).save(buf, format="PNG")
    assert decode_image(buf.getvalue()).tolist() == [[0, 7, 255]]
    hdu = fits.PrimaryHDU(np.array([[-3.4, 10.5, np.nan, 70000.2]], np.float32))
    out = io.BytesIO()
    hdu.writeto(out)
    assert decode_image(out.getvalue()).tolist() == [[0, 10, 0, 65535]]
    scaled = fits.PrimaryHDU(np.array([[0, 100]], np.int16))
    scaled.header["BSCALE"], scaled.header["BZERO"] = 2.0, 10.0
    out = io.BytesIO()
    scaled.writeto(out)
    assert decode_image(out.getvalue()).tolist() == [[10, 210]]


def test_encode_refuses_frames_it_could_not_decode() -> None:
    with pytest.raises(ValueError, match="uint16 pixels of shape"):
        encode_frame(make_frame(pixels=np.zeros((30, 41), np.uint16)))
    with pytest.raises(ValueError, match="weather"):
        encode_frame(make_frame(header=replace(HEADER, weather=float("nan"))))
    with pytest.raises(ValueError, match="timezone-aware"):
        encode_frame(make_frame(header=replace(HEADER, ut=UT.replace(tzinfo=None))))
    with pytest.raises(ValueError, match="ref_path"):
        encode_frame(make_frame(), "ref")
    with pytest.raises(ValueError, match="encoding"):
        encode_frame(make_frame(), "jpeg")


# -- bad input ------------------------------------------------------------------------------

VALUE = encode_frame(make_frame())
OBJ, PAYLOAD = split(VALUE)


def changed(path: str, value: Any) -> bytes:
    obj = orjson.loads(orjson.dumps(OBJ))
    *parents, last = path.split(".")
    node = obj
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return join(obj, PAYLOAD)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "message: expected at least 9 bytes"),
        (b"\x89PNG\r\n\x1a\n" + VALUE[8:], "magic: expected b'VGFR', got b'\\x89PNG'"),
        (b"VGFR\x02" + VALUE[5:], "version: expected 1, got 2"),
        (VALUE[:40], "json: expected"),
        (b"VGFR\x01" + struct.pack(">I", 3) + b"\xff\xfe{", "json: expected a UTF-8 JSON object"),
        (b"VGFR\x01" + struct.pack(">I", 5) + b"{nope", "json: expected a UTF-8 JSON object"),
        (b"VGFR\x01" + struct.pack(">I", 2) + b"[]", "json: expected an object, got list []"),
        (b"VGFR\x01" + struct.pack(">I", 10) + b'{"a": NaN}', "json: expected a UTF-8 JSON"),
        (b"VGFR\x01" + struct.pack(">I", 11) + b'{"a": 1e400}', "json: expected a UTF-8 JSON"),
        (b"VGFR\x01" + struct.pack(">I", 2**31), "json: expected at most 1048576 bytes"),
        (changed("header.weather", "cloudy"),
         "field 'header.weather': expected a number 0-100, got str 'cloudy'"),
        (changed("header.weather", 150), "'header.weather': expected a number 0-100, got int 150"),
        (changed("header.width", True), "field 'header.width': expected an integer"),
        (changed("header.width", 40.0), "field 'header.width': expected an integer"),
        (changed("header.height", KeyError), "field 'header.height': missing"),
        (changed("header.ut", "2024-09-01T22:15:30"), "with a UTC offset, got str"),
        (changed("header.ut", "tuesday"), "field 'header.ut': expected an ISO 8601 time"),
        (changed("header.object", ""), "field 'header.object': expected a non-empty string"),
        (changed("header.dec_deg", -91), "field 'header.dec_deg': expected a number -90-90"),
        (changed("header", [1]), "field 'header': expected an object, got list"),
        (changed("header", KeyError), "field 'header': missing"),
        (changed("frame_id", 7), "field 'frame_id': expected a non-empty string"),
        (changed("camera", KeyError), "field 'camera': missing"),
        (changed("encoding", "jpeg"), "field 'encoding': expected one of ('png', 'fits', 'ref')"),
        (changed("truth", [[0, 0, 41, 2, "asteroid"]]), "field 'truth[0]': expected integers"),
        (changed("truth", [[0, 0, 1]]), "field 'truth[0]': expected [x0, y0, x1, y1, kind]"),
        (changed("truth", [[0, 0, 1, 1, "ufo"]]), "field 'truth[0].kind': expected one of"),
        (changed("truth", {"a": 1}), "field 'truth': expected a list"),
        (changed("unusable", "fog"), "field 'unusable': expected null or one of"),
        (changed("header.width", 41), "payload: expected the header's 41x30 image, got 40x30"),
        (join(OBJ, b"GIF89a"), "payload: expected PNG or FITS bytes, got b'GIF89a'"),
        (join(OBJ, PAYLOAD[:20]), "payload: expected a PNG IHDR chunk"),
        (join(OBJ, PAYLOAD[:200]), "payload: expected a valid PNG"),
        (join(OBJ, PAYLOAD[:60] + bytes(len(PAYLOAD) - 60)), "payload: expected a valid PNG"),
        (join({**OBJ, "encoding": "ref"}, b""), "field 'path': missing"),
    ],
)  # fmt: skip
def test_bad_messages_raise_frame_decode_error_with_the_reason(value: bytes, reason: str) -> None:
    with pytest.raises(FrameDecodeError) as info:
        decode_frame(value, limits=FrameLimits(ref_roots=(Path("/nonexistent"),)))
    assert reason in str(info.value)


def test_limits_on_message_size_and_pixels() -> None:
    with pytest.raises(FrameDecodeError, match="message: expected at most 100 bytes"):
        decode_frame(VALUE, limits=FrameLimits(max_message_bytes=100))
    with pytest.raises(FrameDecodeError, match="expected at most 1000 pixels, got 40x30"):
        decode_frame(VALUE, limits=FrameLimits(max_pixels=1000))
    with pytest.raises(FrameDecodeError, match="truth"):
        decode_frame(VALUE, limits=FrameLimits(max_boxes=1))


def colour_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_colour_png_is_refused_on_the_wire_but_read_from_a_file(tmp_path: Path) -> None:
    with pytest.raises(FrameDecodeError, match="8- or 16-bit greyscale PNG, got bit depth 8"):
        decode_frame(join(OBJ, colour_png()))
    (tmp_path / "c.png").write_bytes(colour_png())
    frame = read_frame_file(tmp_path / "c.png")
    assert frame.pixels.shape == (30, 40)
    assert frame.pixels.dtype == np.uint16


def png_bomb(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (its data is one zlib stream of zeros)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    idat = zlib.compress(bytes(1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_bomb_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the PNG was opened")

    monkeypatch.setattr(frameimage.Image, "open", never)
    bomb = png_bomb(60_000, 60_000)
    assert len(bomb) < 200
    with pytest.raises(FrameDecodeError, match="1 to 67108864 pixels, got 60000x60000"):
        decode_frame(join(OBJ, bomb))
    with pytest.raises(FrameDecodeError, match="1 to 1000000 pixels, got 8000x8000"):
        decode_image(png_bomb(8000, 8000), FrameLimits(max_pixels=1_000_000))


def fits_bomb(width: int, height: int) -> bytes:
    cards = [
        f"{'SIMPLE':8}= {'T':>20}", f"{'BITPIX':8}= {16:>20}", f"{'NAXIS':8}= {2:>20}",
        f"{'NAXIS1':8}= {width:>20}", f"{'NAXIS2':8}= {height:>20}", "END",
    ]  # fmt: skip
    return "".join(c.ljust(80) for c in cards).ljust(2880).encode() + bytes(2880)


def test_fits_bomb_and_wrong_size_are_refused_before_reading_data() -> None:
    with pytest.raises(FrameDecodeError, match="1 to 67108864 pixels, got 60000x60000"):
        decode_image(fits_bomb(60_000, 60_000))
    with pytest.raises(FrameDecodeError, match="header's 40x30 image, got 41x30"):
        decode_frame(join({**OBJ, "encoding": "fits"}, fits_bomb(41, 30)))


def test_corrupt_or_truncated_fits_raises_frame_decode_error() -> None:
    good = fits_bytes(make_frame())
    obj = {**OBJ, "encoding": "fits"}
    for bad in (good[:3000], good[:100], good.replace(b"NAXIS   =", b"NAXIS   ='x'")):
        with pytest.raises(FrameDecodeError, match="payload"):
            decode_frame(join(obj, bad))
    cube = fits.PrimaryHDU(np.zeros((2, 30, 40), np.uint16))
    out = io.BytesIO()
    cube.writeto(out)
    with pytest.raises(FrameDecodeError, match=r"2-D image \(NAXIS 2\), got axes \[40, 30, 2\]"):
        decode_frame(join(obj, out.getvalue()))


def test_refs_are_checked_before_reading(tmp_path: Path) -> None:
    root, outside = tmp_path / "shared", tmp_path / "private"
    root.mkdir()
    outside.mkdir()
    frame = make_frame()
    write_fits(root / "ok.fits", frame)
    write_fits(outside / "secret.fits", frame)
    (root / "link.fits").symlink_to(outside / "secret.fits")
    limits = FrameLimits(ref_roots=(root,))

    def ref(path: str) -> bytes:
        return join({**OBJ, "encoding": "ref", "path": path}, b"")

    assert_same(decode_frame(ref(str(root / "ok.fits")), limits=limits), frame)
    cases = [
        (ref(str(root / "ok.fits")), FrameLimits(), "ref_roots is empty"),
        (ref(str(root / "missing.fits")), limits, "expected an existing file"),
        (ref(str(outside / "secret.fits")), limits, "expected a file under"),
        (ref(str(root / "link.fits")), limits, "expected a file under"),
        (ref(str(root / ".." / "private" / "secret.fits")), limits, "expected a file under"),
        (ref("ok.fits"), limits, "expected an absolute path"),
        (ref(str(root)), limits, "expected a regular file"),
        (join({**OBJ, "encoding": "ref", "path": str(root / "ok.fits")}, b"x"), limits,
         "payload: expected none for 'ref', got 1 bytes"),
        (ref(str(root / "ok.fits")), replace(limits, max_file_bytes=100), "at most 100 bytes"),
    ]  # fmt: skip
    for value, lim, reason in cases:
        with pytest.raises(FrameDecodeError) as info:
            decode_frame(value, limits=lim)
        assert reason in str(info.value)


# -- only FrameDecodeError, whatever arrives --------------------------------------------------

SMALL_CFG = TelescopeSimConfig(count=1, width=24, height=16, stars=6, references=0, seed=1)
SMALL_FRAME = next(iter_frames(SMALL_CFG))
VALID = [encode_frame(SMALL_FRAME, "png"), encode_frame(SMALL_FRAME, "fits")]
FUZZ = settings(
    max_examples=400, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip


def decode_or_error(value: bytes) -> None:
    try:
        frame = decode_frame(value, limits=FrameLimits(max_pixels=10_000))
    except FrameDecodeError:
        return
    assert frame.pixels.shape == (frame.header.height, frame.header.width)


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_only_raise_frame_decode_error(value: bytes) -> None:
    decode_or_error(value)
    decode_or_error(b"VGFR\x01" + value)


@FUZZ
@given(
    which=st.sampled_from([0, 1]),
    edits=st.lists(
        st.tuples(st.sampled_from(["flip", "cut", "insert"]), st.integers(0, 10**6),
                  st.integers(0, 255)),
        min_size=1, max_size=4,
    ),
)  # fmt: skip
def test_mutated_messages_only_raise_frame_decode_error(
    which: int, edits: list[tuple[str, int, int]]
) -> None:
    value = bytearray(VALID[which])
    for kind, at, byte in edits:
        i = at % max(len(value), 1)
        if kind == "flip" and value:
            value[i] ^= byte or 1
        elif kind == "cut":
            del value[i:]
        else:
            value[i:i] = bytes([byte])
    decode_or_error(bytes(value))


# -- frame files --------------------------------------------------------------------------------


def write_raw_fits(path: Path, data: np.ndarray[Any, Any], cards: dict[str, Any]) -> None:
    hdu = fits.PrimaryHDU(data)
    for key, value in cards.items():
        hdu.header[key] = value
    hdu.writeto(path)


def test_write_fits_and_read_frame_file_round_trip(tmp_path: Path) -> None:
    frame = make_frame()
    write_fits(tmp_path / "a.fits", frame)
    got = read_frame_file(tmp_path / "a.fits", camera="scope")
    assert (got.frame_id, got.camera, got.origin) == ("a.fits", "scope", str(tmp_path / "a.fits"))
    assert got.header == frame.header
    np.testing.assert_array_equal(got.pixels, frame.pixels)


def test_read_frame_file_maps_other_software_keywords(tmp_path: Path) -> None:
    path = tmp_path / "maxim.fit"
    cards = {
        "DATE-OBS": "2024-09-01", "TIME-OBS": "22:15:30.25", "OBJECT": "M 13  ",
        "OBJCTRA": "16 41 41.6", "OBJCTDEC": "+36 27 37", "ALTITUDE": 70.5, "AZIMUTH": -10.0,
        "FOCUS": 7100, "CCD-TEMP": -10.0, "TEMPERAT": 8.5, "SITELAT": "48 24 00",
        "SITELONG": "-8:54:00",
    }  # fmt: skip
    write_raw_fits(path, np.full((3, 5), 1234.0, np.float32), cards)
    f = read_frame_file(path)
    h = f.header
    assert (h.width, h.height, h.object) == (5, 3, "M 13")
    assert h.ut == UT
    assert h.ra_deg == pytest.approx(250.42333, abs=1e-4)
    assert h.dec_deg == pytest.approx(36.46028, abs=1e-4)
    assert (h.altitude_deg, h.azimuth_deg, h.focus) == (70.5, 350.0, 7100.0)
    assert h.temperature_c == 8.5  # ambient before the sensor's
    assert (h.latitude_deg, h.longitude_deg) == (pytest.approx(48.4), pytest.approx(-8.9))
    assert h.weather == FileDefaults().weather
    assert f.pixels.tolist() == [[1234] * 5] * 3


def test_missing_keywords_take_the_defaults_and_png_takes_them_all(tmp_path: Path) -> None:
    write_raw_fits(tmp_path / "bare.fits", np.zeros((4, 6), np.uint16), {})
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    defaults = FileDefaults(object="NGC 7000", ut=when, weather=80.0, focus=12.0)
    f = read_frame_file(tmp_path / "bare.fits", defaults=defaults)
    assert (f.header.object, f.header.ut, f.header.weather, f.header.focus) == (
        "NGC 7000", when, 80.0, 12.0,
    )  # fmt: skip
    assert f.header.ut.tzinfo is UTC
    (tmp_path / "p.png").write_bytes(png_bytes(np.full((4, 6), 9, np.uint16)))
    p = read_frame_file(tmp_path / "p.png", defaults=defaults)
    assert (p.header.width, p.header.height, p.header.object) == (6, 4, "NGC 7000")
    mtime = read_frame_file(tmp_path / "p.png").header.ut
    assert mtime.tzinfo is UTC
    assert abs(mtime - datetime.now(UTC)) < timedelta(hours=1)


@pytest.mark.parametrize(
    ("cards", "reason"),
    [
        ({"WEATHER": 120}, "keyword 'WEATHER': expected a number 0-100, got int 120"),
        ({"OBJCTDEC": "north"}, "keyword 'OBJCTDEC': expected a number -90-90, got str 'north'"),
        ({"DATE-OBS": "01/09/24"}, "keyword 'DATE-OBS': expected an ISO 8601 time"),
        ({"SITELAT": 95.0}, "keyword 'SITELAT'"),
    ],
)
def test_bad_keywords_name_the_keyword(tmp_path: Path, cards: dict[str, Any], reason: str) -> None:
    write_raw_fits(tmp_path / "bad.fits", np.zeros((2, 2), np.uint16), cards)
    with pytest.raises(FrameDecodeError) as info:
        read_frame_file(tmp_path / "bad.fits")
    assert reason in str(info.value)


def test_files_that_are_not_frames(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FrameDecodeError, match="expected a FITS or PNG file"):
        read_frame_file(tmp_path / "notes.txt")
    with pytest.raises(FrameDecodeError, match="cannot be read"):
        read_frame_file(tmp_path / "missing.fits")
    write_fits(tmp_path / "big.fits", make_frame())
    with pytest.raises(FrameDecodeError, match="at most 10 bytes"):
        read_frame_file(tmp_path / "big.fits", limits=FrameLimits(max_file_bytes=10))


def test_tile_compressed_fits_is_read(tmp_path: Path) -> None:
    pixels = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(pixels)]).writeto(tmp_path / "c.fits.fz")
    frame = read_frame_file(tmp_path / "c.fits.fz")
    np.testing.assert_array_equal(frame.pixels, pixels)
    assert (frame.header.width, frame.header.height) == (64, 48)
