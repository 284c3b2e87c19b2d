"""Fuzzing FITS bombs: tile-compressed images and headers astropy would take minutes over.

GZIP tiles that inflate to 256 MiB or hold 200,000 gzip members, tile codec
settings that crash astropy's C decoders (decoded in a child process, so that
a crash fails the test instead of ending pytest), corrupt tiles of every
codec, ``NAXIS 999999999`` and a keyword string continued over 3,000 cards:
each is refused with its reason, in bounded time and memory, and sound
tile-compressed images still decode exactly.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from operators.framecodec import decode_frame, read_frame_file
from operators.frameimage import decode_image
from tests.fuzz.budget import fuzz
from tests.fuzz.images import (
    HEIGHT,
    MB,
    OBJ,
    WIDTH,
    Peak,
    card,
    compressed_fits,
    edited,
    fits_block,
    gzip_bomb,
    long_string_fits,
    message,
    refused,
    tiled_fits,
)

pytestmark = pytest.mark.timeout(120)


BOMBS = [
    pytest.param("GZIP_1", False, id="gzip1"),
    pytest.param("GZIP_2", False, id="gzip2"),
    pytest.param("RICE_1", True, id="gzip-column-of-rice"),
]


@pytest.mark.parametrize(("compression", "gzip_column"), BOMBS)
def test_a_gzip_tile_inflating_to_256_mb_is_refused_cheaply(
    compression: str, gzip_column: bool
) -> None:
    bomb = tiled_fits(gzip_bomb(256 * MB), compression, gzip_column=gzip_column)
    assert len(bomb) < 400_000
    with Peak() as peak:
        reason = refused(lambda: decode_frame(message({**OBJ, "encoding": "fits"}, bomb)))
    assert reason.startswith("payload: expected gzip tiles of at most"), reason
    assert peak.bytes < 16 * MB


@pytest.mark.timeout(60)
def test_a_gzip_tile_of_many_empty_members_is_refused_without_quadratic_work() -> None:
    # Python's gzip copies the rest of the stream for every member: 200,000 members
    # would take hours.
    bomb = tiled_fits(gzip.compress(b"") * 200_000, "GZIP_1")
    reason = refused(lambda: decode_image(bomb))
    assert reason.startswith("payload: expected at most"), reason
    assert "gzip members" in reason


@fuzz(30)
@given(
    compression=st.sampled_from(["GZIP_1", "GZIP_2", "RICE_1", "PLIO_1", "NOCOMPRESS"]),
    shape=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    tile=st.tuples(st.integers(1, 16), st.integers(1, 16)),
    seed=st.integers(0, 2**32 - 1),
)
def test_tile_compressed_fits_still_decodes_exactly(
    compression: str, shape: tuple[int, int], tile: tuple[int, int], seed: int
) -> None:
    pixels = np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)
    if compression == "PLIO_1":
        # astropy's PLIO takes no unsigned type wider than 8 bits, and its encoder
        # corrupts the heap on values of 4096 and more (astropy 8.0.2).
        pixels = (pixels >> 4).astype(np.int32)
    np.testing.assert_array_equal(decode_image(compressed_fits(pixels, compression, tile)), pixels)


def _card_edits(data: bytes) -> Iterator[str]:
    for i in range(0, len(data) - 80, 80):
        word = data[i : i + 8].decode("ascii", "replace").strip()
        if data[i + 8 : i + 10] == b"= " and word.startswith(("Z", "NAXIS", "PCOUNT", "THEAP")):
            yield word


@st.composite
def corrupt_tiles(draw: st.DrawFn) -> bytes:
    compression = draw(st.sampled_from(["RICE_1", "PLIO_1", "GZIP_1", "GZIP_2", "HCOMPRESS_1"]))
    # astropy's PLIO encoder corrupts the heap on values of 4096 and more (quantized floats).
    plio = compression == "PLIO_1"
    dtype = draw(
        st.sampled_from(
            [np.int16, np.int32] if plio else [np.int16, np.int32, np.uint8, np.float32]
        )
    )
    shape = (draw(st.integers(2, 30)), draw(st.integers(2, 30)))
    pixels = np.random.default_rng(draw(st.integers(0, 99))).integers(0, 3000, shape).astype(dtype)
    tile = (draw(st.integers(1, shape[0])), draw(st.integers(1, shape[1])))
    if compression == "HCOMPRESS_1":
        tile = (max(tile[0], 4), max(tile[1], 4))
    try:
        good = bytearray(compressed_fits(pixels, compression, tile))
    except Exception:  # astropy refuses some settings (HCOMPRESS of tiny tiles)
        good = bytearray(compressed_fits(pixels, "RICE_1", shape))
    words = sorted(set(_card_edits(bytes(good))))
    for _ in range(draw(st.integers(1, 3))):
        if words and draw(st.booleans()):
            word = draw(st.sampled_from(words))
            values = [0, 1, -1, 2, 3, 8, 15, 16, 17, 32, -32, -64, 2**31, 10**12]
            good = bytearray(edited(bytes(good), word, draw(st.sampled_from(values))))
        else:
            at = draw(st.integers(2 * 2880, len(good) - 1))
            good[at] = draw(st.integers(0, 255))
    return bytes(good)


CHILD = """
import sys, warnings
warnings.simplefilter("ignore")
from operators.frameimage import FrameDecodeError, decode_image
for path in sys.argv[1:]:
    print(path, file=sys.stderr, flush=True)
    try:
        decode_image(open(path, "rb").read())
    except FrameDecodeError:
        pass
