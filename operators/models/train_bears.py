"""Train the bear heart-rate LSTM autoencoder on simulated clean years; export it to ONNX.

Run with the ``train`` extra installed (torch)::

    pip install -e '.[train]'
    python -m operators.models.train_bears            # writes beside this module
    python -m operators.models.train_bears --reference tests/data/bears_lstm_ae_reference.npz
    python -m operators.models.train_bears --check    # retrain, compare with the shipped record

What it does, following the original bear pipeline where it was explicit:

* **data**: the clean first year (no anomaly) of :attr:`TrainSettings.bears` simulated
  bears (:mod:`generators.bears`, data seed :attr:`TrainSettings.data_seed`); the last
  :attr:`TrainSettings.val_bears` of them are held out for the validation loss;
* **scaling**: standardised with the mean and standard deviation of the training
  readings (the original's ``StandardScaler``), recorded as ``center`` and ``scale``
  (the format :class:`operators.windowmodel.WindowModel` reads); the model takes
  scaled readings;
* **windows**: every run of 30 consecutive readings (stride 1);
* **model** (:mod:`operators.models.lstm_ae`): ``LSTM(128)``, dropout 0.2, repeat 30,
  ``LSTM(128)`` returning sequences, dropout 0.2, dense to one value per step;
* **training**: Adam (learning rate 1e-3), mean absolute error (the original's loss),
  batches of 32 in a seeded shuffled order, one torch thread, deterministic algorithms.
  The original fed the next reading as the target, which Keras broadcast over the 30
  steps, so its model learnt to repeat the next value; here the target is the window
  itself, as an autoencoder's should be.

The record ``bears_lstm_ae.json`` holds the settings, the scale, the losses (the last
epoch's training loss with dropout, as Keras reports it, and the mean absolute error
of the exported model on the training and validation windows), the held-out figures of
the original's fixed-threshold alerting (:mod:`operators.bears_eval`), versions and the
file's sha256. ``--check`` retrains with the recorded settings and compares: losses
within :data:`LOSS_RTOL` (relative), held-out figures within :data:`METRIC_ATOL`.
On one machine the retrained file is byte for byte the same; other CPUs or torch
builds may round differently, which the tolerances absorb.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from generators.bears import BearSimConfig, bear_series
from operators.bears_eval import MODEL_NAME, heldout_figures, windows_of
from operators.events import FloatArray
from operators.models.lstm_ae import (
    INPUT,
    IR_VERSION,
    OPSET,
    OUTPUT,
    WINDOW,
    AutoencoderWeights,
    LstmWeights,
    to_onnx,
)
from operators.windowmodel import WindowModel

__all__ = [
    "COMMAND",
    "LOSS_RTOL",
    "METRIC_ATOL",
    "MODEL_FILE",
    "RECORD_FILE",
    "TrainSettings",
    "build_torch_model",
    "load_weights",
    "main",
    "training_data",
    "weights_of",
]

HERE = Path(__file__).resolve().parent
MODEL_FILE = "bears_lstm_ae.onnx"
RECORD_FILE = "bears_lstm_ae.json"
COMMAND = "python -m operators.models.train_bears"
#: ``--check``: relative tolerance of the losses, absolute of the held-out figures.
LOSS_RTOL = 0.05
METRIC_ATOL = 0.05
_SOURCES = ("torch", "onnx", "onnxruntime", "numpy")
#: Points of the calibration prior (quantiles of the validation windows' errors).
REFERENCE_POINTS = 256
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class TrainSettings:
    """How the model is trained (recorded in full).

    Attributes:
        data_seed: Seed of the simulated bears.
        bears: Simulated bears; the last ``val_bears`` are held out for validation.
        val_bears: Bears held out for the validation loss.
        days: Days of each bear, all clean (the simulator's first year).
        hidden: Units of each LSTM layer.
        dropout: Dropout after each LSTM layer in training.
        epochs: Passes over the training windows.
        batch_size: Windows per optimiser step.
        learning_rate: Adam's learning rate.
        torch_seed: Seed of the initial weights, the shuffling and the dropout.
        threads: Torch threads (one: the same sums in the same order on every run).

    """

    data_seed: int = 7
    bears: int = 12
    val_bears: int = 2
    days: int = 365
    hidden: int = 128
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 1e-3
    torch_seed: int = 0
    threads: int = 1


def _require(name: str) -> Any:
    """Import an optional dependency of the ``train`` extra, naming the extra if missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SystemExit(
            f"train_bears: needs {name!r} from the train extra: pip install -e '.[train]'"
        ) from exc


def training_data(s: TrainSettings) -> tuple[F32, F32, tuple[float, float]]:
    """Training and validation windows ``float32 (n, 30, 1)`` in bpm, and the scale.

    Returns:
        ``(train, validation, (mean, std))``, the scale of the training readings.

    Example:
        >>> train, val, (mean, std) = training_data(TrainSettings(bears=2, val_bears=1, days=20))
        >>> train.shape, val.shape, 15 < mean < 30
        ((51, 30, 1), (51, 30, 1), True)

    """
    sim = BearSimConfig(bears=s.bears, seed=s.data_seed, clean_days=s.days)
    series = bear_series(sim, s.days)
    fit, held = series[: s.bears - s.val_bears], series[s.bears - s.val_bears :]
    values = np.concatenate([b.values for b in fit])
    return (
        np.concatenate([windows_of(b.values) for b in fit]),
        np.concatenate([windows_of(b.values) for b in held]),
        (float(values.mean()), float(values.std())),
    )


def build_torch_model(hidden: int, dropout: float = 0.0) -> Any:
    """The autoencoder as a torch module (needs torch), in training mode.

    Submodules ``encoder``, ``decoder`` (``nn.LSTM``, batch first), ``drop`` and ``dense``.
    """
    torch = _require("torch")
    nn = torch.nn

    def forward(self: Any, x: Any) -> Any:
        _, (h, _) = self.encoder(x)
        code = self.drop(h[-1]).unsqueeze(1).expand(-1, x.shape[1], -1)
        y, _ = self.decoder(code)
        return self.dense(self.drop(y))

    model = type("LstmAutoencoder", (nn.Module,), {"forward": forward})()
    model.encoder = nn.LSTM(1, hidden, batch_first=True)
    model.decoder = nn.LSTM(hidden, hidden, batch_first=True)
    model.drop = nn.Dropout(dropout)
    model.dense = nn.Linear(hidden, 1)
    return model


def weights_of(model: Any) -> AutoencoderWeights:
    """The weights of a :func:`build_torch_model` module as numpy arrays."""

    def a(t: Any) -> np.ndarray:
        return np.asarray(t.detach().cpu().numpy(), np.float32)

    def layer(m: Any) -> LstmWeights:
        return LstmWeights(a(m.weight_ih_l0), a(m.weight_hh_l0), a(m.bias_ih_l0), a(m.bias_hh_l0))

    return AutoencoderWeights(
        layer(model.encoder), layer(model.decoder), a(model.dense.weight), a(model.dense.bias)
    )


def load_weights(model: Any, w: AutoencoderWeights) -> Any:
    """Copy ``w`` into a :func:`build_torch_model` module; returns it in eval mode."""
    torch = _require("torch")
    arrays = {
        "encoder.weight_ih_l0": w.encoder.w_ih,
        "encoder.weight_hh_l0": w.encoder.w_hh,
        "encoder.bias_ih_l0": w.encoder.b_ih,
        "encoder.bias_hh_l0": w.encoder.b_hh,
        "decoder.weight_ih_l0": w.decoder.w_ih,
        "decoder.weight_hh_l0": w.decoder.w_hh,
        "decoder.bias_ih_l0": w.decoder.b_ih,
        "decoder.bias_hh_l0": w.decoder.b_hh,
        "dense.weight": w.dense_w,
        "dense.bias": w.dense_b,
    }
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
    return model.eval()


def train(s: TrainSettings, train_x: np.ndarray, log: Any = print) -> tuple[Any, list[float]]:
    """Train on scaled windows ``train_x``; returns the model (eval mode) and each epoch's loss."""
    torch = _require("torch")
    torch.set_num_threads(s.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(s.torch_seed)
    model = build_torch_model(s.hidden, s.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=s.learning_rate)
    order = torch.Generator().manual_seed(s.torch_seed)
    x = torch.from_numpy(train_x)
    losses = []
    for epoch in range(s.epochs):
        model.train()
        started, total = time.monotonic(), 0.0
        for idx in torch.randperm(len(x), generator=order).split(s.batch_size):
            batch = x[idx]
            opt.zero_grad()
            loss = (model(batch) - batch).abs().mean()
            loss.backward()
            opt.step()
            total += float(loss) * len(idx)
        losses.append(total / len(x))
        took = time.monotonic() - started
        log(f"epoch {epoch + 1}/{s.epochs}: loss {losses[-1]:.5f} ({took:.1f}s)")
    return model.eval(), losses


def _versions() -> dict[str, str]:
    return {name: importlib_metadata.version(name) for name in _SOURCES}


def _quantiles(values: FloatArray, n: int = REFERENCE_POINTS) -> list[float]:
    """``n`` evenly spaced order statistics of ``values``, rounded (the calibration prior)."""
    q = np.quantile(values, np.linspace(0.0, 1.0, n))
    return [round(float(v), 6) for v in q]


def run(s: TrainSettings, out: Path, reference: Path | None = None) -> dict[str, Any]:
    """Train, export ``MODEL_FILE`` and ``RECORD_FILE`` into ``out``; returns the record."""
    started = time.monotonic()
    train_x, val_x, (mean, std) = training_data(s)
    print(f"windows: {len(train_x)} training, {len(val_x)} validation; scale {mean:.4f} {std:.4f}")
    model, losses = train(s, ((train_x - mean) / std).astype(np.float32))
    meta = {"center": repr(mean), "scale": repr(std), "command": COMMAND}
    out.mkdir(parents=True, exist_ok=True)
    path = out / MODEL_FILE
    onnx.save(to_onnx(weights_of(model), meta), path)
    ae = WindowModel(MODEL_NAME, path, WINDOW, 1, "autoencoder", (mean,), (std,), threads=0)
    window_mae = dataclasses.replace(ae, error="mean")  # the training loss's own measure
    train_err, val_err = window_mae.run(train_x)[0], window_mae.run(val_x)[0]
    data = path.read_bytes()
    record: dict[str, Any] = {
        "file": MODEL_FILE,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "kind": "autoencoder",
        "window": WINDOW,
        "channels": 1,
        "center": [mean],
        "scale": [std],
        "input": f"{INPUT} float32 (batch, {WINDOW}, 1): readings as (bpm - center) / scale",
        "output": f"{OUTPUT} float32 (batch, {WINDOW}, 1), in the same units",
        "architecture": (
            f"LSTM({s.hidden}) - dropout {s.dropout} - repeat {WINDOW} - "
            f"LSTM({s.hidden}, sequences) - dropout {s.dropout} - dense(1) per step"
        ),
        "storage": "weights float16 in the file, cast to float32 when loaded",
        "settings": asdict(s),
        "data": (
            f"generators.bears.BearSimConfig(bears={s.bears}, seed={s.data_seed}): first "
            f"{s.days} days (clean); bears 0..{s.bears - s.val_bears - 1} train, the rest validate"
        ),
        "loss": {
            "train_last_epoch": round(losses[-1], 6),
            "train_mae": round(float(train_err.mean()), 6),
            "val_mae": round(float(val_err.mean()), 6),
            "by_epoch": [round(v, 6) for v in losses],
        },
        "reference": _quantiles(ae.run(val_x)[0]),
        "reference_note": (
            f"{REFERENCE_POINTS} evenly spaced quantiles of the validation windows' error at "
            "their newest reading (what the flow scores; WindowModel error='last')"
        ),
        "heldout": heldout_figures(ae),
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "versions": _versions(),
        "seconds": round(time.monotonic() - started, 1),
        "tolerance": {"loss_rtol": LOSS_RTOL, "metric_atol": METRIC_ATOL},
        "command": COMMAND,
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if reference is not None:
        _write_reference(path, (mean, std), reference)
    return record


def _write_reference(path: Path, scale: tuple[float, float], out: Path) -> None:
    """Fixed scaled inputs (held-out windows, one with a spike, seeded noise) and outputs."""
    import onnxruntime as ort

    [bear] = bear_series(BearSimConfig(bears=1, seed=99), 400)
    x = (windows_of(bear.values)[::200][:8] - scale[0]) / scale[1]
    x[1, 12, 0] += 3.0
    noise = np.random.default_rng(5).standard_normal((2, WINDOW, 1))
    inputs = np.concatenate([x, noise]).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run([OUTPUT], {INPUT: inputs})[0]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, inputs=inputs, outputs=outputs)
    print(f"wrote {out}")


def _compare(shipped: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """Differences beyond the tolerances between two records, one line each."""
    out = []
    for key in ("train_last_epoch", "train_mae", "val_mae"):
        a, b = shipped["loss"][key], fresh["loss"][key]
        if abs(a - b) > LOSS_RTOL * abs(a):
            out.append(f"loss {key}: recorded {a}, retrained {b}")
    for row, figures in shipped["heldout"]["rows"].items():
        for key in ("f1", "precision", "recall"):
            a, b = figures[key], fresh["heldout"]["rows"][row][key]
            if abs(a - b) > METRIC_ATOL:
                out.append(f"held-out {row} {key}: recorded {a}, retrained {b}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Train and export, or with ``--check`` retrain and compare with the shipped record."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder of the model and record")
    parser.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    parser.add_argument("--bears", type=int, default=TrainSettings.bears)
    parser.add_argument("--val-bears", type=int, default=TrainSettings.val_bears)
    parser.add_argument("--reference", type=Path, help="also write reference inputs/outputs here")
    parser.add_argument(
        "--check", action="store_true", help="retrain into a temporary folder and compare"
    )
    args = parser.parse_args(argv)
    if not args.check:
        settings = TrainSettings(epochs=args.epochs, bears=args.bears, val_bears=args.val_bears)
        record = run(settings, args.out, args.reference)
        print(json.dumps({k: record[k] for k in ("sha256", "bytes", "loss", "seconds")}, indent=2))
        return 0
    shipped = json.loads((args.out / RECORD_FILE).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        fresh = run(TrainSettings(**shipped["settings"]), Path(tmp))
    problems = _compare(shipped, fresh)
    same = fresh["sha256"] == shipped["sha256"]
    print(f"retrained file {'identical to' if same else 'differs from'} the shipped one")
    for line in problems:
        print(line)
    print("check failed" if problems else "check passed: losses and held-out figures agree")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
