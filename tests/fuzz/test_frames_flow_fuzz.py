"""The real frame flow on a fuzzed mix of valid frames, corrupt bytes and bombs: counts reconcile.

Every message comes out once: as a result (here a warm-up frame: the flow
is told to collect 1,000 references, so none is scored and no model runs) or
as a dead letter from the decode step with the original bytes and a reason.
Bombs (a PNG claiming gigapixels, a FITS header claiming a huge image, a GZIP
tile of 256 MB, a keyword string of thousands of cards, codec settings that
crash astropy) are refused by the decode step, cheaply, with the reason.
"""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import event, given
from hypothesis import strategies as st

from dataflows.frames import Config, FrameSinks, build_flow
from operators.events import RawBatch
from operators.framecodec import FrameDecodeError, FrameLimits, decode_frame
from operators.framesteps import SharedPipeline
from tests.fuzz.budget import fuzz
from tests.fuzz.images import (
    FITS_MESSAGE,
    FITS_PAYLOAD,
    IDAT_BOMB,
    MB,
    OBJ,
    PNG_MESSAGE,
    PNG_PAYLOAD,
    card,
    compressed_fits,
    fits_block,
    gzip_bomb,
    ihdr,
    long_string_fits,
    message,
    png,
    tiled_fits,
    with_header,
)

pytestmark = pytest.mark.timeout(240)

PIXELS = f"payload: expected an image of 1 to {2**26} pixels"


@dataclass(frozen=True)
class Item:
    """A message and what the decode step must make of it (``None``: whatever, but once)."""

    name: str
    value: bytes | None
    fault: str | None = None
    valid: bool | None = False

    def __repr__(self) -> str:  # the bombs' bytes would make failure reports megabytes long
        size = None if self.value is None else len(self.value)
        return f"Item({self.name!r}, {size} bytes, {self.value and self.value[:40]!r})"


def fits_message(payload: bytes) -> bytes:
    return message({**OBJ, "encoding": "fits"}, payload)


def hostile(root: Path) -> list[Item]:
    """Bad messages of every kind, each with the start of the reason that must refuse it."""
    # Tiles that crash astropy's C decoders (HCOMPRESS with a smaller ZTILE, RICE with a
    # negative BYTEPIX) go to a child process in test_frame_decode_fuzz.py: in this
    # process a regression would take pytest with it. A sound HCOMPRESS image is here.
    hcompress = compressed_fits(np.zeros((16, 24), np.int16), "HCOMPRESS_1", (16, 24))
    huge_fits = fits_block([card("SIMPLE", "T"), card("BITPIX", -64), card("NAXIS", 2),
                            card("NAXIS1", 60_000), card("NAXIS2", 60_000)])  # fmt: skip
    many_axes = fits_block([card("SIMPLE", "T"), card("BITPIX", 16), card("NAXIS", 999_999_999)])
    ref = {**OBJ, "encoding": "ref"}
    ut = {**OBJ, "header": {**OBJ["header"], "ut": "0001-01-01T00:00:00+14:00"}}
    weather = {**OBJ, "header": {**OBJ["header"], "weather": "NaN"}}
    return [
        Item("tombstone", None, "value: expected a frame message, got a tombstone"),
        Item("empty", b"", "message: expected at least 9 bytes"),
        Item("not a frame", b"GIF89a" + bytes(100), "magic: expected b'VGFR'"),
        Item("truncated", PNG_MESSAGE[:-40], "payload: expected a valid PNG"),
        Item("cut in the json", PNG_MESSAGE[:60], "json: expected"),
        Item("png gigapixels", message(OBJ, png(ihdr(60_000, 60_000), IDAT_BOMB)), PIXELS),
        Item("png 4 Gi wide", message(OBJ, png(ihdr(2**32 - 1, 1), IDAT_BOMB)), PIXELS),
        Item("fits 60000x60000", fits_message(huge_fits + bytes(MB)), PIXELS),
        Item("gzip tile bomb", fits_message(tiled_fits(gzip_bomb(256 * MB))),
             "payload: expected gzip"),
        Item("gzip members", fits_message(tiled_fits(gzip.compress(b"") * 50_000)),
             "payload: expected at most"),
        Item("hcompress", fits_message(hcompress), "payload: expected a tile compression"),
        Item("continue cards", fits_message(long_string_fits(3_000)), "payload: expected keyword"),
        Item("naxis 999999999", fits_message(many_axes + bytes(2880)), "payload: expected NAXIS"),
        Item("ut out of the calendar", message(ut, PNG_PAYLOAD), "field 'header.ut'"),
        Item("header lies about size", message(with_header(25, 16), PNG_PAYLOAD),
             "payload: expected the header's 25x16"),
        Item("ref with a NUL", message({**ref, "path": f"{root}/ok\x00"}, b""), "field 'path'"),
        Item("ref outside", message({**ref, "path": "/etc/hostname"}, b""), "field 'path'"),
        Item("ref to a bomb", message({**ref, "path": f"{root}/bomb.png"}, b""), PIXELS),
        Item("weather as text", message(weather, PNG_PAYLOAD), "field 'header.weather'"),
    ]  # fmt: skip


