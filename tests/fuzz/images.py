"""Hostile frame bytes for the fuzz tests: PNG chunks, FITS cards, tile-compressed FITS, bombs.

Everything is built here from the formats' specifications (PNG chunks with
their CRCs, FITS cards of 80 characters in blocks of 2880 bytes), so a test
can claim any size, depth or compression with only a few bytes. The checks
the frame tests share (:class:`Peak`, :func:`refused`) are here too.
"""

from __future__ import annotations

import gzip
import io
import struct
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest
from astropy.io import fits  # type: ignore[import-untyped]
from hypothesis import strategies as st

from generators.telescope import TelescopeSimConfig, iter_frames
from operators.framecodec import FrameDecodeError, encode_frame
from operators.frames import Frame

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MB = 2**20

SMALL = TelescopeSimConfig(count=1, width=24, height=16, stars=6, references=0, seed=1)
FRAME: Frame = next(iter_frames(SMALL))
WIDTH, HEIGHT = FRAME.header.width, FRAME.header.height


def split(value: bytes) -> tuple[dict[str, Any], bytes]:
    """The JSON object and the payload of a frame message."""
    n = struct.unpack(">I", value[5:9])[0]
    return orjson.loads(value[9 : 9 + n]), value[9 + n :]


def message(obj: dict[str, Any], payload: bytes) -> bytes:
    """A frame message of a JSON object and a payload."""
    text = orjson.dumps(obj)
    return b"VGFR\x01" + struct.pack(">I", len(text)) + text + payload


PNG_MESSAGE = encode_frame(FRAME, "png")
FITS_MESSAGE = encode_frame(FRAME, "fits")
OBJ, PNG_PAYLOAD = split(PNG_MESSAGE)
FITS_PAYLOAD = split(FITS_MESSAGE)[1]


def with_header(width: int, height: int) -> dict[str, Any]:
    """The message object of :data:`FRAME` with another claimed image size."""
    return {**OBJ, "header": {**OBJ["header"], "width": width, "height": height}}


# -- PNG -------------------------------------------------------------------------------------------


def chunk(kind: bytes, data: bytes, *, crc: bool = True) -> bytes:
    body = kind + data
    check = zlib.crc32(body) if crc else zlib.crc32(body) ^ 1
    return struct.pack(">I", len(data)) + body + struct.pack(">I", check)


def ihdr(width: int, height: int, depth: int = 16, kind: int = 0, *rest: int) -> bytes:
    methods = (*rest, 0, 0, 0)[:3]
    return chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, kind, *methods))


