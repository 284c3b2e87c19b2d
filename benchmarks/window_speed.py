"""Windows per second through onnxruntime on one core, batched versus one window per call.

For each shipped window model (the bear autoencoder, the flow-site classifier and
autoencoder when present) this times :meth:`operators.windowmodel.WindowModel.run`
on the same random windows (in the model's raw units, around its centre) in one
process, interleaving the two ways so that the machine's load hits both alike:

* ``batched``: all windows of an activation in one call (``max_batch`` at a time),
  as the flows' ``infer`` step does across keys;
* ``single``: one window per call, as a per-key step would.

It prints one JSON object per model, and the ratio of the two rates::

    .venv/bin/python benchmarks/window_speed.py --windows 4096 --repeats 3

onnxruntime runs with one intra-op thread.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from operators.embedding import MODELS_DIR
from operators.windowmodel import WindowModel

RECORDS = {
    "bears-lstm-ae": MODELS_DIR / "bears_lstm_ae.json",
    "flowsites-classifier": MODELS_DIR / "flowsites_classifier.json",
    "flowsites-ae": MODELS_DIR / "flowsites_ae.json",
}


def windows_for(model: WindowModel, n: int, seed: int = 0) -> np.ndarray:
    """``n`` random windows in raw units: the centre plus a scale-sized wiggle."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, model.window, model.channels)).astype(np.float32)
    return z * np.asarray(model.scale, np.float32) + np.asarray(model.center, np.float32)


def rate(model: WindowModel, windows: np.ndarray, single: bool) -> float:
    """Windows per second of one pass."""
    started = time.perf_counter()
    if single:
        for i in range(len(windows)):
            model.run(windows[i : i + 1])
    else:
        model.run(windows)
    return len(windows) / (time.perf_counter() - started)


def measure(name: str, record: Path, n: int, singles: int, repeats: int) -> dict[str, object]:
    """The median rates of ``repeats`` interleaved passes of each way."""
    model = WindowModel.from_record(name, record, threads=1, max_batch=1024)
    windows = windows_for(model, n)
    model.run(windows[:8])  # load the session
    batched, single = [], []
    for _ in range(repeats):
        batched.append(rate(model, windows, single=False))
        single.append(rate(model, windows[:singles], single=True))
    b, s = statistics.median(batched), statistics.median(single)
    return {
        "model": name,
        "kind": model.kind,
        "window": model.window,
        "channels": model.channels,
        "batched_windows_per_s": round(b),
        "single_windows_per_s": round(s),
        "batched_over_single": round(b / s, 1),
        "windows": n,
        "single_windows": singles,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    """Measure every shipped window model; print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=4096, help="windows of a batched pass")
    parser.add_argument("--single", type=int, default=500, help="windows of a one-by-one pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for name, record in RECORDS.items():
        if record.is_file():
            print(json.dumps(measure(name, record, args.windows, args.single, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
