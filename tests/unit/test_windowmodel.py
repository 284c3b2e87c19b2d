"""Window models on streams: windows per key, batched inference, calibration, the Bytewax steps."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import bytewax.operators as op
import numpy as np
import onnx
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from onnx import TensorProto, helper

from operators.errorcal import ErrorCalibrator
from operators.events import DetectedBatch, SeriesBatch
from operators.windowmodel import (
    WindowedBatch,
    WindowModel,
    WindowState,
    detect_windows,
    infer_many,
)

pytestmark = pytest.mark.timeout(120)
HALF = 0.5  # the test autoencoder reconstructs half of its input


def _half_model(path: Path, kind: str = "autoencoder") -> Path:
    """An ONNX 'autoencoder' whose reconstruction is half its input (or a 'classifier')."""
    x = helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", None, None])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [HALF])
    if kind == "autoencoder":
        y = helper.make_tensor_value_info(
            "reconstruction", TensorProto.FLOAT, ["batch", None, None]
        )
        nodes = [helper.make_node("Mul", ["window", "half"], ["reconstruction"])]
    else:  # probability: sigmoid of the mean of the window
        y = helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])
        nodes = [
            helper.make_node("ReduceMean", ["window"], ["m"], axes=[1, 2], keepdims=0),
            helper.make_node("Sigmoid", ["m"], ["probability"]),
        ]
    graph = helper.make_graph(nodes, "half", [x], [y], initializer=[half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def model(tmp_path: Path) -> WindowModel:
    path = _half_model(tmp_path / "half.onnx")
    return WindowModel("half-ae", path, 4, 2, "autoencoder", (10.0, 0.0), (2.0, 1.0))


def _batch(series: str, start: int, values: np.ndarray) -> SeriesBatch:
    n = len(values)
    return SeriesBatch(
        series=series,
        ts_ms=(start + np.arange(n, dtype=np.int64)) * 300_000,
        values=values[:, 0].astype(np.float64),
        labels=(None,) * n,
        channels=values.astype(np.float64),
    )


def test_windows_do_not_depend_on_how_readings_are_split() -> None:
    rows = np.random.default_rng(0).normal(size=(40, 2))
    naive = np.stack([rows[i - 4 : i] for i in range(4, 41)])
    for cuts in ([40], [1, 1, 1, 37], [3, 10, 27], [2, 2, 2, 2, 32]):
        state, got, at = WindowState.empty(2), [], 0
        for n in cuts:
            wins, first = state.push(rows[at : at + n], 4)
            assert len(wins) == n - first
            assert first == min(max(3 - at, 0), n)
            got.append(wins)
            at += n
        np.testing.assert_allclose(np.concatenate(got), naive, rtol=1e-6)


def test_autoencoder_outputs_are_scaled_errors_and_raw_reconstructions(model: WindowModel) -> None:
    wins = np.random.default_rng(1).normal(10.0, 3.0, (5, 4, 2)).astype(np.float32)
    outputs, expected = model.run(wins)
    scaled = (wins - np.array([10.0, 0.0])) / np.array([2.0, 1.0])
    # The default: the newest reading's error, averaged over channels.
    np.testing.assert_allclose(outputs, (1 - HALF) * np.abs(scaled[:, -1]).mean(axis=1), rtol=1e-5)
    whole = replace(model, error="mean").run(wins)[0]
    np.testing.assert_allclose(whole, (1 - HALF) * np.abs(scaled).mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(
        expected, HALF * scaled[:, -1] * np.array([2.0, 1.0]) + np.array([10.0, 0.0]), rtol=1e-5
    )


def test_classifier_outputs_probabilities(tmp_path: Path) -> None:
    path = _half_model(tmp_path / "clf.onnx", "classifier")
    clf = WindowModel("clf", path, 3, 1, "classifier", (0.0,), (1.0,), max_batch=2)
    wins = np.array([[[0.0], [0.0], [0.0]], [[9.0], [9.0], [9.0]], [[-9.0], [-9.0], [-9.0]]])
    outputs, expected = clf.run(wins.astype(np.float32))
    np.testing.assert_allclose(
        outputs, [0.5, 1 / (1 + np.exp(-9)), 1 / (1 + np.exp(9))], rtol=1e-5, atol=1e-7
    )
    assert np.isnan(expected).all()


def test_one_call_for_many_keys_equals_one_call_per_key(model: WindowModel) -> None:
    rng = np.random.default_rng(2)
    items = []
    for key, n in (("a", 7), ("b", 2), ("c", 12)):
        state = WindowState.empty(2)
        rows = rng.normal(10.0, 2.0, (n, 2))
        wins, first = state.push(rows, model.window)
        items.append((key, WindowedBatch(_batch(key, 0, rows), wins, first)))
    together = infer_many(model, items)
    for (key, wb), (k2, mo) in zip(items, together, strict=True):
        alone = infer_many(model, [(key, wb)])[0][1]
        assert k2 == key
        assert np.isnan(mo.outputs[: wb.first]).all()
        np.testing.assert_array_equal(mo.outputs, alone.outputs)
        np.testing.assert_array_equal(mo.expected, alone.expected)


def test_calibrator_uses_the_reference_until_it_has_its_own_history() -> None:
    cal = ErrorCalibrator(reference=tuple(np.linspace(0.0, 1.0, 101)), min_history=100, refresh=10)
    first = cal.surprise(np.array([0.05, 5.0]))
    assert first[0] < 0.5 < 3.0 < first[1]
    # The series' own outputs are ten times smaller: once learned, 0.5 is surprising.
    cal.surprise(np.random.default_rng(3).uniform(0.0, 0.1, 300))
    assert cal.surprise(np.array([0.5]))[0] > 3.0
    assert len(cal.own) == 301  # neither 5.0 nor the 0.5 just scored were learned
    restored = pickle.loads(pickle.dumps(cal))
    probe = np.array([0.05, 0.5, 0.07])
    np.testing.assert_array_equal(restored.surprise(probe), cal.surprise(probe))


def test_calibration_does_not_depend_on_how_outputs_are_split() -> None:
    rng = np.random.default_rng(5)
    outputs = rng.gamma(2.0, 0.05, 2000)
    outputs[rng.integers(200, 2000, 30)] = 3.0  # surprising once there is a history: not learned
    outputs[rng.integers(0, 2000, 10)] = np.nan
    whole = ErrorCalibrator(reference=(), min_history=50, refresh=20).surprise(outputs)
    assert whole.max() > 3.0
    for cuts in ([1] * 100 + [1900], [7, 13, 333, 1647], [999, 1001]):
        cal = ErrorCalibrator(reference=(), min_history=50, refresh=20)
        parts, at = [], 0
        for n in cuts:
            parts.append(cal.surprise(outputs[at : at + n]))
            at += n
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_nan_outputs_score_zero_and_are_not_learned() -> None:
    cal = ErrorCalibrator(reference=tuple(np.linspace(0.0, 1.0, 101)))
    out = cal.surprise(np.array([np.nan, np.nan, 0.5]))
    assert out[:2].tolist() == [0.0, 0.0]
    assert len(cal.own) == 1


def test_the_steps_in_a_dataflow_match_direct_computation(model: WindowModel) -> None:
    rng = np.random.default_rng(4)
    data = {k: rng.normal(10.0, 1.0, (30, 2)) for k in ("s1", "s2")}
    data["s2"][20] = (40.0, 9.0)  # far off the series
    batches = [
        (k, _batch(k, lo, data[k][lo : lo + 6])) for lo in range(0, 30, 6) for k in ("s1", "s2")
    ]
    flow = Dataflow("windows")
    up = op.input("in", flow, TestingSource(batches))
    out: list[tuple[str, DetectedBatch]] = []
    calibrator = ErrorCalibrator(min_history=8, refresh=4)  # no reference: learn from the start
    op.output("out", detect_windows("detect", up, model, calibrator), TestingSink(out))
    run_main(flow)
    by_key: dict[str, list[DetectedBatch]] = {}
    for key, det in out:
        by_key.setdefault(key, []).append(det)
    for key, rows in data.items():
        dets = by_key[key]
        raw = np.concatenate([d.raw_scores for d in dets])
        state = WindowState.empty(2)
        wins, _ = state.push(rows, 4)
        direct, expected = model.run(wins)
        np.testing.assert_allclose(raw[3:], direct, rtol=1e-6)
        assert raw[:3].tolist() == [0.0, 0.0, 0.0]
        got_expected = np.concatenate([d.expected for d in dets if d.expected is not None])
        np.testing.assert_allclose(got_expected[3:], expected[:, 0], rtol=1e-6)
    s2 = np.concatenate([d.scores for d in by_key["s2"]])
    assert int(s2.argmax()) in (20, 21, 22, 23)  # the windows that hold the outlier
    assert s2.max() > 0.99
    s1 = np.concatenate([d.scores for d in by_key["s1"]])
    assert s1.max() < s2.max()


def test_bad_models_are_refused(tmp_path: Path) -> None:
    path = _half_model(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="kind"):
        WindowModel("m", path, 4, 1, "forecaster", (0.0,), (1.0,))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        WindowModel("m", path, 4, 1, "autoencoder", (0.0,), (0.0,))
    with pytest.raises(ValueError, match="center and scale"):
        WindowModel("m", path, 4, 2, "autoencoder", (0.0,), (1.0,))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WindowModel("m", tmp_path / "none.onnx", 4, 1, "autoencoder", (0.0,), (1.0,))
