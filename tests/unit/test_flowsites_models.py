"""The shipped flow-site models: records, stored reference outputs, torch, graphs, evaluation.

``python -m operators.models.train_flowsites --reference tests/data/flowsites_reference.npz``
rewrites the reference (only together with the shipped models).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from generators.flowsites import LABELS, FlowSiteConfig, site_arrays
from operators.flowsites_eval import (
    MODELS,
    auroc,
    average_precision,
    evaluate_flags,
    heldout_figures,
    load_model,
    original_flags,
    window_metrics,
    windows_of,
)
from operators.models.flowsites_onnx import (
    autoencoder_model,
    autoencoder_shapes,
    classifier_model,
    classifier_shapes,
    state_from_onnx,
)

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "tests" / "data" / "flowsites_reference.npz"
KINDS = ("classifier", "autoencoder")


def record(kind: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(MODELS[kind][1].read_text())
    return doc


def session(kind: str) -> ort.InferenceSession:
    path = MODELS[kind][1].with_suffix(".onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_model_matches_its_record(kind: str) -> None:
    doc = record(kind)
    data = MODELS[kind][1].with_suffix(".onnx").read_bytes()
    assert hashlib.sha256(data).hexdigest() == doc["sha256"]
    assert len(data) == doc["bytes"] < 2_500_000
    assert (doc["kind"], doc["window"], doc["channels"]) == (kind, 50, 5)
    assert len(doc["center"]) == len(doc["scale"]) == 5  # type: ignore[arg-type]
    reference = doc["reference"]
    assert isinstance(reference, list)
    assert len(reference) == 256
    assert reference == sorted(reference)


@pytest.mark.parametrize("kind", KINDS)
def test_onnxruntime_reproduces_the_stored_reference_outputs(kind: str) -> None:
    ref = np.load(REFERENCE)
    got = session(kind).run(None, {"window": ref["inputs"]})[0]
    np.testing.assert_allclose(got, ref[kind], rtol=1e-5, atol=1e-5)
    # One window at a time gives the same numbers as the batch (dynamic batch axis).
    one = session(kind).run(None, {"window": ref["inputs"][3:4]})[0]
    np.testing.assert_allclose(one[0], got[3], rtol=1e-5, atol=1e-6)


def test_classifier_separates_the_reference_windows() -> None:
    ref = np.load(REFERENCE)
    # Four validation windows whose last reading is normal, four faulty, two of noise.
    p = ref["classifier"]
    assert p.shape == (10,)
    assert np.all((p >= 0) & (p <= 1))
    assert p[:4].max() < 0.1
    assert (p[4:8] >= 0.5).sum() >= 3


@pytest.mark.parametrize("kind", KINDS)
def test_the_models_match_torch(kind: str) -> None:
    torch = pytest.importorskip("torch")
    from operators.models.flowsites_torch import autoencoder_net, classifier_net, load_state

    model = onnx.load(MODELS[kind][1].with_suffix(".onnx"))
    state = state_from_onnx(model)
    hidden = state["head.weight" if kind == "classifier" else "output.weight"].shape[1]
    net = load_state((classifier_net if kind == "classifier" else autoencoder_net)(hidden), state)
    ref = np.load(REFERENCE)
    with torch.no_grad():
        out = net(torch.from_numpy(ref["inputs"]))
        out = torch.sigmoid(out) if kind == "classifier" else out
    np.testing.assert_allclose(out.numpy(), ref[kind], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_window_model_runs_the_record_on_raw_readings(kind: str) -> None:
    ref = np.load(REFERENCE)
    model = load_model(kind, threads=1)
    raw = ref["inputs"] * np.float32(model.scale) + np.float32(model.center)
    outputs, expected = model.run(raw.astype(np.float32))
    if kind == "classifier":
        np.testing.assert_allclose(outputs, ref["classifier"], rtol=1e-4, atol=1e-5)
    else:
        err = np.abs(ref["autoencoder"] - ref["inputs"])[:, -1, :].mean(axis=1)
        np.testing.assert_allclose(outputs, err, rtol=1e-4, atol=1e-5)
        last = ref["autoencoder"][:, -1, :] * np.float32(model.scale) + np.float32(model.center)
        np.testing.assert_allclose(expected, last, rtol=1e-4, atol=1e-3)


# -- the graphs, without torch ------------------------------------------------------------


def numpy_lstm(x: np.ndarray, state: dict[str, np.ndarray], name: str) -> np.ndarray:
    """Hidden states ``(batch, steps, H)`` of a torch-layout LSTM (gates i, f, g, o)."""
    w_ih, w_hh = state[f"{name}.weight_ih_l0"], state[f"{name}.weight_hh_l0"]
    b = state[f"{name}.bias_ih_l0"] + state[f"{name}.bias_hh_l0"]
    hidden = w_hh.shape[1]
    h = np.zeros((x.shape[0], hidden))
    c = np.zeros((x.shape[0], hidden))
    out = []
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for t in range(x.shape[1]):
        z = x[:, t] @ w_ih.T + h @ w_hh.T + b
        i, f, g, o = np.split(z, 4, axis=1)
        c = sig(f) * c + sig(i) * np.tanh(g)
        h = sig(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(0, 0.4, s).astype(np.float32) for k, s in shapes.items()}


def test_graphs_compute_what_a_plain_numpy_lstm_computes() -> None:
    x = np.random.default_rng(1).normal(0, 1, (3, 50, 5)).astype(np.float32)
    cls = random_state(classifier_shapes(6), 2)
    graph = classifier_model(cls)
    got = ort.InferenceSession(graph.SerializeToString()).run(None, {"window": x})[0]
    h = numpy_lstm(x, cls, "lstm")[:, -1]
    want = 1 / (1 + np.exp(-(h @ cls["head.weight"].T + cls["head.bias"])[:, 0]))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)

    ae = random_state(autoencoder_shapes(6), 3)
    graph = autoencoder_model(ae)
    got = ort.InferenceSession(graph.SerializeToString()).run(None, {"window": x})[0]
    code = numpy_lstm(x, ae, "encoder")[:, -1]
    y = numpy_lstm(np.repeat(code[:, None], 50, axis=1), ae, "decoder")
    want = y @ ae["output.weight"].T + ae["output.bias"]
    assert got.shape == (3, 50, 5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("build", "shapes"),
    [(classifier_model, classifier_shapes), (autoencoder_model, autoencoder_shapes)],
)
def test_weights_read_back_from_a_graph(build: object, shapes: object) -> None:
    state = random_state(shapes(5), 4)  # type: ignore[operator]
    back = state_from_onnx(build(state))  # type: ignore[operator]
    assert set(back) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value)


def test_state_from_onnx_refuses_another_graph() -> None:
    other = onnx.load(ROOT / "operators" / "models" / "patch_lite0.onnx", load_external_data=False)
    with pytest.raises(ValueError, match="expected a flow-site classifier or autoencoder"):
        state_from_onnx(other)


# -- evaluation helpers -------------------------------------------------------------------


def test_windows_end_at_each_reading() -> None:
    values = np.arange(60 * 5, dtype=np.float64).reshape(60, 5)
    w = windows_of(values)
    assert w.shape == (11, 50, 5)
    np.testing.assert_array_equal(w[0], values[:50])
    np.testing.assert_array_equal(w[-1], values[10:])
    assert windows_of(values[:10]).shape == (0, 50, 5)


def test_auroc_and_average_precision_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(300) < 0.2
    score = np.round(rng.random(300) + truth * 0.3, 1)  # ties on purpose
    pos, neg = score[truth], score[~truth]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (
        len(pos) * len(neg)
    )
    assert auroc(truth, score) == pytest.approx(brute)
    perfect = np.where(truth, 1.0, 0.0)
    assert average_precision(truth, perfect) == 1.0
    assert auroc(truth, perfect) == 1.0
    m = window_metrics(truth, perfect, 0.5)
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)


def test_original_flags_and_episode_scoring_on_a_small_stream() -> None:
    cfg = replace(FlowSiteConfig(sites=2, seed=77), spike_prob=5e-3, warmup_days=0.5)
    sites = site_arrays(cfg, 3 * 288)
    model = load_model("classifier", threads=1)
    flags = [original_flags(s, model) for s in sites]
    for s, f in zip(sites, flags, strict=True):
        assert f.shape == s.labels.shape
        assert not f[:49].any()  # no window yet
    result = evaluate_flags(sites, flags)
    assert result.events == sum(len(s.labels) for s in sites)
    # Flags on exactly the labelled readings find every episode with no false alert.
    truth = [s.labels > 0 for s in sites]
    perfect = evaluate_flags(sites, truth)
    assert perfect.episodes == result.episodes > 0
    assert (perfect.recall, perfect.precision) == (1.0, 1.0)
    assert perfect.median_delay_s == 0.0
    figures = heldout_figures(model, 0.5, sites)
    assert figures["alerts"]["episodes"] == perfect.episodes
    assert figures["windows"]["windows"] == sum(len(s.labels) - 49 for s in sites)
    assert set(figures["alerts"]["recall_by_kind"]) <= set(LABELS[1:])
