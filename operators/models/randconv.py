"""A fixed, seeded random-convolution patch-feature network built with ``onnx.helper``.

It is the torch-free fallback of the shipped EfficientNet-Lite0 model and a test
fixture: it honours the same contract (input ``frame`` ``float32 (batch, 1, H, W)``,
output ``features`` ``float32 (batch, D, ceil(H / 16), ceil(W / 16))``) and the same
cell geometry, so every downstream step runs unchanged on either model. Random
convolutions with ReLU are a crude but real texture descriptor: a point source, a
streak or a hot column changes the features of its own cells much more than those of
far-away cells, which is all the memory bank needs to locate an anomaly.

The architecture mirrors the Lite0 export: three stride-2 convolutions to a stride-8
map (its 3x3 neighbourhood average taken at stride 16) and a fourth to a stride-16 map
(averaged over 3x3 cells), concatenated. Padding puts the centre of output cell
``(r, c)`` at pixel ``(16 r + 8, 16 c + 8)``.

:class:`GraphBuilder` is the small graph-writing helper shared with
:mod:`operators.models.export_lite0`.

Example:
    >>> import numpy as np, onnxruntime as ort
    >>> model = build_randconv(dim=32, seed=3)
    >>> metadata(model)["stride"], metadata(model)["dim"]
    ('16', '32')
    >>> sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    >>> sess.run(None, {"frame": np.zeros((1, 1, 101, 77), np.float32)})[0].shape
    (1, 32, 7, 5)

"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Pixels per output cell of every patch-feature model of the project.
STRIDE = 16
#: Smallest frame side the models accept (two cells).
MIN_SIZE = 2 * STRIDE
#: Name of the input of the patch-feature contract.
INPUT = "frame"
#: Name of the output of the patch-feature contract.
OUTPUT = "features"
#: ONNX opset the project's models use (onnxruntime has run it since 1.12).
OPSET = 17
#: IR version matching :data:`OPSET`, so older runtimes load the files too.
IR_VERSION = 8

FloatArray = npt.NDArray[np.float32]


class GraphBuilder:
    """Appends nodes and weights to an ONNX graph; each method returns its output's name.

    Args:
        prefix: Prefix of generated tensor names.

    Example:
        >>> g = GraphBuilder()
        >>> w = np.ones((2, 1, 3, 3), np.float32)
        >>> y = g.relu(g.conv(INPUT, w, np.zeros(2, np.float32), stride=2, pads=(1, 1)))
        >>> model = g.model(y, dim=2, metadata={"stride": "2"})
        >>> [n.op_type for n in model.graph.node]
        ['Conv', 'Relu', 'Identity']

    """

    def __init__(self, prefix: str = "n") -> None:
        self._prefix = prefix
        self._count = 0
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{self._prefix}{self._count}_{kind}"

    def const(self, value: npt.ArrayLike, kind: str = "const") -> str:
        """Adds a float32 initializer and returns its name."""
        name = self._name(kind)
        self.weights.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def _node(self, op: str, inputs: Sequence[str], **attrs: Any) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def conv(
        self,
        x: str,
        weight: FloatArray,
        bias: FloatArray,
        *,
        stride: int = 1,
        pads: tuple[int, int] | None = None,
        group: int = 1,
    ) -> str:
        """A 2-D convolution.

        Args:
            x: Input tensor name.
            weight: ``(out, in / group, k, k)`` kernel.
            bias: ``(out,)`` bias.
            stride: Stride along both axes.
            pads: Padding ``(before, after)`` applied to both axes; ``k // 2`` on each
                side when omitted.
            group: Number of groups (the channel count for a depthwise convolution).

        """
        k = int(weight.shape[-1])
        before, after = pads if pads is not None else (k // 2, k // 2)
        return self._node(
            "Conv",
            [x, self.const(weight, "w"), self.const(bias, "b")],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[before, before, after, after],
            group=group,
        )

    def relu(self, x: str) -> str:
        """``max(x, 0)``."""
        return self._node("Relu", [x])

    def relu6(self, x: str) -> str:
        """``min(max(x, 0), 6)`` (EfficientNet-Lite's activation)."""
        return self._node("Clip", [x, self.const(0.0, "lo"), self.const(6.0, "hi")])

    def add(self, a: str, b: str) -> str:
        """Elementwise sum."""
        return self._node("Add", [a, b])

    def avg_pool(self, x: str, *, stride: int = 1, pads: tuple[int, int] = (1, 1)) -> str:
        """A 3x3 average over the cells inside the image (padding is not counted)."""
        before, after = pads
        return self._node(
            "AveragePool",
            [x],
            kernel_shape=[3, 3],
            strides=[stride, stride],
            pads=[before, before, after, after],
            count_include_pad=0,
        )

    def concat(self, parts: Sequence[str]) -> str:
        """Concatenation along channels."""
        return self._node("Concat", parts, axis=1)

    def model(self, y: str, *, dim: int, metadata: Mapping[str, str]) -> onnx.ModelProto:
        """Closes the graph with ``y`` as the ``features`` output of ``dim`` channels.

        Args:
            y: Name of the last tensor.
            dim: Channels of the output.
            metadata: String properties stored in the model (``stride``, ``dim`` ...).

        Returns:
            A checked model.

        """
        self.nodes.append(helper.make_node("Identity", [y], [OUTPUT], name="output"))
        graph = helper.make_graph(
            self.nodes,
            self._prefix,
            [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 1, "h", "w"])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", dim, "gh", "gw"])],
            self.weights,
        )
        return finish_model(graph, metadata)


