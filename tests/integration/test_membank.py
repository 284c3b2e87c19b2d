"""MemoryBank on Milvus Lite in a temporary file: storage, partitions, filters, reopening."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from operators.membank import (
    BankConfig,
    BankConnectionError,
    BankError,
    BankSchemaError,
    MemoryBank,
    PatchMeta,
    UnknownTargetError,
    patch_ids,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DIM = 8
GRID = 8  # 8 x 8 patches a frame
GX, GY = (a.ravel().tolist() for a in np.meshgrid(np.arange(GRID), np.arange(GRID)))


def meta(weather: float) -> PatchMeta:
    return PatchMeta(weather, 55.0, 7200.0, datetime(2024, 9, 1, 22, tzinfo=UTC))


def frame(seed: int, offset: float = 0.0, n: int = GRID * GRID, dim: int = DIM) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, dim)) + offset).astype(np.float32)


def exact(refs: np.ndarray, queries: np.ndarray, k: int = 1) -> np.ndarray:
    """Euclidean distances to the k nearest rows of refs, by brute force in float64."""
    d = np.sqrt(((queries[:, None, :].astype(float) - refs[None, :, :]) ** 2).sum(-1))
    return np.sort(d, axis=1)[:, :k]


@pytest.fixture
def cfg(tmp_path: Path) -> BankConfig:
    return BankConfig(uri=str(tmp_path / "bank.db"), dim=DIM)


@pytest.fixture
def bank(cfg: BankConfig) -> Iterator[MemoryBank]:
    with MemoryBank(cfg) as b:
        yield b


@pytest.fixture
def three_frames(bank: MemoryBank) -> dict[str, np.ndarray]:
    """Frames f1, f2, f3 of M31 with weather 90, 40 and 75."""
    frames = {"f1": frame(1), "f2": frame(2), "f3": frame(3)}
    for (fid, vecs), weather in zip(frames.items(), (90.0, 40.0, 75.0), strict=True):
        assert bank.add("M31", fid, vecs, GX, GY, meta(weather)) == GRID * GRID
    return frames


def test_add_search_count(bank: MemoryBank, three_frames: dict[str, np.ndarray]) -> None:
    assert bank.count("M31") == 3 * GRID * GRID
    assert bank.count() == 3 * GRID * GRID
    assert bank.targets() == ["M31"]
    assert bank.frame_ids("M31") == ["f1", "f2", "f3"]
    refs = np.vstack(list(three_frames.values()))
    queries = frame(9, n=50)
    found = bank.neighbours("M31", queries, k=3)
    assert found.distances.dtype == np.float32
    assert found.distances.shape == found.ids.shape == (50, 3)
    np.testing.assert_allclose(found.distances, exact(refs, queries, 3), rtol=1e-4)
    # A stored vector finds itself at distance 0, under its own id.
    hit = bank.neighbours("M31", three_frames["f2"][:5])
    np.testing.assert_allclose(hit.distances[:, 0], 0.0, atol=1e-3)
    assert hit.ids[:, 0].tolist() == patch_ids("M31", "f2", GX[:5], GY[:5]).tolist()


def test_partitions_isolate_targets(bank: MemoryBank) -> None:
    odd = 'NGC 224 / M31 "core"'
    bank.add("M31", "a1", frame(1), GX, GY, meta(90))
    bank.add(odd, "b1", frame(2, offset=10.0), GX, GY, meta(90))
    assert bank.targets() == sorted(["M31", odd])
    assert (bank.count("M31"), bank.count(odd), bank.count("M42")) == (64, 64, 0)
    near = bank.search("M31", frame(1)[:10])
    far = bank.search(odd, frame(1)[:10])
    np.testing.assert_allclose(near, 0.0, atol=1e-3)
    np.testing.assert_allclose(far, exact(frame(2, offset=10.0), frame(1)[:10]), rtol=1e-4)
    with pytest.raises(UnknownTargetError, match="M42"):
        bank.search("M42", frame(1)[:10])


def test_conditions_filter(bank: MemoryBank, three_frames: dict[str, np.ndarray]) -> None:
    queries = three_frames["f2"]  # stored with weather 40
    assert np.allclose(bank.search("M31", queries), 0.0, atol=1e-3)
    good = np.vstack([three_frames["f1"], three_frames["f3"]])
    got = bank.search("M31", queries, conditions="weather >= 60")
    np.testing.assert_allclose(got, exact(good, queries), rtol=1e-4)
    only_f1 = bank.search("M31", queries, conditions='weather > 80 and frame_id != "f3"')
    np.testing.assert_allclose(only_f1, exact(three_frames["f1"], queries), rtol=1e-4)
    nothing = bank.search("M31", queries, k=2, conditions="weather > 100")
    assert nothing.shape == (64, 2)
    assert np.isinf(nothing).all()
    with pytest.raises(BankError, match="search on collection"):
        bank.search("M31", queries, conditions="no_such_field > 1")


def test_exclude_frame_leaves_one_out(
    bank: MemoryBank, three_frames: dict[str, np.ndarray]
) -> None:
    others = np.vstack([three_frames["f2"], three_frames["f3"]])
    got = bank.search("M31", three_frames["f1"], k=2, exclude_frame="f1")
    np.testing.assert_allclose(got, exact(others, three_frames["f1"], 2), rtol=1e-4)
    both = bank.search("M31", three_frames["f1"], conditions="weather >= 60", exclude_frame="f1")
    np.testing.assert_allclose(both, exact(three_frames["f3"], three_frames["f1"]), rtol=1e-4)


def test_readding_a_frame_replaces_it(
    bank: MemoryBank, three_frames: dict[str, np.ndarray]
) -> None:
    bank.add("M31", "f1", three_frames["f1"], GX, GY, meta(90))  # a replay
    assert bank.count("M31") == 3 * 64
    bank.search("M31", three_frames["f1"][:3])  # the next add lands after a search
    moved = frame(1, offset=5.0, n=40)
    bank.add("M31", "f1", moved, GX[:40], GY[:40], meta(90))
    assert bank.count("M31") == 2 * 64 + 40
    assert bank.frame_ids("M31") == ["f1", "f2", "f3"]
    np.testing.assert_allclose(bank.search("M31", moved), 0.0, atol=1e-3)
    assert (bank.search("M31", three_frames["f1"]) > 1e-2).all()  # old rows are gone
    bank.delete_frame("M31", "f1")
    bank.delete_frame("M31", "not-there")
    assert bank.frame_ids("M31") == ["f2", "f3"]
    assert bank.count("M31") == 2 * 64
    bank.drop_target("M31")
    assert (bank.count(), bank.targets()) == (0, [])


def test_readding_after_reopening_replaces(cfg: BankConfig) -> None:
    with MemoryBank(cfg) as bank:
        bank.add("M31", "f1", frame(1), GX, GY, meta(90))
        bank.add("M31", "f2", frame(2), GX, GY, meta(90))
    with MemoryBank(cfg) as bank:  # knows nothing yet of the frames stored
        bank.add("M31", "f1", frame(5, n=10), GX[:10], GY[:10], meta(90))
        assert bank.count("M31") == 64 + 10
        np.testing.assert_allclose(bank.search("M31", frame(5, n=10)), 0.0, atol=1e-3)


def test_searched_rows_are_indexed(bank: MemoryBank, three_frames: dict[str, np.ndarray]) -> None:
    """No search sees unindexed rows, which Milvus Lite would brute-force with huge temporaries."""
    from milvus_lite import server_manager_instance

    bank.search("M31", three_frames["f1"][:2])
    db = server_manager_instance._servers[os.path.abspath(bank.cfg.uri)][1]
    col = db.get_collection(bank.cfg.collection)
    segments = list(col._segment_cache.values())
    assert segments
    assert all("vector" in s.indexes for s in segments)
    assert col._memtable.size() == 0


def test_banks_of_one_process_share_a_lite_file(cfg: BankConfig) -> None:
    """Workers that are threads of one process: one writes, the other searches, either closes."""
    from milvus_lite import server_manager_instance

    with MemoryBank(cfg) as reader:
        with MemoryBank(cfg) as writer:
            writer.add("M31", "f1", frame(1), GX, GY, meta(90))
            np.testing.assert_allclose(reader.search("M31", frame(1)[:4]), 0.0, atol=1e-3)
            db = server_manager_instance._servers[os.path.abspath(cfg.uri)][1]
            assert db.get_collection(cfg.collection)._memtable.size() == 0  # flushed first
        assert reader.count("M31") == 64


def test_reopening_gives_the_same_results(cfg: BankConfig) -> None:
    queries = frame(7, n=30)
    with MemoryBank(cfg) as bank:
        for i in range(4):
            bank.add("M31", f"f{i}", frame(i), GX, GY, meta(50 + 10 * i))
        before = bank.neighbours("M31", queries, k=2, conditions="weather >= 60")
    with MemoryBank(cfg) as bank:  # the Lite server was stopped: this reads the file again
        assert bank.count("M31") == 4 * 64
        after = bank.neighbours("M31", queries, k=2, conditions="weather >= 60")
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_allclose(after.distances, before.distances, rtol=1e-6)


def test_dim_mismatch_is_named(cfg: BankConfig) -> None:
    with MemoryBank(cfg) as bank:
        bank.add("M31", "f1", frame(1), GX, GY, meta(90))
    wrong = BankConfig(uri=cfg.uri, dim=16)
    with pytest.raises(BankSchemaError, match=r"dim 8 but the config says 16"):
        MemoryBank(wrong).open()
    with MemoryBank(cfg) as bank:  # the failed open released the file
        assert bank.count() == 64
        with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
            bank.search("M31", np.zeros((2, 16), np.float32))


@pytest.mark.parametrize(
    ("index_type", "index_params", "search_params"),
    [
        ("HNSW", None, None),
        ("IVF_FLAT", {"nlist": 32}, {"nprobe": 8}),
        ("IVF_SQ8", {"nlist": 32}, {"nprobe": 8}),
    ],
)
def test_matches_exact_nearest_neighbours(
    tmp_path: Path,
    index_type: str,
    index_params: dict[str, int] | None,
    search_params: dict[str, int] | None,
) -> None:
    rng = np.random.default_rng(11)
    centres = rng.normal(scale=4.0, size=(30, 16))
    refs = (centres[rng.integers(30, size=4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    queries = (centres[rng.integers(30, size=300)] + rng.normal(size=(300, 16))).astype(np.float32)
    cfg = BankConfig(
        uri=str(tmp_path / "exact.db"),
        dim=16,
        index_type=index_type,
        index_params=index_params,
        search_params=search_params,
    )
    with MemoryBank(cfg) as bank:
        info = bank.index_info()  # Lite ignores build parameters unless they are nested
        assert (info["index_type"], info["params"]) == (index_type, cfg.build_params)
        for i in range(0, 4000, 500):  # eight "frames" of a 25 x 20 grid
            cells = np.arange(500)
            bank.add("M31", f"f{i}", refs[i : i + 500], cells % 25, cells // 25, meta(80))
        got = bank.neighbours("M31", queries, k=3)
    truth = exact(refs, queries, 3)
    true_ids = np.concatenate(
        [
            patch_ids("M31", f"f{i}", np.arange(500) % 25, np.arange(500) // 25)
            for i in range(0, 4000, 500)
        ]
    )[np.argmin(((queries[:, None, :] - refs[None]) ** 2).sum(-1), axis=1)]
    recall = float((got.ids[:, 0] == true_ids).mean())
    assert recall >= 0.95, recall
    found = got.ids[:, 0] == true_ids
    tol = 2e-2 if index_type == "IVF_SQ8" else 1e-4  # SQ8 stores 8-bit codes
    np.testing.assert_allclose(got.distances[found, 0], truth[found, 0], rtol=tol)
    assert (np.diff(got.distances, axis=1) >= 0).all()


def test_unreachable_server_names_the_uri() -> None:
    cfg = BankConfig(uri="http://127.0.0.1:1", timeout_s=5)
    with pytest.raises(BankConnectionError, match=r"http://127\.0\.0\.1:1"):
        MemoryBank(cfg).open()


def test_a_lite_file_in_use_by_another_process_is_named(cfg: BankConfig) -> None:
    script = textwrap.dedent(
        f"""
        from operators.membank import BankConfig, BankConnectionError, MemoryBank
        try:
            MemoryBank(BankConfig(uri={cfg.uri!r}, dim={DIM})).open()
        except BankConnectionError as err:
            print(err)
        """
    )
    with MemoryBank(cfg):
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )
    assert cfg.uri in out.stdout
    assert "milvus-lite server" in out.stdout


def test_bad_input_is_named(bank: MemoryBank) -> None:
    with pytest.raises(ValueError, match=r"add: vectors must have shape \(n, 8\)"):
        bank.add("M31", "f1", np.zeros((4, 3)), [0, 1, 2, 3], [0] * 4, meta(90))
    with pytest.raises(ValueError, match="one integer per vector"):
        bank.add("M31", "f1", np.zeros((4, DIM)), [0, 1], [0, 0], meta(90))
    with pytest.raises(ValueError, match="repeats a"):
        bank.add("M31", "f1", np.zeros((2, DIM)), [0, 0], [1, 1], meta(90))
    with pytest.raises(ValueError, match="NaN"):
        bank.add("M31", "f1", np.full((1, DIM), np.nan), [0], [0], meta(90))
    with pytest.raises(ValueError, match="frame_id must be"):
        bank.add("M31", "", np.zeros((1, DIM)), [0], [0], meta(90))
    with pytest.raises(BankError, match="open bank"):
        MemoryBank(bank.cfg).count()
