"""How fast the memory bank answers one frame's search, by index type, bank size and dimension.

Prints one JSON line per measurement:

* ``"kind": "insert"``: seconds to add a bank of ``rows`` patches frame by frame
  (1,300 patches per add, as at stride 16), then to flush and index it;
* ``"kind": "search"``: one search of ``nq`` patches (all of a frame) against
  the target's partition: median and 90th percentile over ``--repeats`` runs
  after a warm-up, recall@1 and the worst relative distance error against an
  exact numpy search of a sample of the queries, with an optional scalar filter;
* ``"kind": "faiss"``: the same index built with faiss directly, in-process,
  without Milvus: what the index itself costs;
* ``"kind": "coreset"``: seconds for a greedy coreset of the bank.

Features are synthetic but shaped like patch embeddings (clusters on a
low-dimensional manifold, plus noise); queries come from the same distribution.
faiss is limited to one thread (Milvus Lite runs it in this process): the
figures are per core. Run with one OpenBLAS thread too, as the flow's workers would:

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/membank_speed.py --coreset  # ~1 h
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/membank_speed.py \\
        --rows 20000 --dims 32 --nq 1300 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

from operators.coreset import coreset_indices
from operators.membank import BankConfig, MemoryBank, PatchMeta, patch_ids

faiss.omp_set_num_threads(1)

GRID = (50, 26)  # 1,300 patches a frame: 650 x 500 at stride ~13-19
PATCHES = GRID[0] * GRID[1]
CONFIGS: list[tuple[str, dict[str, int], list[dict[str, int]]]] = [
    ("HNSW", {"M": 16, "efConstruction": 200}, [{"ef": 16}, {"ef": 32}, {"ef": 64}]),
    ("IVF_FLAT", {"nlist": 1024}, [{"nprobe": 4}, {"nprobe": 8}, {"nprobe": 16}, {"nprobe": 32}]),
    ("IVF_SQ8", {"nlist": 1024}, [{"nprobe": 8}, {"nprobe": 16}]),
]


def features(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered features on an 8-dimensional manifold: 400 clusters, a fixed map, noise."""
    rng = np.random.default_rng(1000 + dim)  # the same manifold for bank and queries
    centres = rng.normal(scale=2.0, size=(400, 8))
    mixing = rng.normal(size=(8, dim)) / np.sqrt(8)
    own = np.random.default_rng(seed)
    z = centres[own.integers(400, size=n)] + own.normal(scale=0.6, size=(n, 8))
    return (np.tanh(z @ mixing) + own.normal(scale=0.05, size=(n, dim))).astype(np.float32)


