"""The bear heart-rate LSTM autoencoder as an ONNX graph, written from numpy weights.

The architecture is the original bear pipeline's Keras model: ``LSTM(128)`` over a
window of 30 readings, its last hidden state repeated 30 times, ``LSTM(128)`` returning
the sequence, and a dense layer to one value per step (the two dropout layers only act
in training). :func:`to_onnx` writes it with ``onnx.helper`` as plain ``LSTM``,
``Expand``, ``MatMul`` and ``Transpose`` nodes; the weights are stored as float16 and
cast to float32 when the session loads (the file is half the size; the model computes
in float32). :func:`from_onnx` reads the weights back, so a shipped file can be rebuilt
in torch.

Input ``window``: float32 ``(batch, 30, 1)``, readings already scaled (``(bpm - mean) / std``
with the constants of the model's record). Output ``reconstruction``: the same shape.

Example:
    >>> import onnxruntime as ort
    >>> w = AutoencoderWeights.random(hidden=4, seed=0)
    >>> model = to_onnx(w)
    >>> session = ort.InferenceSession(model.SerializeToString())
    >>> x = np.zeros((2, WINDOW, 1), np.float32)
    >>> session.run(None, {INPUT: x})[0].shape
    (2, 30, 1)
    >>> from_onnx(model).encoder.w_hh.shape
    (16, 4)

"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from operators.models.randconv import IR_VERSION, OPSET, finish_model

__all__ = [
    "INPUT",
    "IR_VERSION",
    "OPSET",
    "OUTPUT",
    "WINDOW",
    "AutoencoderWeights",
    "LstmWeights",
    "from_onnx",
    "to_onnx",
]

F32 = npt.NDArray[np.float32]

INPUT, OUTPUT = "window", "reconstruction"
WINDOW = 30
# Rows of torch's stacked gates (input, forget, cell, output) in ONNX's order (i, o, f, c).
_TORCH_TO_ONNX = (0, 3, 1, 2)
_ONNX_TO_TORCH = (0, 2, 3, 1)


def _regate(a: F32, order: tuple[int, ...]) -> F32:
    """Reorder the four gate blocks along the first axis."""
    blocks = np.split(a, 4, axis=0)
    return np.ascontiguousarray(np.concatenate([blocks[i] for i in order], axis=0))


@dataclass(frozen=True)
class LstmWeights:
    """One LSTM layer in torch's layout (gates stacked as input, forget, cell, output).

    Attributes:
        w_ih: ``(4 H, inputs)`` input weights.
        w_hh: ``(4 H, H)`` recurrent weights.
        b_ih: ``(4 H,)`` input bias.
        b_hh: ``(4 H,)`` recurrent bias.

    """

    w_ih: F32
    w_hh: F32
    b_ih: F32
    b_hh: F32

    @property
    def hidden(self) -> int:
        """Hidden units ``H``."""
        return int(self.w_hh.shape[1])


@dataclass(frozen=True)
class AutoencoderWeights:
    """Weights of the whole autoencoder.

    Attributes:
        encoder: ``LSTM(H)`` over the scaled readings (one input).
        decoder: ``LSTM(H)`` over the repeated code.
        dense_w: ``(1, H)`` weights of the output layer.
        dense_b: ``(1,)`` its bias.

    """

    encoder: LstmWeights
    decoder: LstmWeights
    dense_w: F32
    dense_b: F32

    @property
    def hidden(self) -> int:
        """Hidden units of both layers."""
        return self.encoder.hidden

    def rounded(self) -> AutoencoderWeights:
        """The weights rounded to float16 and back, as :func:`to_onnx` stores them."""

        def r(a: F32) -> F32:
            return a.astype(np.float16).astype(np.float32)

        def layer(w: LstmWeights) -> LstmWeights:
            return LstmWeights(r(w.w_ih), r(w.w_hh), r(w.b_ih), r(w.b_hh))

        return AutoencoderWeights(
            layer(self.encoder), layer(self.decoder), r(self.dense_w), r(self.dense_b)
        )

    @classmethod
    def random(cls, hidden: int, seed: int = 0) -> AutoencoderWeights:
        """Seeded random weights of ``hidden`` units (for tests and examples)."""
        rng = np.random.default_rng(seed)

        def a(*shape: int) -> F32:
            return np.asarray(rng.standard_normal(shape) / np.sqrt(hidden), np.float32)

        def layer(inputs: int) -> LstmWeights:
            h4 = 4 * hidden
            return LstmWeights(a(h4, inputs), a(h4, hidden), a(h4), a(h4))

        return cls(layer(1), layer(hidden), a(1, hidden), a(1))


def _lstm_inputs(w: LstmWeights) -> tuple[F32, F32, F32]:
    """ONNX ``W``, ``R`` and ``B`` of a layer (one direction)."""
    wi = _regate(w.w_ih, _TORCH_TO_ONNX)[None]
    r = _regate(w.w_hh, _TORCH_TO_ONNX)[None]
    b = np.concatenate([_regate(w.b_ih, _TORCH_TO_ONNX), _regate(w.b_hh, _TORCH_TO_ONNX)])
    return wi, r, b[None]


def to_onnx(w: AutoencoderWeights, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """The ONNX model of the autoencoder, weights stored as float16, dynamic batch.

    Args:
        w: The weights (torch layout).
        metadata: Extra ``metadata_props`` of the model.

    """
    h = w.hidden
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def weight(name: str, a: F32) -> str:
        inits.append(numpy_helper.from_array(a.astype(np.float16), name + "_f16"))
        nodes.append(helper.make_node("Cast", [name + "_f16"], [name], to=TensorProto.FLOAT))
        return name

    def const(name: str, a: npt.NDArray[np.int64]) -> str:
        inits.append(numpy_helper.from_array(a, name))
        return name

    enc = [weight(f"enc_{k}", a) for k, a in zip("WRB", _lstm_inputs(w.encoder), strict=True)]
    dec = [weight(f"dec_{k}", a) for k, a in zip("WRB", _lstm_inputs(w.decoder), strict=True)]
    dense_w = weight("dense_w", np.ascontiguousarray(w.dense_w.T))
    dense_b = weight("dense_b", w.dense_b)
    repeat = const("repeat", np.array([WINDOW, 1, 1], np.int64))
    axis1 = const("axis1", np.array([1], np.int64))
    nodes += [
        helper.make_node("Transpose", [INPUT], ["steps"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["steps", *enc], ["", "code"], hidden_size=h),
        helper.make_node("Expand", ["code", repeat], ["repeated"]),
        helper.make_node("LSTM", ["repeated", *dec], ["dec_y"], hidden_size=h),
        helper.make_node("Squeeze", ["dec_y", axis1], ["dec_seq"]),
        helper.make_node("MatMul", ["dec_seq", dense_w], ["dense"]),
        helper.make_node("Add", ["dense", dense_b], ["out_steps"]),
        helper.make_node("Transpose", ["out_steps"], [OUTPUT], perm=[1, 0, 2]),
    ]
    shape: list[str | int] = ["batch", WINDOW, 1]
    graph = helper.make_graph(
        nodes,
        "bears_lstm_ae",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, shape)],
        inits,
    )
    return finish_model(graph, {"window": str(WINDOW), "hidden": str(h), **(metadata or {})})


def from_onnx(model: onnx.ModelProto) -> AutoencoderWeights:
    """The weights stored in a model written by :func:`to_onnx` (torch layout, float32)."""
    arrays = {
        t.name.removesuffix("_f16"): numpy_helper.to_array(t).astype(np.float32)
        for t in model.graph.initializer
    }

    def layer(prefix: str) -> LstmWeights:
        b = arrays[f"{prefix}_B"][0]
        half = len(b) // 2
        return LstmWeights(
            _regate(arrays[f"{prefix}_W"][0], _ONNX_TO_TORCH),
            _regate(arrays[f"{prefix}_R"][0], _ONNX_TO_TORCH),
            _regate(b[:half], _ONNX_TO_TORCH),
            _regate(b[half:], _ONNX_TO_TORCH),
        )

    return AutoencoderWeights(
        layer("enc"),
        layer("dec"),
        np.ascontiguousarray(arrays["dense_w"].T),
        arrays["dense_b"],
    )
