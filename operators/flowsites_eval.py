"""The flow-site models and the original's approach on a held-out simulated stream.

The held-out stream (:data:`HELDOUT`, :data:`HELDOUT_DAYS`) is the simulator's
default settings with another seed than the training and validation sites of
:mod:`operators.models.train_flowsites`: eight sites over thirty days, a clean
two-day warm-up, then sensor faults. Every site is scored from its first reading.

The original's approach (:func:`original_flags`): readings standardised per channel
with the training constants, a window of the last 50 readings ending at every
reading, the supervised window classifier's probability, and a fixed threshold of
0.5: a reading whose window scores at least 0.5 is flagged. The classifier was
trained to say whether the window's *last* reading is faulty, so a flag points at
the reading that just arrived. The autoencoder has no original; its row flags a
reading whose newest-reading reconstruction error (mean absolute, scaled units, what
:class:`operators.windowmodel.WindowModel` computes) exceeds the 99th percentile of
the validation sites' normal windows, a fixed threshold chosen without labels.

A flagged reading is an alert; :func:`operators.evaluation.evaluate` matches alerts
to labelled episodes (runs of one label) with a grace of :data:`GRACE_S` (three
readings) after an episode's last reading: precision is true alerts over alerts,
recall found episodes over episodes, the delay the time from an episode's first
reading to its first alert. :func:`window_metrics` scores the windows themselves
(label of the last reading): precision, recall and F1 at the threshold, AUROC and
average precision.

:func:`flow_rows` adds, for comparison, the window-model flow's own alerting (the
same models calibrated per site, the gap feature and the default alert policy,
:func:`operators.window_eval.model_alert_mask`) and the default streaming detector on
the flow channel with no trained model.

Run ``python -m operators.flowsites_eval`` to print the figures.

Example:
    >>> windows_of(np.zeros((52, 5))).shape
    (3, 50, 5)
    >>> auroc(np.array([False, True, False, True]), np.array([0.1, 0.9, 0.3, 0.2]))
    0.75

"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from generators.flowsites import FlowSiteConfig, SiteSeries, site_arrays
from operators.alerting import AlertPolicy
from operators.detectors import DEFAULT_DETECTOR
from operators.evaluation import Evaluation, evaluate
from operators.events import BoolArray, FloatArray
from operators.models.flowsites_onnx import WINDOW
from operators.window_eval import detector_alert_mask, model_alert_mask, table
from operators.windowmodel import WindowModel

__all__ = [
    "GRACE_S",
    "HELDOUT",
    "HELDOUT_DAYS",
    "MODELS",
    "THRESHOLD",
    "auroc",
    "average_precision",
    "evaluate_flags",
    "flow_rows",
    "heldout_figures",
    "heldout_stream",
    "load_model",
    "original_flags",
    "recorded_threshold",
    "window_metrics",
    "window_outputs",
    "windows_of",
]

MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The shipped models: kind -> (detector name, training record).
MODELS = {
    "classifier": ("flowsites-classifier", MODELS_DIR / "flowsites_classifier.json"),
    "autoencoder": ("flowsites-ae", MODELS_DIR / "flowsites_ae.json"),
}
#: The original's fixed threshold on the classifier's probability.
THRESHOLD = 0.5
#: Seconds after an episode's last reading in which an alert still counts for it.
GRACE_S = 900.0
#: The held-out stream: the simulator's defaults, a seed no training set uses.
HELDOUT = FlowSiteConfig(sites=8, seed=2024)
HELDOUT_DAYS = 30
#: The channel that stands for a reading (flow), as in the flow-sites flow.
PRIMARY = 1
_TICKS_PER_DAY = 288


def windows_of(values: npt.ArrayLike, window: int = WINDOW) -> npt.NDArray[np.float32]:
    """Every run of ``window`` consecutive readings, ``float32 (n - window + 1, window, 5)``.

    Window ``i`` ends with reading ``i + window - 1``.
    """
    arr = np.asarray(values, np.float32)
    if len(arr) < window:
        return np.zeros((0, window, arr.shape[1]), np.float32)
    view = np.lib.stride_tricks.sliding_window_view(arr, window, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def load_model(
    kind: str = "classifier", record: Path | None = None, threads: int = 0
) -> WindowModel:
    """A shipped model by kind (``threads`` 0: onnxruntime's default)."""
    name, shipped = MODELS[kind]
    return WindowModel.from_record(name, record or shipped, threads=threads)


def recorded_threshold(kind: str, record: Path | None = None) -> float:
    """The fixed threshold in a model's record (0.5 for the classifier, q99 for the autoencoder)."""
    doc = json.loads((record or MODELS[kind][1]).read_text())
    return float(doc["threshold"])


def heldout_stream(cfg: FlowSiteConfig = HELDOUT, days: int = HELDOUT_DAYS) -> list[SiteSeries]:
    """The held-out sites, whole."""
    return site_arrays(cfg, days * _TICKS_PER_DAY)


def window_outputs(site: SiteSeries, model: WindowModel) -> FloatArray:
    """The model's output for the window ending at each reading (``nan`` for the first 49)."""
    out = np.full(len(site.values), np.nan)
    out[WINDOW - 1 :] = model.run(windows_of(site.values))[0]
    return out


def original_flags(site: SiteSeries, model: WindowModel, threshold: float = THRESHOLD) -> BoolArray:
    """Readings whose window's model output is at least ``threshold`` (the original's rule)."""
    outputs = window_outputs(site, model)
    return np.asarray(np.nan_to_num(outputs, nan=-np.inf) >= threshold)


def evaluate_flags(
    streams: Sequence[SiteSeries], flags: Sequence[BoolArray], grace_s: float = GRACE_S
) -> Evaluation:
    """Alerts (flagged readings) against the labelled episodes of every site."""
    readings: list[tuple[str, int, str | None]] = []
    alerts: list[tuple[str, int]] = []
    for site, flag in zip(streams, flags, strict=True):
        ts = site.ts_ms.tolist()
        readings += [(site.site_id, t, n) for t, n in zip(ts, site.label_names, strict=True)]
        alerts += [(site.site_id, int(t)) for t in site.ts_ms[flag]]
    return evaluate(readings, alerts, grace_s)


def auroc(truth: BoolArray, score: FloatArray) -> float:
    """Area under the ROC curve: the chance a positive outscores a negative (ties half)."""
    from scipy.stats import rankdata

    ranks = rankdata(score)
    pos = int(truth.sum())
    neg = len(truth) - pos
    if not pos or not neg:
        return float("nan")
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def average_precision(truth: BoolArray, score: FloatArray) -> float:
    """Mean of the precision at each positive, ranked by decreasing score.

    Example:
        >>> average_precision(np.array([True, False, True]), np.array([0.9, 0.8, 0.1]))
        0.8333333333333333

    """
    order = np.argsort(-score, kind="stable")
    hits = truth[order]
    if not hits.any():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def window_metrics(truth: BoolArray, score: FloatArray, threshold: float) -> dict[str, float]:
    """Per-window figures: the last reading's label against the score, JSON-ready."""
    flag = score >= threshold
    tp = int((flag & truth).sum())
    precision = tp / int(flag.sum()) if flag.any() else 1.0
    recall = tp / int(truth.sum()) if truth.any() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "windows": len(truth),
        "positives": int(truth.sum()),
        "threshold": round(float(threshold), 6),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "auroc": round(auroc(truth, score), 4),
        "average_precision": round(average_precision(truth, score), 4),
    }


