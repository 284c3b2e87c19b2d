"""Trained window models on streams: per-key windows, inference batched across keys, calibration.

The bear and flow-site flows score each reading with an ONNX model over the
last ``window`` readings of its series (an autoencoder's reconstruction error,
or a classifier's probability). Three steps, between normalize and the alert
policy of :mod:`operators.steps`::

    window (per key, state: the last window - 1 rows)
      -> infer (no state: one onnxruntime call for every window of an activation, all keys)
      -> score (per key, state: the series' recent model outputs) -> DetectedBatch

The onnxruntime session lives outside every state (a per-process cache keyed by
the model file), so states pickle small and restore anywhere.

:class:`ErrorCalibrator` turns a model output into a calibrated score in
``[0, 1]``: the upper-tail probability of the output against the series' own
recent outputs (empirical inside, generalised Pareto beyond, as
:class:`~operators.detectors.tailmodel.TailModel`). Until a series has
``min_history`` outputs of its own it is judged against the model's recorded
held-out outputs (``reference``), so a new series is scored from its first
full window. A fixed threshold on the raw output (the originals' 0.48 or 0.5)
means a different thing on every animal and site; the tail probability does not.

Example:
    >>> import numpy as np
    >>> state = WindowState.empty(channels=1)
    >>> wins, first = state.push(np.arange(5.0)[:, None], window=3)
    >>> wins.shape, first, state.tail.ravel().tolist()
    ((3, 3, 1), 2, [3.0, 4.0])
    >>> state.push(np.array([[5.0]]), window=3)[0][0].ravel().tolist()
    [3.0, 4.0, 5.0]

"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bytewax.operators as op
import numpy as np
import numpy.typing as npt
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.calibrate import calibrate
from operators.detectors.robust import Gap
from operators.errorcal import ErrorCalibrator
from operators.events import DetectedBatch, FloatArray, SeriesBatch

F32 = npt.NDArray[np.float32]
Kind = Literal["autoencoder", "classifier"]
KINDS: tuple[Kind, ...] = ("autoencoder", "classifier")


@functools.lru_cache(maxsize=8)
def _session(path: str, threads: int) -> Any:
    """One onnxruntime session per model file and thread count, per process."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class WindowModel:
    """An ONNX model over windows of ``window`` readings of ``channels`` values.

    Attributes:
        name: Name shown in alerts and views (the detector's name).
        path: The ``.onnx`` file.
        window: Readings per window.
        channels: Values per reading.
        kind: ``autoencoder`` (output: the reconstructed window) or ``classifier``
            (output: the probability that the window's last reading is anomalous).
        center: Per-channel value subtracted before the model (raw units).
        scale: Per-channel divisor after ``center``.
        reference: Held-out outputs of normal windows, the calibration's prior.
        error: An autoencoder's output: ``last``, the absolute error of the newest
            reading averaged over channels (an anomaly scores when it arrives, and
            only then), or ``mean``, the mean absolute error over the whole window
            (a spike keeps every window that holds it high, ``window`` readings long).
        input_name: The model's input.
        threads: onnxruntime intra-op threads.
        max_batch: Windows per onnxruntime call.

    """

    name: str
    path: Path
    window: int
    channels: int
    kind: Kind
    center: tuple[float, ...]
    scale: tuple[float, ...]
    reference: tuple[float, ...] = ()
    error: Literal["last", "mean"] = "last"
    input_name: str = "window"
    threads: int = 1
    max_batch: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.name}: expected kind in {KINDS}, got {self.kind!r}")
        if self.error not in ("last", "mean"):
            raise ValueError(f"{self.name}: expected error 'last' or 'mean', got {self.error!r}")
        if self.window < 2 or self.channels < 1:
            msg = f"{self.name}: expected window >= 2 and channels >= 1, got {self.window}, "
            raise ValueError(msg + f"{self.channels}")
        if len(self.center) != self.channels or len(self.scale) != self.channels:
            msg = f"{self.name}: expected {self.channels} center and scale values"
            raise ValueError(msg)
        if not all(s > 0 and math.isfinite(s) for s in self.scale):
            raise ValueError(f"{self.name}: every scale must be finite and > 0, got {self.scale}")
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.name}: model file {self.path} does not exist")

    @classmethod
    def from_record(cls, name: str, record: Path, **overrides: Any) -> WindowModel:
        """The model described by its training record (a ``.json`` next to the ``.onnx``).

        The record holds ``window``, ``channels``, ``kind``, ``center``, ``scale``
        and ``reference`` (see the training scripts in :mod:`operators.models`).
        """
        doc = json.loads(record.read_text())
        fields: dict[str, Any] = {
            "name": name,
            "path": record.with_suffix(".onnx"),
            "window": int(doc["window"]),
            "channels": int(doc["channels"]),
            "kind": doc["kind"],
            "center": tuple(float(x) for x in doc["center"]),
            "scale": tuple(float(x) for x in doc["scale"]),
            "reference": tuple(float(x) for x in doc.get("reference", ())),
        }
        fields.update(overrides)
        return cls(**fields)

    def run(self, windows: F32) -> tuple[FloatArray, FloatArray]:
        """Model outputs of raw-unit windows ``(m, window, channels)``.

        Returns:
            ``(outputs, expected)``: per window, the autoencoder's absolute
            reconstruction error in scaled units (see :attr:`error`; or the
            classifier's probability), and the reconstruction of the last reading in raw
            units, ``(m, channels)`` (``nan`` for a classifier).

        """
        m = len(windows)
        outputs = np.empty(m, dtype=np.float64)
        expected = np.full((m, self.channels), np.nan)
        if not m:
            return outputs, expected
        center = np.asarray(self.center, np.float32)
        scale = np.asarray(self.scale, np.float32)
        session = _session(str(self.path), self.threads)
        for lo in range(0, m, self.max_batch):
            x = (windows[lo : lo + self.max_batch] - center) / scale
            y = session.run(None, {self.input_name: x.astype(np.float32)})[0]
            if self.kind == "classifier":
                outputs[lo : lo + len(x)] = np.asarray(y, np.float64).reshape(len(x))
            else:
                err = np.abs(y - x)
                if self.error == "last":
                    outputs[lo : lo + len(x)] = err[:, -1, :].mean(axis=1)
                else:
                    outputs[lo : lo + len(x)] = err.mean(axis=(1, 2))
                expected[lo : lo + len(x)] = y[:, -1, :] * scale + center
        return outputs, expected