def valid(root: Path) -> list[Item]:
    ref = message({**OBJ, "encoding": "ref", "path": f"{root}/ok.fits"}, b"")
    return [
        Item("png", PNG_MESSAGE, valid=True),
        Item("fits", FITS_MESSAGE, valid=True),
        Item("ref", ref, valid=True),
    ]


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> Item:
    """A valid message with a few bytes flipped, cut or added: valid or not, it comes out once."""
    value = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(value) - 1))
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        if kind == "flip":
            value[at] ^= draw(st.integers(1, 255))
        elif kind == "cut":
            del value[at:]
            if not value:
                break
        else:
            value[at:at] = bytes([draw(st.integers(0, 255))])
    return Item("mutated", bytes(value), None, None)


@dataclass
class Flow:
    root: Path
    cfg: Config
    pipeline: SharedPipeline
    items: list[Item]


@pytest.fixture(scope="module")
def frames_flow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flow]:
    """One pipeline (random model, Milvus Lite) for every example; 1,000 references: no scoring."""
    tmp = tmp_path_factory.mktemp("frames")
    root = tmp / "refs"
    root.mkdir()
    (root / "ok.fits").write_bytes(FITS_PAYLOAD)
    (root / "bomb.png").write_bytes(png(ihdr(60_000, 60_000), IDAT_BOMB))
    cfg = Config(
        references=1000, model="random", milvus_uri=str(tmp / "bank.db"), out_dir=tmp,
        ref_roots=(root,),
    )  # fmt: skip
    pipeline = SharedPipeline(cfg.open_pipeline)
    try:
        yield Flow(root, cfg, pipeline, valid(root) + hostile(root))
    finally:
        pipeline.close()


def run_and_check(
    frames_flow: Flow, items: list[Item], keys: list[bytes | None], size: int
) -> None:
    """Run the flow on ``items`` in batches of ``size``; in = results + dead letters, each right."""
    batches = []
    for i in range(0, len(items), size):
        part = items[i : i + size]
        offsets = tuple(range(i, i + len(part)))
        values = tuple(it.value for it in part)
        batches.append(
            RawBatch("frames", i // size % 2, tuple(keys[i : i + size]), values, offsets)
        )
    results: list[tuple[bytes, bytes]] = []
    dead: list[tuple[bytes | None, bytes]] = []
    sinks = FrameSinks(TestingSink([]), TestingSink(results), TestingSink(dead), None)
    flow = build_flow(
        frames_flow.cfg, source=TestingSource(batches), sinks=sinks, pipeline=frames_flow.pipeline
    )
    run_main(flow)

    # in = ok + dead letters
    assert len(results) + len(dead) == len(items)
    records = {orjson.loads(v)["offset"]: (k, orjson.loads(v)) for k, v in dead}
    assert len(records) == len(dead), "a message was dead-lettered twice"
    limits = FrameLimits(ref_roots=(frames_flow.root,))
    for offset, item in enumerate(items):
        decodes = item.valid
        if decodes is None:  # a mutation: the verdict is decode_frame's own
            try:
                decode_frame(item.value, limits=limits)  # type: ignore[arg-type]
                decodes = True
            except FrameDecodeError:
                decodes = False
        assert (offset not in records) == decodes, (item.name, records.get(offset))
        if offset not in records:
            continue
        key, record = records[offset]
        assert key == keys[offset]
        assert record["step"] == "decode"
        assert record["reason"], item.name
        if item.fault is not None:
            assert record["reason"].startswith(item.fault), (item.name, record["reason"])
        original = None if item.value is None else base64.b64encode(item.value).decode()
        assert record["value_b64"] == original, "the dead letter lost the original bytes"
    for _, value in results:
        result = orjson.loads(value)
        assert result["skipped"].startswith("reference: warm-up frame")
        assert result["camera"] == OBJ["camera"]
    return len(results), len(dead)


def test_every_bomb_and_valid_frame_through_the_flow(frames_flow: Flow) -> None:
    items = frames_flow.items
    assert run_and_check(frames_flow, items, [b"cam1"] * len(items), 4) == (3, len(items) - 3)


@fuzz(40)
@given(data=st.data())
def test_every_frame_message_is_a_result_or_a_dead_letter_with_its_reason(
    frames_flow: Flow, data: st.DataObject
) -> None:
    good = st.sampled_from([it for it in frames_flow.items if it.valid])
    bad = st.sampled_from([it for it in frames_flow.items if not it.valid])
    anything = st.builds(lambda b: Item("bytes", b, None, None), st.binary(max_size=300))
    flips = mutated(PNG_MESSAGE) | mutated(FITS_MESSAGE)
    mix = good | bad | flips | anything
    items = data.draw(st.lists(mix, min_size=1, max_size=16), label="items")
    keys = data.draw(st.lists(st.none() | st.binary(max_size=6), min_size=len(items)))
    ok, dead = run_and_check(frames_flow, items, keys[: len(items)], data.draw(st.integers(1, 5)))
    event(f"results: {'some' if ok else 'none'}, dead letters: {'some' if dead else 'none'}")