def _stream_name(cfg: FlowSiteConfig, days: int) -> str:
    return f"generators.flowsites.FlowSiteConfig(sites={cfg.sites}, seed={cfg.seed}), {days} days"


def heldout_figures(
    model: WindowModel, threshold: float, streams: Sequence[SiteSeries] | None = None
) -> dict[str, Any]:
    """A model's fixed-threshold figures on the held-out stream, JSON-ready.

    Args:
        model: The classifier (the original's approach at 0.5) or the autoencoder
            (its newest-reading error, ``error="last"``).
        threshold: The fixed threshold on the model's output.
        streams: The held-out sites (default :func:`heldout_stream`).

    """
    sites = list(streams) if streams is not None else heldout_stream()
    outputs = [window_outputs(s, model) for s in sites]
    flags = [np.nan_to_num(o, nan=-np.inf) >= threshold for o in outputs]
    scored = np.concatenate([o[WINDOW - 1 :] for o in outputs])
    truth = np.concatenate([s.labels[WINDOW - 1 :] > 0 for s in sites])
    return {
        "stream": _stream_name(HELDOUT, HELDOUT_DAYS) if streams is None else "given",
        "grace_s": GRACE_S,
        "alerts": evaluate_flags(sites, flags).summary(),
        "windows": window_metrics(truth, scored, threshold),
    }


def flow_rows(
    models: Sequence[WindowModel], streams: Sequence[SiteSeries], policy: AlertPolicy | None = None
) -> dict[str, dict[str, object]]:
    """The window-model flow's figures with each model, and the default detector's."""
    policy = policy or AlertPolicy()
    rows: dict[str, dict[str, object]] = {}
    for model in models:
        flags = [
            model_alert_mask(
                s.site_id, s.ts_ms, s.values, s.label_names, model, policy, primary=PRIMARY
            )
            for s in streams
        ]
        rows[f"vigil {model.name}"] = evaluate_flags(streams, flags).summary()
    flags = [
        detector_alert_mask(s.site_id, s.ts_ms, s.values[:, PRIMARY], s.label_names, policy)
        for s in streams
    ]
    rows[f"vigil {DEFAULT_DETECTOR} (no model)"] = evaluate_flags(streams, flags).summary()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the held-out figures of the original's approach (and, with ``--flow``, the flow's)."""
    parser = argparse.ArgumentParser(
        prog="python -m operators.flowsites_eval", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--flow", action="store_true", help="add the window-model flow's rows")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    streams = heldout_stream()
    classifier = load_model("classifier")
    autoencoder = load_model("autoencoder")
    ae_threshold = recorded_threshold("autoencoder")
    figures = {
        "stream": _stream_name(HELDOUT, HELDOUT_DAYS),
        "grace_s": GRACE_S,
        "original classifier p>=0.5": heldout_figures(classifier, THRESHOLD, streams),
        "autoencoder error>=q99": heldout_figures(autoencoder, ae_threshold, streams),
    }
    rows = {k: v["alerts"] for k, v in figures.items() if isinstance(v, dict)}
    if args.flow:
        rows.update(flow_rows([classifier, autoencoder], streams))
        figures["flow"] = {k: rows[k] for k in list(rows)[2:]}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"held-out stream: {figures['stream']}; grace {GRACE_S / 60:g} min after an episode")
    print(table(rows, ("min", 60.0)))
    print("\nper window (label of the last reading):")
    for name in ("original classifier p>=0.5", "autoencoder error>=q99"):
        w = figures[name]["windows"]  # type: ignore[index]
        print(f"  {name:<32}" + "  ".join(f"{k} {v}" for k, v in w.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
