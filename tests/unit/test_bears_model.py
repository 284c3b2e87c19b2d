"""The shipped bear autoencoder: stored reference outputs, torch agreement, record, evaluation."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from generators.bears import BearSeries
from operators import bears_eval
from operators.bears_eval import evaluate_flags, load_model, original_flags
from operators.models.lstm_ae import INPUT, OUTPUT, WINDOW, AutoencoderWeights, from_onnx, to_onnx
from operators.windowmodel import WindowModel

pytestmark = pytest.mark.timeout(120)

MODELS = Path(bears_eval.__file__).resolve().parent / "models"
ONNX_PATH = MODELS / "bears_lstm_ae.onnx"
RECORD = json.loads((MODELS / "bears_lstm_ae.json").read_text())
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "bears_lstm_ae_reference.npz"
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    return ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


def test_onnxruntime_gives_the_stored_reference_outputs(
    session: ort.InferenceSession, reference: dict[str, np.ndarray]
) -> None:
    x = reference["inputs"]
    assert x.shape == (10, WINDOW, 1)
    assert x.dtype == np.float32
    out = session.run([OUTPUT], {INPUT: x})[0]
    np.testing.assert_allclose(out, reference["outputs"], atol=1e-5)
    # The reconstruction follows normal windows closely and misses the injected spike.
    errors = np.abs(out - x).mean(axis=(1, 2))
    assert errors[0] < 0.2
    assert errors[1] > errors[0]


def test_batch_axis_is_dynamic(
    session: ort.InferenceSession, reference: dict[str, np.ndarray]
) -> None:
    x = reference["inputs"]
    one = [session.run([OUTPUT], {INPUT: x[i : i + 1]})[0] for i in range(3)]
    np.testing.assert_allclose(np.concatenate(one), reference["outputs"][:3], atol=1e-5)
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    assert (inp.name, inp.type, inp.shape[1:]) == (INPUT, "tensor(float)", [WINDOW, 1])
    assert isinstance(inp.shape[0], str)
    assert (out.name, out.shape[1:]) == (OUTPUT, [WINDOW, 1])


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (the train extra)")
def test_torch_rebuilt_from_the_file_agrees(reference: dict[str, np.ndarray]) -> None:
    import torch

    from operators.models.train_bears import build_torch_model, load_weights

    weights = from_onnx(onnx.load(ONNX_PATH))
    model = load_weights(build_torch_model(weights.hidden, dropout=0.2), weights)
    with torch.no_grad():
        out = model(torch.from_numpy(reference["inputs"])).numpy()
    np.testing.assert_allclose(out, reference["outputs"], atol=1e-5)


def test_weights_read_back_write_the_same_model(
    session: ort.InferenceSession, reference: dict[str, np.ndarray]
) -> None:
    weights = from_onnx(onnx.load(ONNX_PATH))
    assert weights.hidden == 128
    rewritten = ort.InferenceSession(to_onnx(weights).SerializeToString())
    x = reference["inputs"]
    assert np.array_equal(rewritten.run(None, {INPUT: x})[0], session.run(None, {INPUT: x})[0])
    # float16 storage: rounding the read-back weights again changes nothing.
    again = weights.rounded()
    assert np.array_equal(again.decoder.w_hh, weights.decoder.w_hh)


def test_random_weights_round_trip_through_onnx() -> None:
    w = AutoencoderWeights.random(hidden=8, seed=3).rounded()
    back = from_onnx(to_onnx(w))
    for a, b in [
        (w.encoder.w_ih, back.encoder.w_ih),
        (w.encoder.b_hh, back.encoder.b_hh),
        (w.decoder.w_hh, back.decoder.w_hh),
        (w.dense_w, back.dense_w),
        (w.dense_b, back.dense_b),
    ]:
        assert np.array_equal(a, b)


def test_the_record_describes_the_shipped_file() -> None:
    data = ONNX_PATH.read_bytes()
    assert RECORD["sha256"] == hashlib.sha256(data).hexdigest()
    assert RECORD["bytes"] == len(data) < 500_000
    assert (RECORD["kind"], RECORD["window"], RECORD["channels"]) == ("autoencoder", 30, 1)
    assert 20.0 < RECORD["center"][0] < 80.0
    assert 5.0 < RECORD["scale"][0] < 40.0
    assert RECORD["reference"] == sorted(RECORD["reference"])
    loss = RECORD["loss"]
    assert loss["by_epoch"][-1] == loss["train_last_epoch"] < loss["by_epoch"][0]
    assert RECORD["settings"]["hidden"] == 128
    model = onnx.load(ONNX_PATH)
    assert RECORD["opset"] == model.opset_import[0].version
    props = {p.key: p.value for p in model.metadata_props}
    assert float(props["center"]) == RECORD["center"][0]


def test_the_recorded_heldout_figures_are_reproduced() -> None:
    figures = bears_eval.heldout_figures(load_model())
    assert figures == RECORD["heldout"]


def test_window_model_reads_the_record() -> None:
    model = WindowModel.from_record("bears", MODELS / "bears_lstm_ae.json")
    assert model.window == WINDOW
    assert model.reference[0] <= model.reference[-1]


@dataclass
class _FixedErrors:
    """A stand-in model whose window errors are given."""

    errors: np.ndarray
    error: str = "mean"

    def run(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert len(windows) == len(self.errors)
        return self.errors, np.full((len(windows), 1), np.nan)


def _bear(days: int) -> BearSeries:
    n = days * 4
    ts = 1_704_067_200_000 + np.arange(n, dtype=np.int64) * 21_600_000
    labels = np.zeros(n, np.int8)
    labels[60] = 2
    return BearSeries("bear-0", ts, np.full(n, 20.0), labels)


def test_original_flags_the_reading_after_the_window_and_widens_by_a_day() -> None:
    bear = _bear(days=20)
    errors = np.zeros(len(bear) - WINDOW + 1)
    errors[40] = 0.5  # window of readings 40..69
    model = _FixedErrors(errors)
    after = original_flags(bear, model, widen_days=0)  # type: ignore[arg-type]
    assert np.flatnonzero(after).tolist() == [70]
    own = original_flags(bear, model, widen_days=0, next_reading=False)  # type: ignore[arg-type]
    assert np.flatnonzero(own).tolist() == [69]
    wide = original_flags(bear, model)  # type: ignore[arg-type]
    assert np.flatnonzero(wide).tolist() == list(range(64, 76))  # days 16, 17 and 18
    at_threshold = original_flags(bear, _FixedErrors(errors * 0.96), widen_days=0)  # type: ignore[arg-type]
    assert not at_threshold.any()


def test_evaluate_flags_counts_from_the_given_time() -> None:
    bear = _bear(days=20)
    flags = np.zeros(len(bear), bool)
    flags[[10, 61, 75]] = True
    r = evaluate_flags([bear], [flags], from_ms=int(bear.ts_ms[20]), grace_s=86_400.0)
    # Reading 10 is before the scored part; 61 is within a day of the spike at 60; 75 is not.
    assert (r.events, r.episodes, r.detected, r.alerts, r.true_alerts) == (60, 1, 1, 2, 1)
    assert r.delays_s == (6 * 3600.0,)
