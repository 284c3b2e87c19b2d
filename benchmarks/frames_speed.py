"""Frames per second of the frame flow, end to end on one core, against banks of given sizes.

For each bank size: reference frames of the target are indexed until its
partition holds at least that many patches (plus, with ``--other-targets``,
other targets' references so the whole bank is larger than the partition a
frame searches), then the complete flow runs over pre-encoded 650 x 500 PNG
messages (decode, quality gate, ONNX patch features, one Milvus search of all
patches, scoring, alert and result records, the Rerun view to an ``.rrd``
file). Threads are pinned to one (onnxruntime, faiss, BLAS). Prints one JSON
line per bank size, with the time per frame of each stage measured outside
the flow on the same frames (decode, embed, difference against the target's
reference image, search, score: the parts of ``FramePipeline.score``; the
flow adds the quality gate, the records and the Rerun view).

Usage::

    .venv/bin/python benchmarks/frames_speed.py --frames 60 --bank-patches 26000,105000
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from bytewax.testing import TestingSink, TestingSource, run_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataflows.frames import Config, FrameSinks, build_flow  # noqa: E402
from generators.telescope import TelescopeSimConfig, iter_frames, iter_messages  # noqa: E402
from operators.events import RawBatch  # noqa: E402
from operators.framecodec import decode_frame  # noqa: E402
from operators.framepipe import POOL  # noqa: E402
from operators.framescore import score_patches, with_position  # noqa: E402
from operators.framesteps import SharedPipeline  # noqa: E402
from operators.sinks.rerun_frames import FrameRerunSink, FrameViewConfig  # noqa: E402


def stage_times(shared: SharedPipeline, values: list[bytes]) -> dict[str, float]:
    """Milliseconds per frame of each stage, outside the flow, as ``FramePipeline.score`` does.

    ``difference_ms`` is the difference imaging against the target's reference
    image (0 when the calibration has no such channel); ``score_ms`` scores the
    distances together with those differences.
    """
    pipe = shared.get()
    t = dict.fromkeys(("decode", "embed", "difference", "search", "score"), 0.0)
    for v in values:
        t0 = time.perf_counter()
        frame = decode_frame(v)
        t1 = time.perf_counter()
        feats = pipe._embed(frame)
        t2 = time.perf_counter()
        model = pipe.model(frame.target)
        assert model is not None
        cal = model.calibration
        diff = None
        if cal.diff_scale is not None:
            image = pipe.reference_image(frame.target)
            assert image is not None
            diff = image.cell_max(frame.pixels, cal.stride)
        t3 = time.perf_counter()
        d = pipe._search(frame.target, with_position(feats.features, cal.grid, cal.position))
        t4 = time.perf_counter()
        score_patches(d, cal, shape=frame.shape, diff=diff)
        t5 = time.perf_counter()
        for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            t[key] += dt
    return {f"{k}_ms": round(1000 * v / len(values), 1) for k, v in t.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60, help="frames scored per run")
    ap.add_argument("--bank-patches", default="26000,105000")
    ap.add_argument("--other-targets", type=int, default=0, help="extra targets in the bank")
    ap.add_argument("--other-frames", type=int, default=20, help="reference frames of each")
    ap.add_argument("--model", default="lite0")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--pool", type=int, default=POOL, help="model cells pooled per patch side")
    args = ap.parse_args(argv)

    base = TelescopeSimConfig(seed=args.seed, count=args.frames, sequence_len=0)
    for size in (int(s) for s in args.bank_patches.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = Config(
                model=args.model,
                pool=args.pool,
                milvus_uri=f"{tmp}/bank.db",
                out_dir=Path(tmp),
                rerun=replace(Config().rerun, mode="rrd", path=Path(tmp) / "frames.rrd"),
            )
            shared = SharedPipeline(cfg.open_pipeline)
            with shared.lock:
                pipe = shared.get()
            rows, cols = pipe.embedder.grid((base.height, base.width))
            patches = -(-rows // args.pool) * -(-cols // args.pool)
            n_refs = max(5, -(-size // patches))
            # One night: the first n_refs frames are the references, the rest are scored.
            sim = replace(base, count=n_refs + args.frames, references=n_refs)
            messages = list(iter_messages(sim))[n_refs:]
            batches = [RawBatch("frames", 0, (k,), (v,), (i,)) for i, (k, v) in enumerate(messages)]
            t0 = time.perf_counter()
            pipe.index("M31", list(iter_frames(replace(sim, count=n_refs))))
            for k in range(args.other_targets):
                other = replace(
                    base,
                    seed=args.seed + 1 + k,
                    count=args.other_frames,
                    references=args.other_frames,
                    targets=(f"T{k}",),
                )
                pipe.index(f"T{k}", list(iter_frames(other)))
            index_s = time.perf_counter() - t0
            alerts: list = []
            results: list = []
            dead: list = []
            view = FrameRerunSink(FrameViewConfig(cfg.rerun))
            sinks = FrameSinks(TestingSink(alerts), TestingSink(results), TestingSink(dead), view)
            flow = build_flow(cfg, source=TestingSource(batches), sinks=sinks, pipeline=shared)
            t0 = time.perf_counter()
            run_main(flow)
            wall = time.perf_counter() - t0
            stages = stage_times(shared, [v for _, v in messages[: min(20, len(messages))]])
            report = {
                "partition_patches": pipe.bank.count("M31"),
                "bank_patches": pipe.bank.count(),
                "frames": len(results),
                "frames_per_s": round(len(results) / wall, 2),
                "ms_per_frame": round(1000 * wall / len(results), 1),
                **stages,
                "index_s": round(index_s, 1),
                "alerts": len(alerts),
                "difference": pipe.reference_image("M31") is not None,
                "model": args.model,
                "pool": args.pool,
                "patches_per_frame": patches,
                "size": f"{base.width}x{base.height}",
                "load_avg_1min": round(os.getloadavg()[0], 2),
            }
            shared.close()
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
