"""Frame and patch AUROC of the frame pipeline against the original method, on simulated nights.

A held-out simulated sequence (its own seed): the first ``references`` frames
of each target are indexed (Milvus Lite in a temporary folder), the rest are
scored. Prints one JSON object:

* ``frame_auroc`` / ``patch_auroc`` over usable frames (a frame is positive when it holds
  an injected anomaly; a patch when it overlaps an anomaly's box by at least
  ``--min-overlap`` pixels), and per anomaly kind (frames of that kind against
  normal frames; patches of that kind against normal patches);
* ``original_frame_auroc``: the original's 166 x 100 flattened, L2-normalised
  nearest-reference distance on the same frames (it has no patch output);
* at the calibrated threshold: detection rate per kind, false alarms per normal frame;
* routing: unusable frames skipped, and usable frames wrongly skipped.

Usage::

    .venv/bin/python benchmarks/frames_quality.py --seed 7 --count 260 [--model lite0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generators.telescope import TelescopeSimConfig, iter_frames  # noqa: E402
from operators.embedding import PatchEmbedder  # noqa: E402
from operators.frameeval import OriginalMethod, auroc, patch_labels  # noqa: E402
from operators.framepipe import POOL, FramePipeline, PipelineConfig  # noqa: E402
from operators.frames import Frame  # noqa: E402
from operators.membank import BankConfig, MemoryBank  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--count", type=int, default=260)
    ap.add_argument("--references", type=int, default=20)
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--field", default="synthetic")
    ap.add_argument("--min-overlap", type=int, default=16, help="pixels of a box in a patch")
    ap.add_argument("--position-factor", type=float, default=None)
    ap.add_argument("--pool", type=int, default=POOL, help="cells pooled per patch side")
    ap.add_argument(
        "--no-difference", action="store_true", help="patch distances alone (no difference imaging)"
    )
    args = ap.parse_args(argv)

    sim = TelescopeSimConfig(
        seed=args.seed, count=args.count, references=args.references, fields=(args.field,)
    )
    frames = list(iter_frames(sim))
    refs: dict[str, list[Frame]] = defaultdict(list)
    rest: list[Frame] = []
    for f in frames:
        if len(refs[f.target]) < args.references:
            refs[f.target].append(f)
        else:
            rest.append(f)
    embedder = PatchEmbedder(args.model)
    pcfg = PipelineConfig(pool=args.pool)
    if args.no_difference:
        pcfg = replace(pcfg, difference=None)
    if args.position_factor is not None:
        pcfg = replace(pcfg, position_factor=args.position_factor)
    out: dict[str, object] = {
        "seed": args.seed,
        "frames": len(frames),
        "model": args.model,
        "difference": not args.no_difference,
    }
    with tempfile.TemporaryDirectory() as tmp:
        bank = MemoryBank(BankConfig(uri=f"{tmp}/bank.db", dim=embedder.dim + 2)).open()
        try:
            pipe = FramePipeline(embedder, bank, pcfg)
            t0 = time.perf_counter()
            for target, fs in refs.items():
                pipe.index(target, fs)
            out["index_s"] = round(time.perf_counter() - t0, 2)
            original = {t: OriginalMethod([f.pixels for f in fs]) for t, fs in refs.items()}
            scored = []
            t0 = time.perf_counter()
            for f in rest:
                scored.append(pipe.score(f))
            out["score_ms_per_frame"] = round(1000 * (time.perf_counter() - t0) / len(rest), 1)
            out["patches_per_target"] = {t: bank.count(t) for t in refs}
        finally:
            bank.close()
    usable = [s for s in scored if s.frame.unusable is None]
    unusable = [s for s in scored if s.frame.unusable is not None]
    out["unusable_skipped"] = f"{sum(s.skipped is not None for s in unusable)}/{len(unusable)}"
    wrongly = [s.skipped for s in usable if s.skipped is not None]
    out["usable_skipped"] = len(wrongly)
    if wrongly:
        out["usable_skipped_reasons"] = wrongly[:5]
    judged = [s for s in usable if s.skipped is None]
    y = np.array([bool(s.frame.truth) for s in judged])
    fs = np.array([s.score for s in judged])
    orig = np.array([original[s.frame.target].score(s.frame.pixels) for s in judged])
    out["frames_judged"] = len(judged)
    out["anomalous_frames"] = int(y.sum())
    out["frame_auroc"] = round(auroc(fs, y), 4)
    out["original_frame_auroc"] = round(auroc(orig, y), 4)
    thr = np.array([s.threshold for s in judged])
    alerted = fs > thr
    out["false_alarms_per_normal_frame"] = round(float(alerted[~y].mean()), 4)
    patch_scores, patch_y, patch_kind = [], [], []
    kinds_frames: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(judged):
        stride = 16 * args.pool
        rows, cols = -(-s.frame.shape[0] // stride), -(-s.frame.shape[1] // stride)
        assert s.anomaly_map is not None
        z = s.anomaly_map[::stride, ::stride][:rows, :cols].ravel()
        labels = patch_labels(s.frame.truth, (rows, cols), stride, args.min_overlap).ravel()
        kind = np.full(len(z), "", dtype=object)
        for b in s.frame.truth:
            kinds_frames[b.kind].append(i)
            mask = patch_labels((b,), (rows, cols), stride, args.min_overlap).ravel()
            kind[mask] = b.kind
        patch_scores.append(z)
        patch_y.append(labels)
        patch_kind.append(kind)
    pz, py, pk = np.concatenate(patch_scores), np.concatenate(patch_y), np.concatenate(patch_kind)
    out["patch_auroc"] = round(auroc(pz, py), 4)
    per_kind = {}
    normal = np.flatnonzero(~y)
    for kind, idx in sorted(kinds_frames.items()):
        idx_u = np.unique(idx)
        sel = np.concatenate((idx_u, normal))
        lab = np.concatenate((np.ones(len(idx_u), bool), np.zeros(len(normal), bool)))
        pmask = (pk == kind) | ~py
        per_kind[kind] = {
            "frames": len(idx_u),
            "frame_auroc": round(auroc(fs[sel], lab), 4),
            "original_frame_auroc": round(auroc(orig[sel], lab), 4),
            "patch_auroc": round(auroc(pz[pmask], py[pmask]), 4),
            "detected": round(float(alerted[idx_u].mean()), 3),
        }
    out["per_kind"] = per_kind
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