def png(header: bytes, idat: bytes, *extra: bytes) -> bytes:
    return PNG_SIGNATURE + header + b"".join(extra) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def deflate_bomb(size: int) -> bytes:
    """A zlib stream that inflates to ``size`` zero bytes (about a thousandth of that long)."""
    packer = zlib.compressobj(9)
    block = bytes(MB)
    parts = [packer.compress(block) for _ in range(size // MB)]
    return b"".join(parts) + packer.compress(bytes(size % MB)) + packer.flush()


#: Inflates to 64 MiB: far more than any image the fuzz tests' IHDRs allow.
IDAT_BOMB = deflate_bomb(64 * MB)


def gzip_bomb(size: int) -> bytes:
    """Gzip members of a MiB of zeros each, inflating to ``size`` bytes; cheap to build."""
    return gzip.compress(bytes(MB), compresslevel=9) * (size // MB)


@st.composite
def pngs(draw: st.DrawFn, max_side: int = 120) -> tuple[bytes, int, int]:
    """``(PNG bytes, claimed width, claimed height)``: valid, corrupt, bombs, odd chunks."""
    side = st.integers(0, max_side) | st.integers(0, 2**32 - 1) | st.sampled_from([1, 2**31])
    width, height = draw(side), draw(side)
    depth = draw(st.sampled_from([1, 2, 4, 8, 16]) | st.integers(0, 255))
    kind = draw(st.sampled_from([0, 0, 0, 2, 3, 4, 6]) | st.integers(0, 255))
    methods = draw(
        st.tuples(
            st.sampled_from([0, 0, 1]), st.sampled_from([0, 0, 1]), st.sampled_from([0, 0, 1, 2])
        )
    )
    header = ihdr(width, height, depth, kind, *methods)
    row = 1 + width * max(depth, 8) // 8
    fits_rows = width * height <= 40_000
    idat = draw(
        st.binary(max_size=200)
        | st.binary(max_size=200).map(zlib.compress)
        | st.just(IDAT_BOMB)
        | (
            st.builds(
                lambda filt, fill: zlib.compress(
                    (bytes([filt]) + bytes([fill]) * (row - 1)) * height
                ),
                st.integers(0, 6),
                st.integers(0, 255),
            )
            if fits_rows
            else st.just(b"")
        )
    )
    ancillary = st.sampled_from(
        [
            b"tEXt",
            b"zTXt",
            b"iTXt",
            b"iCCP",
            b"PLTE",
            b"gAMA",
            b"sBIT",
            b"tRNS",
            b"eXIf",
            b"acTL",
            b"fdAT",
            b"vpAg",
        ]
    )
    payloads = (
        st.binary(max_size=64)
        | st.just(b"k\x00\x00" + IDAT_BOMB)
        | st.just(b"icc\x00\x00" + IDAT_BOMB)
    )
    extras = draw(st.lists(st.builds(lambda k, d: chunk(k, d), ancillary, payloads), max_size=3))
    data = png(header, idat, *extras)
    if draw(st.integers(0, 9)) == 0:
        data = (
            PNG_SIGNATURE
            + chunk(b"IHDR", header[8:-4], crc=False)
            + data[len(PNG_SIGNATURE) + len(header) :]
        )
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(8, len(data)))]
    return data, width, height


# -- FITS ------------------------------------------------------------------------------------------


def card(key: str, value: object) -> str:
    return f"{key:8}= {value!s:>20}"


def fits_block(cards: list[str], *, end: bool = True) -> bytes:
    text = "".join(c[:80].ljust(80) for c in [*cards, *(["END"] if end else [])])
    return text.ljust(-(-len(text) // 2880) * 2880).encode("ascii", "replace")


CARD_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=80)
AXIS = (
    st.integers(0, 300)
    | st.integers(-(2**31), 2**63)
    | st.sampled_from(["1.5", "'a'", "T", "1E3", ""])
)


@st.composite
def fits_files(draw: st.DrawFn) -> bytes:
    """FITS bytes: any BITPIX, NAXIS and axes, scaling cards, stray cards, any amount of data."""
    bitpix = draw(
        st.sampled_from([8, 16, 32, 64, -32, -64]) | st.integers(-100, 100) | st.just("'x'")
    )
    naxis = draw(st.sampled_from([0, 1, 2, 2, 2, 3, 4]) | st.sampled_from([-1, 999, "'2'", "2.0"]))
    count = naxis if isinstance(naxis, int) and 0 <= naxis <= 4 else 2
    axes = [draw(AXIS) for _ in range(count)]
    cards = [card("SIMPLE", "T"), card("BITPIX", bitpix), card("NAXIS", naxis)]
    cards += [card(f"NAXIS{i + 1}", a) for i, a in enumerate(axes)]
    scaling = st.sampled_from(
        [
            "BZERO",
            "BSCALE",
            "BLANK",
            "EXTEND",
            "GROUPS",
            "PCOUNT",
            "GCOUNT",
            "XTENSION",
            "CONTINUE",
            "END",
        ]
    )
    values = st.integers(-(2**40), 2**40) | st.sampled_from(
        ["0", "1E308", "-1E308", "T", "F", "'IMAGE'", "''", "1.5"]
    )
    cards += draw(st.lists(st.builds(card, scaling, values) | CARD_TEXT, max_size=4))
    head = fits_block(cards, end=draw(st.integers(0, 9)) > 0)
    if draw(st.integers(0, 9)) == 0:
        head = head[: draw(st.integers(0, len(head)))]
    sizes = [a for a in axes if isinstance(a, int) and 0 < a <= 300]
    exact = (
        int(np.prod(sizes)) * (abs(bitpix) // 8 if isinstance(bitpix, int) and bitpix else 1)
        if sizes
        else 0
    )
    length = draw(
        st.sampled_from([0, exact, exact + 1, max(exact - 1, 0), 2880]) | st.integers(0, 4096)
    )
    fill = draw(st.sampled_from([b"\x00", b"\xff", b"\x7f", b"\x80"]))
    data = (
        (fill * min(length, 400_000))
        if draw(st.booleans())
        else draw(st.binary(min_size=min(length, 256), max_size=256))
    )
    return head + data


def tiled_fits(
    stream: bytes,
    compression: str = "GZIP_1",
    *,
    width: int = WIDTH,
    height: int = HEIGHT,
    gzip_column: bool = False,
) -> bytes:
    """A tile-compressed FITS image of one tile whose compressed bytes are ``stream``.

    Args:
        stream: The tile's compressed bytes.
        compression: ``ZCMPTYPE``.
        width: ``ZNAXIS1``.
        height: ``ZNAXIS2``.
        gzip_column: Put ``stream`` in the ``GZIP_COMPRESSED_DATA`` column, the
            one FITS readers inflate with gzip whatever ``ZCMPTYPE`` says.

    """
    data = np.frombuffer(stream, np.uint8)
    empty = np.zeros(0, np.uint8)
    columns = [
        fits.Column(name="COMPRESSED_DATA", format="1PB()", array=[empty if gzip_column else data])
    ]
    if gzip_column:
        columns.append(fits.Column(name="GZIP_COMPRESSED_DATA", format="1PB()", array=[data]))
    table = fits.BinTableHDU.from_columns(columns)
    for key, value in [
        ("ZIMAGE", True), ("ZBITPIX", 16), ("ZNAXIS", 2), ("ZNAXIS1", width), ("ZNAXIS2", height),
        ("ZTILE1", width), ("ZTILE2", height), ("ZCMPTYPE", compression),
    ]:  # fmt: skip
        table.header[key] = value
    out = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(out)
    return out.getvalue()


def compressed_fits(pixels: np.ndarray[Any, Any], compression: str, tile: tuple[int, int]) -> bytes:
    """A FITS file of ``pixels`` tile-compressed by astropy (what fpack-like tools write)."""
    out = io.BytesIO()
    hdu = fits.CompImageHDU(pixels, compression_type=compression, tile_shape=tile)
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(out)
    return out.getvalue()


def edited(data: bytes, word: str, value: object) -> bytes:
    """FITS bytes with the first card ``word`` given another value (the card kept 80 long)."""
    at = data.index(word.ljust(8).encode() + b"= ")
    return data[: at + 10] + str(value).rjust(20).encode() + data[at + 30 :]


def long_string_fits(cards: int) -> bytes:
    """A FITS image whose ``OBJCTRA`` is a string of blanks over ``cards`` CONTINUE cards."""
    head = [card("SIMPLE", "T"), card("BITPIX", 16), card("NAXIS", 2), card("NAXIS1", WIDTH),
            card("NAXIS2", HEIGHT), "OBJCTRA = '1" + " " * 66 + "&'"]  # fmt: skip
    head += ["CONTINUE  '" + " " * 66 + "&'"] * cards + ["CONTINUE  'x'"]
    return fits_block(head) + (FRAME.pixels >> 1).astype(">i2").tobytes().ljust(2880, b"\0")


# -- checks ------------------------------------------------------------------------------------


class Peak:
    """The most memory Python and numpy held at once inside the block (``tracemalloc``).

    Pillow's and astropy's C buffers are not traced: a PNG over the limit is
    shown unopened instead (``Image.open`` is watched).
    """

    def __init__(self) -> None:
        self.bytes = 0

    def __enter__(self) -> Peak:
        tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def refused(call: Callable[[], object]) -> str:
    with pytest.raises(FrameDecodeError) as info:
        call()
    return str(info.value)
