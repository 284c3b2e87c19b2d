"""Frame scoring: leave-one-out calibration, position weights, anomaly maps, boxes, quality gate."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from operators.framequality import QualityRules, ReferenceStats, image_stats, unusable_reason
from operators.frames import Frame, FrameHeader
from operators.framescore import (
    Calibration,
    calibrate,
    grow_level,
    gumbel_threshold,
    position_weight,
    score_patches,
    with_position,
)

pytestmark = pytest.mark.timeout(60)
GRID = (6, 8)


def loo_distances(refs: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Cells differ in scale: the last column holds a bright star that varies more.
    scale = np.ones(GRID[0] * GRID[1])
    scale[GRID[1] - 1 :: GRID[1]] = 5.0
    return (rng.gamma(6.0, 1 / 6.0, size=(refs, scale.size)) * scale).astype(np.float32)


def test_threshold_holds_new_normal_frames_and_cell_scales_follow_the_cells() -> None:
    cal = calibrate("M31", loo_distances(), grid=GRID, stride=16, position=2.0)
    assert cal.cell_scale[GRID[1] - 1] > 3 * cal.cell_scale[0]  # the star's cell is looser
    fresh = loo_distances(refs=400, seed=1)
    scores = np.array([score_patches(d, cal, shape=(96, 128)).score for d in fresh])
    assert np.mean(scores > cal.threshold) < 0.03  # about the 0.5 % asked for, with margin
    assert cal.threshold > float(np.median(cal.loo_scores))


def test_an_anomaly_gives_one_box_grown_through_its_neighbours() -> None:
    cal = calibrate("M31", loo_distances(), grid=GRID, stride=16, position=2.0)
    d = np.median(loo_distances(seed=2), axis=0)
    z = d / cal.cell_scale
    cell = 2 * GRID[1] + 3
    d[cell] = 3.0 * cal.threshold * cal.cell_scale[cell]  # seed above the threshold
    # Grown: between the growth level and the threshold.
    between = (grow_level(cal.threshold) + cal.threshold) / 2
    d[cell + 1] = between * cal.cell_scale[cell + 1]
    d[cell - 1] = 0.99 * grow_level(cal.threshold) * cal.cell_scale[cell - 1]  # not grown
    result = score_patches(d, cal, shape=(90, 120))  # not a multiple of the stride
    assert result.score == pytest.approx(3.0 * cal.threshold, rel=1e-5)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in result.boxes] == [(48, 32, 80, 48)]
    assert result.anomaly_map.shape == (90, 120)
    assert result.anomaly_map[40, 50] == pytest.approx(result.score, rel=1e-5)
    assert result.patch_scores.shape == GRID
    assert float(z.max()) < cal.threshold  # the median frame alone raises nothing


def test_a_normal_frame_has_no_box_and_shapes_are_checked() -> None:
    cal = calibrate("M31", loo_distances(), grid=GRID, stride=16, position=2.0)
    assert score_patches(np.zeros(48, np.float32), cal, shape=(96, 128)).boxes == ()
    with pytest.raises(ValueError, match="expected 48 patch distances"):
        score_patches(np.zeros(47, np.float32), cal, shape=(96, 128))
    with pytest.raises(ValueError, match="expected >= 3 reference frames"):
        calibrate("M31", loo_distances(refs=2), grid=GRID, stride=16, position=2.0)
    with pytest.raises(ValueError, match="false_alarm_rate"):
        gumbel_threshold(np.ones(5, np.float32), 1.5)


def test_calibration_round_trips_through_json() -> None:
    cal = calibrate("M 31", loo_distances(), grid=GRID, stride=16, position=2.5)
    back = Calibration.from_record(json.loads(json.dumps(cal.to_record())))
    assert (back.target, back.grid, back.stride, back.position) == ("M 31", GRID, 16, 2.5)
    np.testing.assert_allclose(back.cell_scale, cal.cell_scale, rtol=1e-5)
    assert back.threshold == cal.threshold


def test_position_makes_the_same_cell_nearest() -> None:
    rng = np.random.default_rng(3)
    refs = rng.normal(size=(5, 12, 4)).astype(np.float32)
    weight = position_weight(refs)
    bank = np.vstack([with_position(f, (3, 4), weight) for f in refs[1:]])
    query = with_position(refs[0] + 0.01, (3, 4), weight)
    nearest = np.argmin(((query[:, None, :] - bank[None, :, :]) ** 2).sum(axis=2), axis=1)
    # Position outweighs features: the nearest reference patch lies in the same cell.
    assert (nearest % 12 == np.arange(12)).mean() > 0.9
    with pytest.raises(ValueError, match="expected 12 patches"):
        with_position(refs[0][:11], (3, 4), 1.0)
    with pytest.raises(ValueError, match="at least 2 reference frames"):
        position_weight(refs[:1])


def frame(pixels: np.ndarray, **header: float) -> Frame:
    h = FrameHeader(
        width=pixels.shape[1],
        height=pixels.shape[0],
        ut=datetime(2024, 9, 1, 22, tzinfo=UTC),
        object="M31",
        ra_deg=10.68,
        dec_deg=41.27,
        altitude_deg=60.0,
        azimuth_deg=70.0,
        focus=7200.0,
        temperature_c=11.0,
        latitude_deg=48.4,
        longitude_deg=8.9,
        weather=90.0,
    )
    return Frame("f", "cam", replace(h, **header), pixels)


def star_field(seed: int = 0, sky: float = 1000.0, gain: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(sky, 10.0, size=(100, 120))
    img[rng.integers(0, 100, 40), rng.integers(0, 120, 40)] += gain * 5000.0
    return np.clip(img, 0, 65535).astype(np.uint16)


def test_quality_gate_names_each_reason() -> None:
    refs = [frame(star_field(i)) for i in range(5)]
    stats = ReferenceStats.of(refs)
    rules = QualityRules()
    assert unusable_reason(frame(star_field(9)), rules, stats) is None
    assert unusable_reason(frame(star_field(9), weather=20.0), rules).startswith("weather:")
    assert unusable_reason(frame(star_field(9), altitude_deg=8.0), rules).startswith("altitude:")
    assert unusable_reason(frame(star_field(9)), rules, None) is None  # no references: header only
    defocus = unusable_reason(frame(star_field(9), focus=7400.0), rules, stats)
    assert defocus is not None
    assert defocus.startswith("defocus: focuser at 7400, +200 steps")
    dim = unusable_reason(frame(star_field(9, gain=0.2)), rules, stats)
    assert dim is not None
    assert dim.startswith("clouds: star signal")
    bright = unusable_reason(frame(star_field(9, sky=3000.0)), rules, stats)
    assert bright is not None
    assert bright.startswith("clouds: sky level")
    assert image_stats(refs[0].pixels)[1] == pytest.approx(1000.0, abs=5.0)
    with pytest.raises(ValueError, match="min_signal"):
        QualityRules(min_signal=1.5)
    with pytest.raises(ValueError, match="at least one reference"):
        ReferenceStats.of([])


def diff_maxima(refs: int = 40, seed: int = 3) -> np.ndarray:
    # Differences are in sigmas: cell maxima of noise near 2.5-3.5.
    rng = np.random.default_rng(seed)
    return (2.8 + 0.35 * rng.standard_normal((refs, GRID[0] * GRID[1]))).astype(np.float32)


def test_difference_channel_joins_the_score_on_the_distances_scale() -> None:
    loo = loo_distances()
    plain = calibrate("M31", loo, grid=GRID, stride=16, position=2.0)
    cal = calibrate("M31", loo, grid=GRID, stride=16, position=2.0, diff_loo=diff_maxima())
    assert cal.diff_scale is not None
    assert plain.diff_scale is None
    assert cal.diff_weight > 0.0
    assert cal.threshold >= plain.threshold * 0.95  # two channels' maxima, one threshold
    # Never tighter than the median cell: the channel is in sigmas already.
    raw = np.quantile(diff_maxima(), 0.9, axis=0)
    assert float(cal.diff_scale.min()) == pytest.approx(float(np.median(raw)), rel=1e-5)
    assert np.mean(cal.diff_scale == cal.diff_scale.min()) >= 0.5
    fresh_d, fresh_b = loo_distances(refs=400, seed=4), diff_maxima(refs=400, seed=5)
    scores = np.array(
        [
            score_patches(d, cal, shape=(96, 128), diff=b).score
            for d, b in zip(fresh_d, fresh_b, strict=True)
        ]
    )
    assert np.mean(scores > cal.threshold) < 0.03
    # A faint point only the difference sees: distances as usual, one cell 9 sigmas.
    d = np.median(loo, axis=0)
    b = np.median(diff_maxima(seed=6), axis=0)
    b[7] = 9.0
    result = score_patches(d, cal, shape=(96, 128), diff=b)
    assert result.score > cal.threshold
    assert [(x.x0, x.y0) for x in result.boxes] == [(112, 0)]
    assert score_patches(d, plain, shape=(96, 128)).score < plain.threshold
    with pytest.raises(ValueError, match="cell differences"):
        score_patches(d, plain, shape=(96, 128), diff=b)
    with pytest.raises(ValueError, match="differences of shape"):
        calibrate("M31", loo, grid=GRID, stride=16, position=2.0, diff_loo=diff_maxima()[:3])


def test_calibration_records_keep_the_difference_channel_and_read_old_ones() -> None:
    cal = calibrate(
        "M31", loo_distances(), grid=GRID, stride=16, position=2.0, diff_loo=diff_maxima()
    )
    back = Calibration.from_record(json.loads(json.dumps(cal.to_record())))
    assert back.diff_scale is not None
    assert cal.diff_scale is not None
    np.testing.assert_allclose(back.diff_scale, cal.diff_scale, rtol=1e-5)
    assert back.diff_weight == pytest.approx(cal.diff_weight)
    old = cal.to_record()
    del old["diff_scale"], old["diff_weight"]
    assert Calibration.from_record(old).diff_scale is None