@dataclass
class WindowState:
    """The last ``window - 1`` readings of one series, ``float32 (k, channels)``."""

    tail: F32

    @classmethod
    def empty(cls, channels: int) -> WindowState:
        """A series with no readings yet."""
        return cls(np.empty((0, channels), np.float32))

    def push(self, rows: FloatArray, window: int) -> tuple[F32, int]:
        """Add readings; return the windows ending at each of them that has a full one.

        Returns:
            ``(windows, first)``: ``(n - first, window, channels)`` windows, one per
            reading from index ``first`` on (earlier readings have too little history).

        """
        full = np.concatenate((self.tail, rows.astype(np.float32)))
        self.tail = full[max(len(full) - (window - 1), 0) :].copy()
        first = max(window - 1 - (len(full) - len(rows)), 0)
        if len(full) < window:
            return np.empty((0, window, full.shape[1]), np.float32), len(rows)
        view = np.lib.stride_tricks.sliding_window_view(full, window, axis=0)  # (k, C, W)
        wins = view[len(full) - len(rows) + first - window + 1 :].transpose(0, 2, 1)
        return np.ascontiguousarray(wins), first


@dataclass(frozen=True, slots=True, eq=False)
class WindowedBatch:
    """A batch of one series with the windows that end at its readings (from ``first``)."""

    batch: SeriesBatch
    windows: F32
    first: int


@dataclass(frozen=True, slots=True, eq=False)
class ModelOutputs:
    """A batch with the model's output per reading (``nan`` before a full window)."""

    batch: SeriesBatch
    outputs: FloatArray
    expected: FloatArray


def rows_of(batch: SeriesBatch) -> FloatArray:
    """The model's input rows of a batch: its channels, else its values as one channel."""
    return batch.values[:, None] if batch.channels is None else batch.channels


