"""Difference imaging: alignment, faint points found, stars and seeing left alone, round trips."""

from __future__ import annotations

import numpy as np
import pytest

from operators.framealign import measure_shift
from operators.framediff import (
    DiffConfig,
    ReferenceImage,
    _median_without,
    build_reference,
    matched_filter,
    reach_max,
)
from operators.pointstats import cell_max

pytestmark = pytest.mark.timeout(60)

H, W = 144, 192
SKY, NOISE = 1000.0, 10.0
STARS = np.random.default_rng(42).uniform((20, 20), (H - 20, W - 20), size=(25, 2))
FLUX = np.geomspace(300.0, 300_000.0, len(STARS))  # counts; the brightest saturate nothing


def render(
    seed: int, shift: tuple[float, float], sigma: float, extra: tuple[float, float, float] | None
) -> np.ndarray:
    """A star field shifted by ``shift`` with Gaussian seeing ``sigma`` and an optional point."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    img = np.full((H, W), SKY)
    for (y, x), f in zip(STARS, FLUX, strict=True):
        r2 = (yy - y - shift[0]) ** 2 + (xx - x - shift[1]) ** 2
        img += f / (2 * np.pi * sigma**2) * np.exp(-r2 / (2 * sigma**2))
    if extra is not None:
        y, x, peak = extra
        img += peak * NOISE * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    img += rng.normal(0.0, NOISE, (H, W))
    return np.clip(img, 0, 65535).astype(np.uint16)


def references(n: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(1)
    shifts = rng.normal(0.0, 1.0, (n, 2))
    sigmas = rng.uniform(0.95, 1.7, n)
    pairs = enumerate(zip(shifts, sigmas, strict=True))
    return [render(i, tuple(s), sg, None) for i, (s, sg) in pairs], shifts


def test_shift_is_measured_to_a_tenth_of_a_pixel() -> None:
    refs, shifts = references()
    ref, _ = build_reference(refs, 32)
    frame = render(99, (1.7, -2.3), 1.3, None)
    dy, dx = measure_shift(
        matched_filter(frame, ref.cfg), ref.stars, ref.star_centroids, ref.cfg.window
    )
    # The reference sits where the first reference frame was.
    assert dy == pytest.approx(1.7 - shifts[0, 0], abs=0.1)
    assert dx == pytest.approx(-2.3 - shifts[0, 1], abs=0.1)


def test_a_faint_point_stands_out_and_stars_under_other_seeing_do_not() -> None:
    refs, _ = references()
    ref, loo = build_reference(refs, 32)
    assert loo.shape == (8, 5 * 6)
    assert float(loo.max()) < 5.5  # leave-one-out: noise and residuals only
    for seed, sigma in ((100, 0.95), (101, 1.7)):  # the sharpest and the widest seeing
        normal = ref.cell_max(render(seed, (0.8, -1.1), sigma, None), 32)
        assert float(normal.max()) < 5.5
    # A point 3.5 sky sigmas high on empty sky between stars.
    d2 = ((STARS - (70.0, 100.0)) ** 2).sum(axis=1)
    assert d2.min() > 12**2
    cells = ref.cell_max(render(102, (0.8, -1.1), 1.3, (70.0, 100.0, 3.5)), 32)
    assert int(cells.argmax()) == 2 * 6 + 3
    assert float(cells.max()) > 6.5


def test_bytes_round_trip_gives_the_same_differences() -> None:
    refs, _ = references(5)
    ref, _ = build_reference(refs, 32, DiffConfig(reach=0))
    back = ReferenceImage.from_bytes(ref.to_bytes())
    frame = render(7, (0.3, 0.4), 1.2, (60.0, 40.0, 5.0))
    assert (back.shape, back.field, back.cfg) == (ref.shape, ref.field, ref.cfg)
    np.testing.assert_allclose(back.difference(frame), ref.difference(frame), atol=0.05)
    # What the bank keeps comes back exactly: the pipeline scores with it from the
    # start, so a frame scores the same before and after a restart reloads it.
    again = ReferenceImage.from_bytes(back.to_bytes())
    assert again.to_bytes() == back.to_bytes()
    assert np.array_equal(again.difference(frame), back.difference(frame))
    with pytest.raises(ValueError, match="expected bytes"):
        ReferenceImage.from_bytes(b"nonsense")
    with pytest.raises(ValueError, match="expected a frame of"):
        ref.difference(np.zeros((10, 10), np.uint16))


def test_frames_without_stars_are_differenced_unshifted() -> None:
    rng = np.random.default_rng(3)
    flat = [rng.normal(SKY, NOISE, (H, W)).astype(np.uint16) for _ in range(4)]
    ref, loo = build_reference(flat, 32)
    assert len(ref.stars) == 0
    assert np.isfinite(loo).all()
    assert np.isfinite(ref.difference(flat[0])).all()


def test_edges_beyond_the_references_field_are_zero() -> None:
    refs, _ = references(5)
    ref, _ = build_reference(refs, 32)
    q = ref.difference(render(5, (0.0, 0.0), 1.3, None))
    m = ref.cfg.edge_margin
    assert not q[: ref.field[0] + m].any()
    assert not q[:, ref.field[3] - m + 1 :].any()


@pytest.mark.parametrize("n", [5, 6])
def test_median_without_one_frame(n: int) -> None:
    stack = np.random.default_rng(n).normal(size=(n, 7, 9)).astype(np.float32)
    mid = (n - 1) // 2
    kth = sorted({k for k in (mid - 1, mid, mid + 1, mid + 2, n // 2) if 0 <= k < n})
    ordered = np.partition(stack, kth, axis=0)
    for i in range(n):
        expected = np.median(np.delete(stack, i, axis=0), axis=0)
        np.testing.assert_allclose(_median_without(ordered, stack[i], n), expected, rtol=1e-6)


def test_reach_max_looks_beyond_each_cell() -> None:
    x = np.random.default_rng(0).normal(size=(37, 50)).astype(np.float32)
    np.testing.assert_array_equal(reach_max(x, 8, 0), cell_max(x, 8))
    got = reach_max(x, 8, 4).reshape(5, 7)
    for r in range(5):
        for c in range(7):
            block = x[max(0, 8 * r - 4) : 8 * r + 12, max(0, 8 * c - 4) : 8 * c + 12]
            assert got[r, c] == block.max()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="psf_sigma"):
        DiffConfig(psf_sigma=0.0)
    with pytest.raises(ValueError, match="reach"):
        DiffConfig(reach=-1)
    with pytest.raises(ValueError, match=">= 3 frames"):
        build_reference([np.zeros((40, 40), np.uint16)] * 2, 16)
