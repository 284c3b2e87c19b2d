"""ONNX graphs of the flow-site window models, written with ``onnx.helper`` from their weights.

Both models take a window of the last :data:`WINDOW` readings of one site, the
five channels of :data:`operators.sitereading.CHANNELS` scaled as ``(x - center) /
scale`` with the per-channel constants of the model's record (what
:class:`operators.windowmodel.WindowModel` does before it calls the model). The graphs
hold plain ``Transpose``, ``LSTM``, ``Gemm``/``MatMul``, ``Add`` and ``Sigmoid`` nodes
with a dynamic batch axis, so onnxruntime runs them without torch.

Weights come in torch's layout (the keys of the training modules' ``state_dict``);
:func:`lstm_to_onnx` reorders the LSTM gates from torch's ``i, f, g, o`` to ONNX's
``i, o, f, c`` and :func:`state_from_onnx` reads a graph's weights back in torch's
layout (used to check an export).

* classifier: ``window`` ``(batch, 50, 5)`` -> ``LSTM(H)`` -> last hidden state ->
  ``Linear(H, 1)`` -> ``Sigmoid`` -> ``probability`` ``(batch,)``, the probability
  that the window's last reading is faulty;
* autoencoder: ``window`` -> encoder ``LSTM(H)`` -> last hidden state repeated 50
  times -> decoder ``LSTM(H)`` -> ``Linear(H, 5)`` per step -> ``reconstruction``
  ``(batch, 50, 5)``, in the scaled units of the input.

Example:
    >>> import onnxruntime as ort
    >>> rng = np.random.default_rng(0)
    >>> state = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in
    ...          classifier_shapes(4).items()}
    >>> model = classifier_model(state)
    >>> sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    >>> sess.run(None, {"window": np.zeros((3, 50, 5), np.float32)})[0].shape
    (3,)
    >>> all(np.array_equal(a, state[k]) for k, a in state_from_onnx(model).items())
    True

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from operators.models.randconv import finish_model
from operators.sitereading import CHANNELS

__all__ = [
    "INPUT",
    "WINDOW",
    "autoencoder_model",
    "autoencoder_shapes",
    "classifier_model",
    "classifier_shapes",
    "lstm_to_onnx",
    "state_from_onnx",
]

#: Readings per window.
WINDOW = 50
#: Name of both models' input.
INPUT = "window"

Array = npt.NDArray[np.float32]
_N = len(CHANNELS)
# Torch's gate blocks i, f, g, o, in the order ONNX wants them (i, o, f, c).
_TO_ONNX = (0, 3, 1, 2)
_TO_TORCH = (0, 2, 3, 1)
_LSTMS = {"classifier": ("lstm",), "autoencoder": ("encoder", "decoder")}


def _lstm_shapes(name: str, inputs: int, hidden: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{name}.weight_ih_l0": (4 * hidden, inputs),
        f"{name}.weight_hh_l0": (4 * hidden, hidden),
        f"{name}.bias_ih_l0": (4 * hidden,),
        f"{name}.bias_hh_l0": (4 * hidden,),
    }


def classifier_shapes(hidden: int) -> dict[str, tuple[int, ...]]:
    """Torch ``state_dict`` keys and shapes of the classifier with ``hidden`` units."""
    return {**_lstm_shapes("lstm", _N, hidden), "head.weight": (1, hidden), "head.bias": (1,)}


def autoencoder_shapes(hidden: int) -> dict[str, tuple[int, ...]]:
    """Torch ``state_dict`` keys and shapes of the autoencoder with ``hidden`` units."""
    return {
        **_lstm_shapes("encoder", _N, hidden),
        **_lstm_shapes("decoder", hidden, hidden),
        "output.weight": (_N, hidden),
        "output.bias": (_N,),
    }


def _gates(w: Array, order: tuple[int, ...]) -> Array:
    blocks = np.split(np.asarray(w, np.float32), 4, axis=0)
    return np.concatenate([blocks[i] for i in order], axis=0)


def lstm_to_onnx(state: Mapping[str, Array], name: str) -> tuple[Array, Array, Array]:
    """ONNX ``W``, ``R``, ``B`` of the torch LSTM ``name`` (one layer, one direction)."""
    w = _gates(state[f"{name}.weight_ih_l0"], _TO_ONNX)[None]
    r = _gates(state[f"{name}.weight_hh_l0"], _TO_ONNX)[None]
    b = np.concatenate(
        [
            _gates(state[f"{name}.bias_ih_l0"], _TO_ONNX),
            _gates(state[f"{name}.bias_hh_l0"], _TO_ONNX),
        ]
    )[None]
    return w, r, b


class _Graph:
    """Nodes and initializers of one graph; each method returns its output's name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []
        self.count = 0

    def const(self, name: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        self.weights.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> list[str]:
        self.count += 1
        names = [f"{op.lower()}{self.count}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=f"{op}{self.count}", **attrs))
        return names

    def lstm(self, x: str, state: Mapping[str, Array], name: str) -> tuple[str, str]:
        """``(Y, Y_h)`` of the torch LSTM ``name`` over ``x`` ``(seq, batch, in)``."""
        w, r, b = lstm_to_onnx(state, name)
        hidden = int(r.shape[-1])
        ins = [
            x,
            self.const(f"{name}.W", w),
            self.const(f"{name}.R", r),
            self.const(f"{name}.B", b),
        ]
        y, y_h = self.node("LSTM", ins, 2, hidden_size=hidden)
        return y, y_h

    def time_first(self) -> str:
        """The input window, time first: ``(50, batch, 5)``."""
        [x] = self.node("Transpose", [INPUT], perm=[1, 0, 2])
        return x

    def model(
        self, output: str, shape: list[int | str], metadata: Mapping[str, str]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "flowsites",
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", WINDOW, _N])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)],
            self.weights,
        )
        return finish_model(graph, metadata)


def classifier_model(
    state: Mapping[str, Array], metadata: Mapping[str, str] | None = None
) -> onnx.ModelProto:
    """The classifier graph (see the module docstring) from torch-layout weights."""
    g = _Graph()
    _, h = g.lstm(g.time_first(), state, "lstm")
    [h] = g.node("Squeeze", [h, g.const("axis0", [0], np.int64)])
    head_w, head_b = (
        g.const("head.weight", state["head.weight"]),
        g.const("head.bias", state["head.bias"]),
    )
    [logit] = g.node("Gemm", [h, head_w, head_b], transB=1)
    [p] = g.node("Sigmoid", [logit])
    g.nodes.append(
        helper.make_node(
            "Reshape", [p, g.const("flat", [-1], np.int64)], ["probability"], name="out"
        )
    )
    return g.model("probability", ["batch"], metadata or {})


def autoencoder_model(
    state: Mapping[str, Array], metadata: Mapping[str, str] | None = None
) -> onnx.ModelProto:
    """The autoencoder graph (see the module docstring) from torch-layout weights."""
    g = _Graph()
    _, h = g.lstm(g.time_first(), state, "encoder")
    [repeated] = g.node("Expand", [h, g.const("repeat", [WINDOW, 1, 1], np.int64)])
    y, _ = g.lstm(repeated, state, "decoder")
    [y] = g.node("Squeeze", [y, g.const("axis1", [1], np.int64)])
    out_w = g.const("output.weight_t", np.asarray(state["output.weight"]).T)
    [z] = g.node("MatMul", [y, out_w])
    [z] = g.node("Add", [z, g.const("output.bias", state["output.bias"])])
    g.nodes.append(helper.make_node("Transpose", [z], ["reconstruction"], perm=[1, 0, 2]))
    return g.model("reconstruction", ["batch", WINDOW, _N], metadata or {})


def state_from_onnx(model: onnx.ModelProto) -> dict[str, Array]:
    """The torch-layout weights of a classifier or autoencoder graph.

    Raises:
        ValueError: when the graph is neither.

    """
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kind = "classifier" if "lstm.W" in init else "autoencoder" if "encoder.W" in init else None
    if kind is None:
        raise ValueError("state_from_onnx: expected a flow-site classifier or autoencoder graph")
    state: dict[str, Array] = {}
    for name in _LSTMS[kind]:
        b_ih, b_hh = np.split(init[f"{name}.B"][0], 2)
        state[f"{name}.weight_ih_l0"] = _gates(init[f"{name}.W"][0], _TO_TORCH)
        state[f"{name}.weight_hh_l0"] = _gates(init[f"{name}.R"][0], _TO_TORCH)
        state[f"{name}.bias_ih_l0"] = _gates(b_ih, _TO_TORCH)
        state[f"{name}.bias_hh_l0"] = _gates(b_hh, _TO_TORCH)
    if kind == "classifier":
        state["head.weight"] = init["head.weight"]
        state["head.bias"] = init["head.bias"]
    else:
        state["output.weight"] = np.ascontiguousarray(init["output.weight_t"].T)
        state["output.bias"] = init["output.bias"]
    return state
