"""Speed of the patch embedding: milliseconds per 650x500 frame on one onnxruntime thread.

For each model (``lite0``, ``random``) prints one JSON object: the normalisation alone,
the point statistics appended to the model's features (:class:`~operators.embedding.PointStats`)
alone, and the whole ``embed`` (normalisation + model + reshaping) one frame per call and in
batches of 4 frames (``embed_many``). Each figure is the best of ``--repeats`` timed
rounds (the least disturbed by other work on a shared machine) next to the median, in
wall-clock time and in this process's CPU time (``cpu_ms``: what the work costs a core,
nearly unaffected by other processes competing for the cores).

    .venv/bin/python benchmarks/embedding_speed.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from operators.embedding import PatchEmbedder
from operators.pointstats import PointStats

HEIGHT, WIDTH = 500, 650


def frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        img = rng.poisson(1000.0, (HEIGHT, WIDTH)).astype(np.float64)
        ys, xs = rng.integers(0, HEIGHT, 200), rng.integers(0, WIDTH, 200)
        img[ys, xs] += rng.uniform(100, 20000, 200)
        out.append(np.clip(img, 0, 65535).astype(np.uint16))
    return out


def timed(fn: Callable[[], object], per: int, repeats: int) -> dict[str, float]:
    fn()  # warm-up (session creation, first-run allocations)
    ms, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ms.append((time.perf_counter() - t0) * 1000.0 / per)
        cpu.append((time.process_time() - c0) * 1000.0 / per)
    return {
        "best_ms": round(min(ms), 1),
        "median_ms": round(statistics.median(ms), 1),
        "cpu_ms": round(min(cpu), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    batch = frames(4)
    for model in ("lite0", "random"):
        print(json.dumps(measure(PatchEmbedder(model, threads=args.threads), batch, args.repeats)))


def measure(emb: PatchEmbedder, batch: list[np.ndarray], repeats: int) -> dict[str, object]:
    gh, gw = emb.grid((HEIGHT, WIDTH))
    return {
        "model": str(emb.model),
        "dim": emb.dim,
        "threads": emb.threads,
        "frame": f"{HEIGHT}x{WIDTH}",
        "patches": gh * gw,
        "normalise": timed(lambda: emb.preprocess(batch[0]), 1, repeats),
        "point_stats": timed(lambda: PointStats()(batch[0], emb.stride), 1, repeats),
        "embed_1": timed(lambda: emb.embed(batch[0]), 1, repeats),
        "embed_many_4": timed(lambda: emb.embed_many(batch), 4, repeats),
    }


if __name__ == "__main__":
    main()
