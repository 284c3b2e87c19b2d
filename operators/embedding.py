"""Patch features of telescope frames: an ONNX model's features and point-source statistics.

:class:`PatchEmbedder` turns a ``uint16`` frame into one feature vector per
16x16-pixel cell (:class:`PatchFeatures`), which the frame flow compares with a
memory bank of normal patches. A vector is the model's features followed by
:class:`PointStats`, a few numbers computed in numpy for what the model misses
(single-pixel defects, faint new points). The model is the shipped
EfficientNet-Lite0 trunk (``"lite0"``, see :mod:`operators.models.export_lite0`), the
torch-free random-convolution fallback (``"random"``, :mod:`operators.models.randconv`)
or any ONNX file with the same contract: input ``frame`` ``float32 (batch, 1, H, W)``,
output ``features`` ``float32 (batch, D, ceil(H / s), ceil(W / s))``.

Before the model, :class:`Normalisation` makes frames of any exposure and sky level
look alike: sky subtracted, divided by the noise, faint noise squashed, bright stars
compressed with ``asinh``. The onnxruntime session is created on first use and is not
part of the pickled state (Bytewax snapshots operators' state; the session is rebuilt
after a restore).

Example:
    >>> import numpy as np
    >>> emb = PatchEmbedder("random")
    >>> frame = np.random.default_rng(0).poisson(900, (101, 77)).astype(np.uint16)
    >>> pf = emb.embed(frame)
    >>> pf.grid, pf.stride, pf.features.shape, pf.features.dtype
    ((7, 5), 16, (35, 81), dtype('float32'))
    >>> pf.centres()[6].tolist()  # patch 6 is row 1, column 1
    [24.0, 24.0]

"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.frames import PixelArray
from operators.pointstats import Normalisation, PointStats

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
#: Folder of the shipped models.
MODELS_DIR = Path(__file__).resolve().parent / "models"
#: Names of the shipped models and their files.
SHIPPED = {"lite0": "patch_lite0.onnx"}
INPUT = "frame"
#: The point statistics appended by default (frozen: one instance serves every embedder).
DEFAULT_POINT_STATS = PointStats()


def patch_centres(grid: tuple[int, int], stride: int) -> npt.NDArray[np.float64]:
    """Pixel ``(row, column)`` of the centre of each patch, in patch order.

    Patch ``i`` is cell ``(i // gw, i % gw)`` and covers rows ``stride * (i // gw)``
    up to ``stride * (i // gw + 1)``, and likewise columns.

    Example:
        >>> patch_centres((2, 3), 16).tolist()
        [[8.0, 8.0], [8.0, 24.0], [8.0, 40.0], [24.0, 8.0], [24.0, 24.0], [24.0, 40.0]]

    """
    gh, gw = grid
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    return np.stack([rows, cols], axis=1) * float(stride) + stride / 2.0


@dataclass(frozen=True, slots=True, eq=False)
class PatchFeatures:
    """The patch features of one frame.

    Attributes:
        features: ``float32 (n_patches, dim)``, C-contiguous, row-major over the grid.
        grid: ``(rows, columns)`` of cells; ``n_patches = rows * columns``.
        stride: Pixels per cell side.
        frame_shape: ``(height, width)`` of the frame.

    """

    features: FloatArray
    grid: tuple[int, int]
    stride: int
    frame_shape: tuple[int, int]

    @property
    def dim(self) -> int:
        """Feature dimension ``D``."""
        return int(self.features.shape[1])

    @property
    def n_patches(self) -> int:
        """Number of patches."""
        return int(self.features.shape[0])

    def centres(self) -> npt.NDArray[np.float64]:
        """Pixel ``(row, column)`` of each patch's centre (:func:`patch_centres`)."""
        return patch_centres(self.grid, self.stride)


class PatchEmbedder:
    """Patch features of frames from an ONNX model; the session is built on first use.

    Args:
        model: ``"lite0"`` (the shipped EfficientNet-Lite0 model), ``"random"`` (the
            seeded random-convolution fallback, built in memory), ``"auto"`` (``lite0``
            if its file is there, else ``random`` with a warning) or the path of an
            ONNX file with the same input and output.
        threads: onnxruntime intra-op threads.
        normalisation: How frames are scaled before the model.
        point_stats: The statistics appended to the model's features (``None``: none).

    Raises:
        FileNotFoundError: If the model file does not exist.
        ValueError: If ``threads`` is not positive.

    """

    __slots__ = ("_meta", "_session", "model", "normalisation", "point_stats", "threads")

    def __init__(
        self,
        model: str | Path = "lite0",
        *,
        threads: int = 1,
        normalisation: Normalisation | None = None,
        point_stats: PointStats | None = DEFAULT_POINT_STATS,
    ) -> None:
        if threads < 1:
            raise ValueError(f"PatchEmbedder: threads must be >= 1, got {threads}")
        if model == "auto":
            model = "lite0" if (MODELS_DIR / SHIPPED["lite0"]).is_file() else "random"
            if model == "random":
                logger.warning(
                    "PatchEmbedder: %s missing, using the random model", SHIPPED["lite0"]
                )
        if model != "random":
            path = _model_path(model)
            if not path.is_file():
                raise FileNotFoundError(
                    f"PatchEmbedder: no model file {path} (export it with "
                    "`python -m operators.models.export_lite0`, or use model='random')"
                )
        self.model = model
        self.threads = threads
        self.normalisation = normalisation or Normalisation()
        self.point_stats = point_stats
        self._session: Any = None
        self._meta: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "threads": self.threads,
            "normalisation": self.normalisation,
            "point_stats": self.point_stats,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.model = state["model"]
        self.threads = state["threads"]
        self.normalisation = state["normalisation"]
        self.point_stats = state["point_stats"]
        self._session = None
        self._meta = {}

    def __repr__(self) -> str:
        return f"PatchEmbedder(model={str(self.model)!r}, threads={self.threads})"

    def _get_session(self) -> Any:
        if self._session is None:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            if self.model == "random":
                from operators.models.randconv import build_randconv

                source: bytes | str = build_randconv().SerializeToString()
            else:
                source = str(_model_path(self.model))
            session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
            self._meta = dict(session.get_modelmeta().custom_metadata_map)
            self._session = session
            if "stride" not in self._meta:
                self._meta.update(self._probe())
        return self._session

    def _probe(self) -> dict[str, str]:
        """Stride and dimension of a model without metadata, from one run on a blank frame."""
        side = 256
        out = self._session.run(None, {INPUT: np.zeros((1, 1, side, side), np.float32)})[0]
        stride = side // int(out.shape[2])
        return {"stride": str(stride), "dim": str(out.shape[1]), "min_size": str(stride)}

    @property
    def stride(self) -> int:
        """Pixels per cell side (16 for the project's models)."""
        self._get_session()
        return int(self._meta["stride"])

    @property
    def model_dim(self) -> int:
        """Features from the model (120 for ``lite0``, 64 for ``random``)."""
        self._get_session()
        return int(self._meta["dim"])

    @property
    def dim(self) -> int:
        """Feature dimension ``D``: the model's, plus :attr:`PointStats.DIM` if appended."""
        return self.model_dim + (0 if self.point_stats is None else PointStats.DIM)

    @property
    def min_size(self) -> int:
        """Smallest frame height and width the model accepts."""
        self._get_session()
        return int(self._meta.get("min_size", self._meta["stride"]))

    def grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        """``(rows, columns)`` of cells for a frame of ``(height, width)``."""
        s = self.stride
        return math.ceil(shape[0] / s), math.ceil(shape[1] / s)

    def preprocess(self, pixels: PixelArray) -> FloatArray:
        """The model input for one frame, ``float32 (1, 1, H, W)`` (see :class:`Normalisation`).

        Raises:
            ValueError: If ``pixels`` is not a 2-D ``uint16`` array at least
                :attr:`min_size` on each side.

        """
        self._check(pixels)
        return self.normalisation(pixels)[None, None]

    def embed(self, pixels: PixelArray) -> PatchFeatures:
        """The patch features of one frame.

        Raises:
            ValueError: As :meth:`preprocess`.

        """
        return self.embed_many([pixels])[0]

    def embed_many(
        self, frames: Sequence[PixelArray], *, batch_size: int = 4
    ) -> list[PatchFeatures]:
        """The patch features of several frames, in order; frames of one shape share runs.

        Args:
            frames: ``uint16 (H, W)`` arrays.
            batch_size: Most frames per model run.

        Raises:
            ValueError: As :meth:`preprocess`, naming the frame's index.

        """
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, pixels in enumerate(frames):
            self._check(pixels, index=i)
            by_shape.setdefault((pixels.shape[0], pixels.shape[1]), []).append(i)
        session = self._get_session()
        stride = self.stride
        out: list[PatchFeatures | None] = [None] * len(frames)
        for shape, indices in by_shape.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                inputs, extras = [], []
                for i in chunk:
                    z = self.normalisation.standardise(frames[i])
                    if self.point_stats is not None:  # before squash, which rewrites z
                        extras.append(self.point_stats(frames[i], stride, smoothed=z))
                    inputs.append(self.normalisation.squash(z))
                maps = session.run(None, {INPUT: np.stack(inputs)[:, None]})[0]
                for k, (i, fmap) in enumerate(zip(chunk, maps, strict=True)):
                    d, gh, gw = fmap.shape
                    feats = np.empty((gh * gw, d + (PointStats.DIM if extras else 0)), np.float32)
                    feats[:, :d] = fmap.reshape(d, gh * gw).T
                    if extras:
                        feats[:, d:] = extras[k]
                    out[i] = PatchFeatures(feats, (int(gh), int(gw)), stride, shape)
        return [pf for pf in out if pf is not None]

    def _check(self, pixels: Any, index: int | None = None) -> None:
        where = "PatchEmbedder" if index is None else f"PatchEmbedder: frame {index}"
        if not isinstance(pixels, np.ndarray):
            raise ValueError(f"{where}: expected a numpy array, got {type(pixels).__name__}")
        if pixels.ndim != 2:
            raise ValueError(
                f"{where}: expected a 2-D (height, width) array, got shape {pixels.shape}"
            )
        if pixels.dtype != np.uint16:
            raise ValueError(f"{where}: expected dtype uint16, got {pixels.dtype}")
        if min(pixels.shape) < self.min_size:
            raise ValueError(
                f"{where}: frame {pixels.shape[0]}x{pixels.shape[1]} is smaller than the "
                f"model's minimum {self.min_size}x{self.min_size}"
            )


def _model_path(model: str | Path) -> Path:
    if isinstance(model, str) and model in SHIPPED:
        return MODELS_DIR / SHIPPED[model]
    return Path(model)