def finish_model(graph: onnx.GraphProto, metadata: Mapping[str, str]) -> onnx.ModelProto:
    """The checked model of ``graph`` at the project's opset and IR version, with ``metadata``."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="vigil",
    )
    helper.set_model_props(model, dict(metadata))
    onnx.checker.check_model(model)
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The string properties stored in a model."""
    return {p.key: p.value for p in model.metadata_props}


def _he(rng: np.random.Generator, out: int, inp: int) -> FloatArray:
    """A ``(out, inp, 3, 3)`` kernel with He-normal scale (keeps ReLU activations O(1))."""
    std = np.float32(np.sqrt(2.0 / (inp * 9)))
    return rng.standard_normal((out, inp, 3, 3), dtype=np.float32) * std


def build_randconv(*, dim: int = 64, seed: int = 0) -> onnx.ModelProto:
    """Builds the random-convolution patch-feature model.

    Args:
        dim: Output channels ``D``, even: half from the stride-8 map, half from the
            stride-16 map.
        seed: Seed of the weights; the same seed gives the same model bytes.

    Returns:
        The model, with metadata ``name``, ``stride``, ``dim``, ``min_size``, ``seed``.

    Raises:
        ValueError: If ``dim`` is not a positive even number.

    Example:
        >>> build_randconv(seed=1).SerializeToString() == build_randconv(seed=1).SerializeToString()
        True

    """
    if dim < 2 or dim % 2:
        raise ValueError(f"randconv: dim must be a positive even number, got {dim}")
    rng = np.random.default_rng(seed)
    half = dim // 2
    widths = (1, 8, 16, half)
    g = GraphBuilder("randconv")
    x = INPUT
    for inp, out in itertools.pairwise(widths):
        x = g.relu(g.conv(x, _he(rng, out, inp), np.zeros(out, np.float32), stride=2))
    # Padding (0, 2) centres both stride-16 branches on pixel 16 r + 8.
    s8 = g.avg_pool(x, stride=2, pads=(0, 2))
    s16 = g.relu(g.conv(x, _he(rng, half, half), np.zeros(half, np.float32), stride=2, pads=(0, 2)))
    y = g.concat([s8, g.avg_pool(s16)])
    meta = {
        "name": "randconv",
        "stride": str(STRIDE),
        "dim": str(dim),
        "min_size": str(MIN_SIZE),
        "seed": str(seed),
    }
    return g.model(y, dim=dim, metadata=meta)