print("survived", len(sys.argv) - 1)
"""


def decode_in_a_child(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    """Decode files in another interpreter: a crash in a C decoder must not take pytest with it."""
    return subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths)],
        capture_output=True, text=True, timeout=90, cwd=Path(__file__).parents[2], check=False,
    )  # fmt: skip


# One example of many files, decoded in one child; no shrinking (each try costs a child).
@settings(fuzz(1), phases=[Phase.generate])
@given(st.lists(corrupt_tiles(), min_size=150, max_size=150))
def test_corrupt_tile_compressed_fits_does_not_crash_the_process(
    tmp_path: Path, files: list[bytes]
) -> None:
    paths = []
    for i, data in enumerate(files):
        paths.append(tmp_path / f"{i}.fits")
        paths[-1].write_bytes(data)
    done = decode_in_a_child(paths)
    last = done.stderr.strip().splitlines()[-1:]  # the file being decoded when it died
    assert done.returncode == 0, (done.returncode, last, done.stderr[-2000:])
    assert done.stdout.strip() == f"survived {len(files)}"


@pytest.mark.parametrize(
    ("compression", "word", "value", "reason"),
    [
        ("HCOMPRESS_1", "ZTILE2", 15, "tile compression of"),
        ("RICE_1", "ZVAL2", -64, "BYTEPIX of 1, 2, 4 or 8"),
        ("RICE_1", "ZVAL2", -1, "BYTEPIX of 1, 2, 4 or 8"),
    ],
)
def test_codec_settings_that_crash_astropy_are_refused(
    tmp_path: Path, compression: str, word: str, value: int, reason: str
) -> None:
    dtype = np.int16 if compression == "HCOMPRESS_1" else np.int32
    data = compressed_fits(np.zeros((48, 64), dtype), compression, (16, 16))
    bad = edited(data, word, value)
    (tmp_path / "bad.fits").write_bytes(bad)
    done = decode_in_a_child([tmp_path / "bad.fits"])
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert reason in refused(lambda: decode_image(bad))


@pytest.mark.timeout(30)
def test_a_keyword_string_of_thousands_of_continue_cards_is_refused_unparsed(
    tmp_path: Path,
) -> None:
    # astropy parses such a string in time growing like its length cubed: minutes.
    data = long_string_fits(3_000)
    (tmp_path / "long.fits").write_bytes(data)
    for call in (
        lambda: decode_frame(message({**OBJ, "encoding": "fits"}, data)),
        lambda: read_frame_file(tmp_path / "long.fits"),
    ):
        assert refused(call).startswith("payload: expected keyword strings of fewer than 16")
    assert decode_image(long_string_fits(12)).shape == (HEIGHT, WIDTH)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("naxis", [999_999_999, 1000, -5, 1, 4])
def test_a_fits_header_claiming_any_number_of_axes_is_refused_at_once(naxis: int) -> None:
    head = fits_block([card("SIMPLE", "T"), card("BITPIX", 16), card("NAXIS", naxis),
                       card("NAXIS1", WIDTH), card("NAXIS2", HEIGHT)])  # fmt: skip
    reason = refused(lambda: decode_image(head + bytes(2880)))
    assert reason.startswith("payload: "), reason