def infer_many(
    model: WindowModel, items: Sequence[tuple[str, WindowedBatch]]
) -> list[tuple[str, ModelOutputs]]:
    """Run ``model`` once over the windows of every item, whatever its key."""
    if not items:
        return []
    windows = [wb.windows for _, wb in items]
    outputs, expected = model.run(np.concatenate(windows))
    out = []
    at = 0
    for (key, wb), w in zip(items, windows, strict=True):
        n = len(wb.batch)
        o = np.full(n, np.nan)
        e = np.full(n, np.nan)
        o[wb.first :] = outputs[at : at + len(w)]
        e[wb.first :] = expected[at : at + len(w), 0]
        at += len(w)
        out.append((key, ModelOutputs(wb.batch, o, e)))
    return out


@dataclass
class ScoreState:
    """One series' calibration, gap detector and latest event time."""

    calibrator: ErrorCalibrator
    gap: Gap = field(default_factory=Gap)
    last_ts_ms: int | None = None


FEATURES = ("window", "gap")


def score_outputs(name: str, state: ScoreState, mo: ModelOutputs) -> DetectedBatch:
    """Calibrated scores of one series' model outputs, with the gap feature (updates ``state``)."""
    batch = mo.batch
    n = len(batch)
    start = batch.ts_ms[0] if state.last_ts_ms is None else state.last_ts_ms
    intervals = np.diff(np.concatenate(([start], batch.ts_ms))) / 1000.0
    first = 1 if state.last_ts_ms is None else 0
    gap = np.zeros(n)
    gap[first:] = state.gap.score_learn_many(intervals[first:])
    if n:
        state.last_ts_ms = int(batch.ts_ms[-1])
    stacked = np.vstack(
        (calibrate("surprise", state.calibrator.surprise(mo.outputs)), calibrate("surprise", gap))
    )
    features = np.argmax(stacked, axis=0).astype(np.int8)
    cols = np.arange(n)
    outputs = np.nan_to_num(mo.outputs, nan=0.0)
    parts = {"model output": outputs}
    has_expected = bool(np.isfinite(mo.expected).any())
    if has_expected:  # an autoencoder's reconstruction of the newest reading
        parts["expected"] = mo.expected
    return DetectedBatch(
        batch=batch,
        raw_scores=outputs,
        scores=stacked[features, cols],
        features=features,
        feature_names=FEATURES,
        detector=name,
        details=np.where(features == 1, intervals, outputs),
        parts=parts,
        expected=mo.expected if has_expected else None,
    )


class _WindowLogic(StatefulBatchLogic[SeriesBatch, WindowedBatch, WindowState]):
    def __init__(self, window: int, state: WindowState) -> None:
        self.window = window
        self.state = state

    def on_batch(self, values: list[SeriesBatch]) -> tuple[Iterable[WindowedBatch], bool]:
        out = []
        for b in values:
            wins, first = self.state.push(rows_of(b), self.window)
            out.append(WindowedBatch(b, wins, first))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> WindowState:
        return copy.deepcopy(self.state)


class _ScoreLogic(StatefulBatchLogic[ModelOutputs, DetectedBatch, ScoreState]):
    def __init__(self, name: str, state: ScoreState) -> None:
        self.name = name
        self.state = state

    def on_batch(self, values: list[ModelOutputs]) -> tuple[Iterable[DetectedBatch], bool]:
        return [score_outputs(self.name, self.state, v) for v in values], StatefulBatchLogic.RETAIN

    def snapshot(self) -> ScoreState:
        return copy.deepcopy(self.state)


@operator
def detect_windows(
    step_id: str,
    up: KeyedStream[SeriesBatch],
    model: WindowModel,
    calibrator: ErrorCalibrator | None = None,
) -> KeyedStream[DetectedBatch]:
    """Score each series with ``model`` over its windows; calibrated per series.

    Args:
        step_id: Unique id.
        up: Per-series batches (``channels`` set for a multi-channel model).
        model: The window model.
        calibrator: Calibration settings (default: :class:`ErrorCalibrator` with
            the model's ``reference``); copied for each series.

    """
    proto = calibrator or ErrorCalibrator(reference=model.reference)

    def window_builder(resume: WindowState | None) -> _WindowLogic:
        return _WindowLogic(model.window, resume or WindowState.empty(model.channels))

    def score_builder(resume: ScoreState | None) -> _ScoreLogic:
        return _ScoreLogic(model.name, resume or ScoreState(copy.deepcopy(proto)))

    windowed = op.stateful_batch("window", up, window_builder)
    outputs = op.flat_map_batch("infer", windowed, functools.partial(infer_many, model))
    return op.stateful_batch("score", outputs, score_builder)