def exact_nn(refs: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and Euclidean distance of each query's nearest row of refs (float64)."""
    r = refs.astype(np.float64)
    r2 = (r**2).sum(1)
    idx = np.empty(len(queries), np.int64)
    dist = np.empty(len(queries))
    for s in range(0, len(queries), 100):
        q = queries[s : s + 100].astype(np.float64)
        d2 = (q**2).sum(1)[:, None] - 2 * q @ r.T + r2[None, :]
        idx[s : s + 100] = d2.argmin(1)
        dist[s : s + 100] = np.sqrt(np.maximum(d2.min(1), 0))
    return idx, dist


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and 90th percentile seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), float(np.quantile(times, 0.9))


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return round(float((got == want).mean()), 4)


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def fill(cfg: BankConfig, refs: np.ndarray, weather: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Add refs frame by frame; seconds to insert, seconds to flush and index, row ids."""
    gx, gy = (a.ravel() for a in np.meshgrid(np.arange(GRID[0]), np.arange(GRID[1])))
    ut = datetime(2024, 9, 1, 22, tzinfo=UTC)
    ids = []
    with MemoryBank(cfg) as bank:
        t = time.perf_counter()
        for f, s in enumerate(range(0, len(refs), PATCHES)):
            n = len(refs[s : s + PATCHES])
            meta = PatchMeta(float(weather[f]), 50.0, 7200.0, ut)
            bank.add("M31", f"frame-{f:05d}", refs[s : s + n], gx[:n], gy[:n], meta)
            ids.append(patch_ids("M31", f"frame-{f:05d}", gx[:n], gy[:n]))
        inserted = time.perf_counter() - t
        t = time.perf_counter()
        bank.search("M31", refs[:1])  # flushes and waits for the index builds
        indexed = time.perf_counter() - t
    return inserted, indexed, np.concatenate(ids)


def study(args: argparse.Namespace, tmp: Path) -> None:
    for rows in args.rows:
        for dim in args.dims:
            refs = features(rows, dim, seed=1)
            weather = np.random.default_rng(2).uniform(0, 100, -(-rows // PATCHES))
            queries = features(max(args.nq), dim, seed=3)
            sample = queries[: args.sample]
            allowed = np.flatnonzero(np.repeat(weather >= 30, PATCHES)[:rows])
            truth = {None: exact_nn(refs, sample)}
            sub_idx, sub_d = exact_nn(refs[allowed], sample)
            truth["weather >= 30"] = (allowed[sub_idx], sub_d)
            common = {"rows": rows, "dim": dim}
            for index_type, build, searches in CONFIGS:
                if args.index and index_type not in args.index:
                    continue
                uri = str(tmp / f"bank-{rows}-{dim}-{index_type}.db")
                base = BankConfig(uri=uri, dim=dim, index_type=index_type, index_params=build)
                inserted, indexed, ids = fill(base, refs, weather)
                with MemoryBank(base) as bank:
                    effective = bank.index_info()["params"]
                emit(kind="insert", **common, index=index_type, build=effective,
                     insert_s=round(inserted, 2), flush_index_s=round(indexed, 2),
                     rows_per_s=round(rows / inserted))  # fmt: skip
                for params in searches:
                    with MemoryBank(replace(base, search_params=params)) as bank:
                        for nq in args.nq:
                            for cond in (None, "weather >= 30") if nq == min(args.nq) else (None,):
                                med, p90 = timed(
                                    lambda q=queries[:nq], c=cond: bank.search(
                                        "M31", q, conditions=c
                                    ),
                                    args.repeats,
                                )
                                got = bank.neighbours("M31", sample, conditions=cond)
                                want_i, want_d = truth[cond]
                                err = np.abs(got.distances[:, 0] - want_d) / np.maximum(
                                    want_d, 1e-9
                                )
                                emit(kind="search", **common, index=index_type, build=build,
                                     search=params, nq=nq, filter=cond, median_s=round(med, 4),
                                     p90_s=round(p90, 4), frames_per_s=round(1 / med, 1),
                                     recall_at_1=recall(got.ids[:, 0], ids[want_i]),
                                     max_rel_err=round(float(err.max()), 4))  # fmt: skip
                faiss_search(refs, queries, sample, truth[None][0], index_type, build, searches,
                             args, common)  # fmt: skip
            if args.coreset:
                t = time.perf_counter()
                coreset_indices(refs, rows // 10)
                emit(kind="coreset", **common, keep=rows // 10,
                     seconds=round(time.perf_counter() - t, 2))  # fmt: skip


def faiss_search(
    refs: np.ndarray,
    queries: np.ndarray,
    sample: np.ndarray,
    true_idx: np.ndarray,
    index_type: str,
    build: dict[str, int],
    searches: list[dict[str, int]],
    args: argparse.Namespace,
    common: dict[str, int],
) -> None:
    """The same index in faiss alone, no Milvus: what the index itself costs."""
    dim = refs.shape[1]
    if index_type == "HNSW":
        index = faiss.IndexHNSWFlat(dim, build["M"])
        index.hnsw.efConstruction = build["efConstruction"]
    else:
        quantizer = faiss.IndexFlatL2(dim)
        if index_type == "IVF_FLAT":
            index = faiss.IndexIVFFlat(quantizer, dim, build["nlist"])
        else:
            qt = faiss.ScalarQuantizer.QT_8bit
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, build["nlist"], qt)
        index.train(refs)
    index.add(refs)
    for params in searches:
        if index_type == "HNSW":
            index.hnsw.efSearch = params["ef"]
        else:
            index.nprobe = params["nprobe"]
        for nq in args.nq:
            med, p90 = timed(lambda q=queries[:nq]: index.search(q, 1), args.repeats)
            _, ids = index.search(sample, 1)
            emit(kind="faiss", **common, index=index_type, build=build, search=params, nq=nq,
                 median_s=round(med, 4), p90_s=round(p90, 4),
                 recall_at_1=recall(ids[:, 0], true_idx))  # fmt: skip


def main() -> None:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=ints, default=[100_000, 200_000])
    parser.add_argument("--dims", type=ints, default=[64, 128])
    parser.add_argument("--nq", type=ints, default=[1300, 5000])
    parser.add_argument("--index", type=lambda s: s.split(","), default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sample", type=int, default=500, help="queries checked for recall")
    parser.add_argument("--coreset", action="store_true", help="also time a 10%% coreset")
    parser.add_argument("--dir", type=Path, default=None, help="for the Lite files (temporary)")
    args = parser.parse_args()
    emit(kind="machine", cpus=os.cpu_count(), load_avg=[round(x, 2) for x in os.getloadavg()],
         faiss=faiss.__version__, faiss_threads=1,
         openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS"))  # fmt: skip
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        study(args, args.dir)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            study(args, Path(tmp))


if __name__ == "__main__":
    main()
