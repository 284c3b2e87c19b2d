"""The telescope frame simulator, its in-process source and vigil-generate frames."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from generators.cli import main
from generators.frame_source import FrameSimulatorSource
from generators.simkit import SimConfigError
from generators.skyfield import base_path
from generators.source import partition_of
from generators.telescope import FrameStream, TelescopeSimConfig, iter_frames, iter_messages
from operators.config import ConfigError, Env
from operators.events import RawBatch
from operators.framecodec import FrameLimits, decode_frame, read_frame_file
from operators.frames import ANOMALY_KINDS, UNUSABLE_KINDS, Frame

pytestmark = pytest.mark.timeout(120)

# Small frames and high probabilities, so that a short stream holds every case.
NO_ANOMALIES = {f"{k}_prob": 0.0 for k in ANOMALY_KINDS}
BUSY = TelescopeSimConfig(
    count=60, width=160, height=120, stars=60, references=5, seed=7, asteroid_prob=0.3,
    satellite_trail_prob=0.2, hot_pixel_prob=0.2, hot_column_prob=0.2, cosmic_ray_prob=0.3,
    clouds_prob=0.1, defocus_prob=0.1, weather_prob=0.1,
)  # fmt: skip


def clean_twin(cfg: TelescopeSimConfig) -> TelescopeSimConfig:
    return replace(cfg, **NO_ANOMALIES)


# -- generation ---------------------------------------------------------------------------


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    cfg = replace(BUSY, count=8)
    first = list(iter_messages(cfg))
    assert len(first) == 8
    assert first == list(iter_messages(cfg))
    assert list(iter_messages(cfg, "fits")) == list(iter_messages(cfg, "fits"))
    other = list(iter_messages(replace(cfg, seed=8)))
    assert all(a != b for a, b in zip(first, other, strict=True))


def test_frames_decode_to_themselves_in_event_time_order() -> None:
    cfg = replace(BUSY, count=9, cameras=("north", "south", "east"), interval_s=60.0)
    frames = list(iter_frames(cfg))
    assert [f.camera for f in frames] == ["north", "south", "east"] * 3
    assert [f.frame_id for f in frames[:4]] == [
        "north-000000", "south-000000", "east-000000", "north-000001",
    ]  # fmt: skip
    assert [f.header.ut for f in frames[::3]] == [
        cfg.start + timedelta(minutes=i) for i in range(3)
    ]
    for frame, (key, value) in zip(frames, iter_messages(cfg), strict=True):
        assert key == frame.camera.encode()
        back = decode_frame(value)
        assert back.header == frame.header
        np.testing.assert_array_equal(back.pixels, frame.pixels)
        assert back.truth == frame.truth


def test_a_camera_does_not_depend_on_how_many_cameras_there_are() -> None:
    two = [f for f in iter_frames(replace(BUSY, count=8, cameras=("a", "b"))) if f.camera == "b"]
    three = iter_frames(replace(BUSY, count=12, cameras=("a", "b", "c")))
    for f, g in zip(two, [f for f in three if f.camera == "b"], strict=True):
        assert f.header == g.header
        assert f.truth == g.truth
        np.testing.assert_array_equal(f.pixels, g.pixels)


def test_realistic_levels() -> None:
    cfg = TelescopeSimConfig(count=1, references=1)
    [frame] = iter_frames(cfg)
    sky = cfg.bias + cfg.sky_rate * cfg.exposure_s / cfg.gain
    assert abs(float(np.median(frame.pixels)) - sky) < 15
    assert int(frame.pixels.max()) > sky + 100 * cfg.sky_sigma / cfg.gain  # bright stars
    # The noise of an empty sky in ADU (from neighbours' differences, free of the gradient).
    [empty] = iter_frames(replace(cfg, stars=0))
    pairs = np.diff(empty.pixels.astype(np.float64), axis=1) / np.sqrt(2.0)
    noise = float(np.median(np.abs(pairs))) * 1.4826
    assert noise == pytest.approx(cfg.sky_sigma / cfg.gain, rel=0.05)
    # 16 bits saturate: at a gain of 0.1 e-/ADU the brightest stars clip at 65535.
    [clipped] = iter_frames(replace(cfg, gain=0.1))
    assert int(clipped.pixels.max()) == 65535


def test_boxes_lie_inside_the_frame_and_every_kind_is_injected() -> None:
    kinds: Counter[str] = Counter()
    for frame in iter_frames(BUSY):
        for b in frame.truth:
            assert 0 <= b.x0 < b.x1 <= BUSY.width
            assert 0 <= b.y0 < b.y1 <= BUSY.height
            kinds[b.kind] += 1
    assert set(kinds) == set(ANOMALY_KINDS)


def test_anomalies_change_only_the_pixels_inside_their_boxes() -> None:
    sigma_adu = BUSY.sky_sigma / BUSY.gain
    checked: Counter[str] = Counter()
    for frame, clean in zip(iter_frames(BUSY), iter_frames(clean_twin(BUSY)), strict=True):
        assert frame.header == clean.header
        diff = frame.pixels.astype(np.int64) - clean.pixels.astype(np.int64)
        inside = np.zeros(diff.shape, bool)
        for b in frame.truth:
            inside[b.y0 : b.y1, b.x0 : b.x1] = True
            box = diff[b.y0 : b.y1, b.x0 : b.x1]
            lo = getattr(BUSY, f"{b.kind}_snr")[0]
            # The injected signal: the box's pixels exceed the clean render's.
            assert (box >= 0).all()
            assert box.max() >= 0.5 * lo * sigma_adu
            checked[b.kind] += 1
        assert not diff[~inside].any()
    assert set(checked) == set(ANOMALY_KINDS)


def test_amplitudes_are_faint_not_beacons() -> None:
    cfg = replace(BUSY, asteroid_prob=1.0, asteroid_snr=(3.0, 3.0), count=30)
    sigma_adu = cfg.sky_sigma / cfg.gain
    peaks = []
    for frame, clean in zip(iter_frames(cfg), iter_frames(clean_twin(cfg)), strict=True):
        for b in frame.truth:
            if b.kind == "asteroid":
                d = frame.pixels.astype(np.int64) - clean.pixels.astype(np.int64)
                peaks.append(int(d[b.y0 : b.y1, b.x0 : b.x1].max()))
    assert peaks
    # A 3-sigma asteroid peaks at about 3 sky sigmas above its background, no more.
    assert 2.0 * sigma_adu < np.median(peaks) < 4.5 * sigma_adu


def test_an_asteroid_moves_between_consecutive_frames() -> None:
    steady = {"asteroid_speed": (3.0, 3.0), "asteroid_len": (6, 6)}
    usable = {f"{k}_prob": 0.0 for k in UNUSABLE_KINDS}
    cfg = replace(BUSY, asteroid_prob=1.0, **steady, **usable)  # type: ignore[arg-type]
    centres = []
    for frame in iter_frames(replace(cfg, count=12)):
        [box] = [b for b in frame.truth if b.kind == "asteroid"] or [None]
        centres.append(None if box is None else ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2))
    steps = [
        np.hypot(b[0] - a[0], b[1] - a[1])
        for a, b in itertools.pairwise(centres)
        if a is not None and b is not None
    ]
    assert len(steps) >= 3
    # 3 pixels a frame, plus the tracking shift and the clipping of boxes at the edges.
    assert 1.0 < float(np.median(steps)) < 5.0


def test_reference_frames_come_first_clean_and_usable() -> None:
    cfg = replace(BUSY, cameras=("a", "b"), targets=("M31", "M13"), sequence_len=4, count=60)
    seen: Counter[tuple[str, str]] = Counter()
    later = 0
    for frame in iter_frames(cfg):
        key = (frame.camera, frame.target)
        if seen[key] < cfg.references:
            assert frame.truth == ()
            assert frame.unusable is None
            assert frame.header.weather >= 75
            assert abs(frame.header.focus - cfg.nominal_focus) < 20
        else:
            later += bool(frame.truth or frame.unusable)
        seen[key] += 1
    assert set(seen) == {(c, t) for c in "ab" for t in ("M31", "M13")}
    assert later > 10


def test_unusable_frames_carry_the_cue_in_their_header() -> None:
    cfg = replace(BUSY, count=120, clouds_prob=0.2, defocus_prob=0.2, weather_prob=0.2)
    by_kind: dict[str | None, list[Frame]] = defaultdict(list)
    for frame in iter_frames(cfg):
        by_kind[frame.unusable].append(frame)
    assert set(by_kind) == {None, *UNUSABLE_KINDS}
    for f in by_kind[None]:
        assert f.header.weather >= 75
        assert abs(f.header.focus - cfg.nominal_focus) < 20
    for f in by_kind["clouds"]:
        assert 20 <= f.header.weather <= 60
    for f in by_kind["weather"]:
        assert f.header.weather <= 35
    for f in by_kind["defocus"]:
        assert abs(f.header.focus - cfg.nominal_focus) >= 150
    assert all(f.truth == () for kind in UNUSABLE_KINDS for f in by_kind[kind])
    # Clouds brighten the sky; a defocused star spreads its light (a lower peak).
    sky = np.median([np.median(f.pixels) for f in by_kind[None]])
    assert np.median([np.median(f.pixels) for f in by_kind["clouds"]]) > sky * 1.1
    peak = np.median([np.percentile(f.pixels, 99.9) for f in by_kind[None]])
    assert np.median([np.percentile(f.pixels, 99.9) for f in by_kind["defocus"]]) < peak


def test_tracking_shifts_move_the_stars_and_the_header_pointing() -> None:
    cfg = replace(clean_twin(BUSY), tracking_std=1.0, count=8, stars=80, references=8)
    stream = FrameStream(cfg)
    plans = list(stream.plans)
    stars = stream.skies[0].stars
    assert stars is not None
    bright = np.argsort(stars.rate)[-4:]
    ys, xs = np.mgrid[-3:4, -3:4]
    measured = 0
    for plan in plans:
        pixels = stream.frame(plan).pixels.astype(np.float64)
        sky = np.median(pixels)
        for j in bright:
            # A star at sky (x, y) lands on pixel (x - dx, y - dy).
            x, y = stars.x[j] - plan.offset[0], stars.y[j] - plan.offset[1]
            xi, yi = round(x), round(y)
            if 3 <= xi < cfg.width - 3 and 3 <= yi < cfg.height - 3:
                win = pixels[yi - 3 : yi + 4, xi - 3 : xi + 4] - sky
                assert xi + (win * xs).sum() / win.sum() == pytest.approx(x, abs=0.3)
                assert yi + (win * ys).sum() / win.sum() == pytest.approx(y, abs=0.3)
                measured += 1
    assert measured >= 2 * len(plans)
    offsets = np.array([p.offset for p in plans])
    steps = np.abs(np.diff(offsets, axis=0)).max(axis=1)
    assert 0.2 < float(np.median(steps)) < 3.0  # sub-pixel to a few pixels a frame
    assert float(np.abs(offsets).max()) < 8.0
    pointing = {(p.header.ra_deg, p.header.dec_deg) for p in plans}
    assert len(pointing) == len(plans)


@pytest.mark.parametrize("field", ["m13", "hubble"])
def test_real_fields_ship_in_packages_and_render(field: str) -> None:
    assert base_path(field).is_file()
    cfg = replace(BUSY, fields=(field,), count=3, width=200, height=150)
    frames = list(iter_frames(cfg))
    assert frames[0].pixels.shape == (150, 200)
    spread = np.percentile(frames[0].pixels, 99.5) - np.median(frames[0].pixels)
    assert spread > 20 * cfg.sky_sigma / cfg.gain
    assert not np.array_equal(frames[0].pixels, frames[1].pixels)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"fields": ("mars",)}, "fields"),
        ({"fields": ("m13", "hubble")}, "fields"),
        ({"cameras": ()}, "cameras"),
        ({"cameras": ("a", "a")}, "cameras"),
        ({"width": 8}, "width"),
        ({"asteroid_prob": 1.5}, "asteroid_prob"),
        ({"clouds_prob": 0.6, "weather_prob": 0.6}, "clouds_prob"),
        ({"asteroid_snr": (5.0, 2.0)}, "asteroid_snr"),
        ({"seeing_fwhm": (0.0, 3.0)}, "seeing_fwhm"),
        ({"cosmic_ray_count": (0, 2)}, "cosmic_ray_count"),
        ({"start": datetime(2024, 1, 1)}, "start"),
        ({"interval_s": 0.0}, "interval_s"),
        ({"defocus_steps": (100.0, 5000.0)}, "defocus_steps"),
    ],
)
def test_validate_names_the_field(change: dict[str, Any], field: str) -> None:
    cfg = replace(TelescopeSimConfig(), **change)
    with pytest.raises(SimConfigError) as info:
        cfg.validate()
    assert info.value.field == field
    with pytest.raises(SimConfigError):
        next(iter_frames(cfg))


def test_from_env_reads_every_kind_of_setting_and_names_bad_variables() -> None:
    env = Env({
        "VIGIL_SIM_CAMERAS": "a, b", "VIGIL_SIM_FIELDS": "hubble", "VIGIL_SIM_COUNT": "5",
        "VIGIL_SIM_ASTEROID_SNR": "2,9", "VIGIL_SIM_COSMIC_RAY_COUNT": "2,3",
        "VIGIL_SIM_START": "2025-01-01T00:00:00", "VIGIL_SIM_TRACKING_STD": "1.5",
    })  # fmt: skip
    cfg = TelescopeSimConfig.from_env(env)
    assert (cfg.cameras, cfg.fields, cfg.count) == (("a", "b"), ("hubble",), 5)
    assert (cfg.asteroid_snr, cfg.cosmic_ray_count) == ((2.0, 9.0), (2, 3))
    assert (cfg.start, cfg.tracking_std) == (datetime(2025, 1, 1, tzinfo=UTC), 1.5)
    with pytest.raises(ConfigError, match="VIGIL_SIM_HOT_PIXEL_PROB: expected a probability"):
        TelescopeSimConfig.from_env(Env({"VIGIL_SIM_HOT_PIXEL_PROB": "2"}))
    with pytest.raises(ConfigError, match="VIGIL_SIM_WIDTH: expected an integer"):
        TelescopeSimConfig.from_env(Env({"VIGIL_SIM_WIDTH": "wide"}))


# -- the source ---------------------------------------------------------------------------

CAMS = replace(BUSY, count=12, cameras=("c0", "c1", "c2", "c3"), width=64, height=48, stars=20)


def run_source(source: FrameSimulatorSource) -> list[RawBatch]:
    out: list[RawBatch] = []
    flow = Dataflow("frames_source")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow)
    return out


def test_source_delivers_the_bytes_of_iter_messages_partitioned_like_kafka() -> None:
    batches = run_source(FrameSimulatorSource(CAMS, partitions=3, batch_size=2))
    expected: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for key, value in iter_messages(CAMS):
        expected[partition_of(key, 3)].append((key, value))
    by_part: dict[int, list[RawBatch]] = defaultdict(list)
    for b in batches:
        assert b.origin == "simulator"
        assert 0 < len(b) <= 2
        by_part[b.partition].append(b)
    assert set(by_part) == set(expected)
    for part, bs in by_part.items():
        bs.sort(key=lambda b: b.offsets[0])
        assert [o for b in bs for o in b.offsets] == list(range(len(expected[part])))
        got = [(k, v) for b in bs for k, v in zip(b.keys, b.values, strict=True)]
        assert got == expected[part]
    one = run_source(FrameSimulatorSource(CAMS, partitions=1, batch_size=5))
    assert [v for b in one for v in b.values] == [v for _, v in iter_messages(CAMS)]


def drain(part: Any) -> list[RawBatch]:
    out: list[RawBatch] = []
    while True:
        try:
            out.extend(part.next_batch())
        except StopIteration:
            return out


def test_partition_resumes_from_its_snapshot() -> None:
    source = FrameSimulatorSource(CAMS, partitions=2, batch_size=2)
    part_index = partition_of(b"c0", 2)
    full = drain(source.build_part("in", str(part_index), None))
    part = source.build_part("in", str(part_index), None)
    first = part.next_batch()
    state = part.snapshot()
    assert state == 2
    rest = drain(source.build_part("in", str(part_index), state))
    assert rest[0].offsets[0] == 2
    values = [v for b in first + rest for v in b.values]
    assert values == [v for b in full for v in b.values]
    with pytest.raises(StopIteration):
        source.build_part("in", str(part_index), 10**6).next_batch()


def test_paced_source_waits_and_ref_messages_name_files(tmp_path: Path) -> None:
    part = FrameSimulatorSource(CAMS, fps=0.01).build_part("in", "0", None)
    [batch] = part.next_batch()
    assert len(batch) == 1
    assert part.next_batch() == []
    awake = part.next_awake()
    assert awake is not None
    assert awake > datetime.now(UTC) + timedelta(seconds=50)
    shared = tmp_path / "shared"  # made when the first frame is written
    source = FrameSimulatorSource(CAMS, encoding="ref", ref_dir=shared)
    [batch] = source.build_part("in", "0", None).next_batch()[:1]
    frame = decode_frame(batch.values[0], limits=FrameLimits(ref_roots=(shared,)))
    assert (shared / f"{frame.frame_id}.fits").is_file()


def test_source_rejects_bad_arguments() -> None:
    for kwargs, word in [
        ({"partitions": 0}, "partitions"), ({"batch_size": 0}, "batch_size"),
        ({"fps": -1.0}, "fps"), ({"encoding": "jpeg"}, "encoding"),
        ({"encoding": "ref"}, "ref_dir"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=word):
            FrameSimulatorSource(CAMS, **kwargs)
    with pytest.raises(SimConfigError, match="fields"):
        FrameSimulatorSource(replace(CAMS, fields=("moon",)))


# -- the CLI ------------------------------------------------------------------------------


@pytest.mark.parametrize("file_format", ["fits", "png"])
def test_cli_out_writes_files_that_read_frame_file_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], file_format: str
) -> None:
    argv = ["frames", "--count", "6", "--width", "96", "--height", "64", "--stars", "30"]
    argv += ["--references", "2", "--hot-pixel-prob", "1", "--seed", "4"]
    assert main([*argv, "--out", str(tmp_path), "--file-format", file_format]) == 0
    assert "done: sent 6 delivered 6 failed 0" in capsys.readouterr().err
    cfg = TelescopeSimConfig(
        count=6, width=96, height=64, stars=30, references=2, hot_pixel_prob=1.0, seed=4
    )
    frames = list(iter_frames(cfg))
    records = [orjson.loads(line) for line in (tmp_path / "truth.jsonl").read_bytes().splitlines()]
    assert [r["file"] for r in records] == [f"{f.frame_id}.{file_format}" for f in frames]
    for frame, record in zip(frames, records, strict=True):
        back = read_frame_file(tmp_path / record["file"], camera="cam1")
        np.testing.assert_array_equal(back.pixels, frame.pixels)
        if file_format == "fits":
            assert back.header == frame.header
        assert record["truth"] == [[b.x0, b.y0, b.x1, b.y1, b.kind] for b in frame.truth]
        assert record["header"]["weather"] == frame.header.weather
    assert sum(len(r["truth"]) for r in records) >= 4


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        ([], "--out"),
        (["--bootstrap", "127.0.0.1:1", "--encoding", "ref"], "--ref-dir"),
        (["--out", "x", "--fields", "pluto"], "--fields"),
        (["--out", "x", "--asteroid-snr", "3"], "--asteroid-snr"),
        (["--out", "x", "--encoding", "jpeg"], "--encoding"),
    ],
)
def test_cli_rejects_bad_options(
    capsys: pytest.CaptureFixture[str], argv: list[str], word: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frames", *argv])
    assert info.value.code == 2
    assert word in capsys.readouterr().err
