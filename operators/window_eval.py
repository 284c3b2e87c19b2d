"""Alerts of whole labelled series as the flows raise them, for the model flows' evaluations.

:func:`model_alert_mask` runs a series through the steps of a window-model flow
(:mod:`operators.windowmodel`: windows, model, per-series calibration, gap
feature) and the alert policy, chunk by chunk, exactly as the flow does with
the same readings. :func:`detector_alert_mask` does the same for a streaming
detector of :mod:`operators.detectors` (no trained model), as ``vigil-evaluate``
does. The bear and flow-site evaluations (:mod:`operators.bears_eval`,
:mod:`operators.flowsites_eval`) put them next to the originals' approaches.

Example:
    >>> ts = np.arange(300, dtype=np.int64) * 21_600_000
    >>> values = 50.0 + np.sin(np.arange(300) / 5.0)
    >>> values[250] = 150.0
    >>> mask = detector_alert_mask("b", ts, values, [None] * 300, AlertPolicy())
    >>> np.flatnonzero(mask).tolist()
    [250]

"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from operators.alerting import AlertPolicy, AlertState, apply_policy
from operators.detectors import DEFAULT_DETECTOR
from operators.errorcal import ErrorCalibrator
from operators.evaluate import Columns, alert_mask
from operators.events import BoolArray, FloatArray, IntArray, SeriesBatch
from operators.steps import DetectConfig
from operators.windowmodel import (
    ScoreState,
    WindowedBatch,
    WindowModel,
    WindowState,
    infer_many,
    score_outputs,
)

CHUNK = 1000


def model_alert_mask(
    series: str,
    ts_ms: IntArray,
    rows: FloatArray,
    labels: Sequence[str | None],
    model: WindowModel,
    policy: AlertPolicy,
    calibrator: ErrorCalibrator | None = None,
    primary: int = 0,
) -> BoolArray:
    """Per reading of one series, whether the window-model flow alerts on it.

    Args:
        series: The series' key.
        ts_ms: Event times, increasing.
        rows: ``(n, model.channels)`` values (a 1-D array: one channel).
        labels: Ground truth per reading (carried into the alerts only).
        model: The window model.
        policy: The alert policy.
        calibrator: Calibration settings (default: the model's reference).
        primary: The channel that stands for the reading.

    """
    rows = rows[:, None] if rows.ndim == 1 else rows
    window = WindowState.empty(model.channels)
    state = ScoreState(calibrator or ErrorCalibrator(reference=model.reference))
    alert_state = AlertState()
    out: list[BoolArray] = []
    for lo in range(0, len(rows), CHUNK):
        chunk = rows[lo : lo + CHUNK]
        batch = SeriesBatch(
            series=series,
            ts_ms=ts_ms[lo : lo + CHUNK],
            values=chunk[:, primary].astype(np.float64),
            labels=tuple(labels[lo : lo + CHUNK]),
            channels=chunk.astype(np.float64) if model.channels > 1 else None,
        )
        wins, first = window.push(chunk, model.window)
        ((_, outputs),) = infer_many(model, [(series, WindowedBatch(batch, wins, first))])
        det = score_outputs(model.name, state, outputs)
        out.append(apply_policy(policy, alert_state, det).alerted)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def detector_alert_mask(
    series: str,
    ts_ms: IntArray,
    values: FloatArray,
    labels: Sequence[str | None],
    policy: AlertPolicy,
    detector: str = DEFAULT_DETECTOR,
    normalizer: str = "robust",
) -> BoolArray:
    """Per reading of one series, whether a flow with ``detector`` (no model) alerts on it."""
    cols = Columns(ts_ms.tolist(), values.tolist(), list(labels))
    return alert_mask(series, cols, DetectConfig(detector), policy, normalizer)


def table(rows: Mapping[str, Mapping[str, Any]], delay_unit: tuple[str, float]) -> str:
    """A text table of :meth:`operators.evaluation.Evaluation.summary` rows, one per approach.

    Args:
        rows: Summaries by approach name.
        delay_unit: The median delay's unit and its seconds, e.g. ``("h", 3600.0)``.

    """
    unit, seconds = delay_unit
    width = max([8, *map(len, rows)]) + 2
    head = f"{'approach':<{width}}{'episodes':>9}{'found':>7}{'recall':>8}{'alerts':>8}"
    head += f"{'precision':>10}{'F1':>7}{'delay ' + unit:>10}  recall by kind"
    lines = [head]
    for name, r in rows.items():
        delay = r["median_delay_s"]
        shown = "-" if delay is None else f"{delay / seconds:.1f}"
        kinds = ", ".join(f"{k} {v}" for k, v in r["recall_by_kind"].items())
        lines.append(
            f"{name:<{width}}{r['episodes']:>9}{r['detected']:>7}{r['recall']:>8.3f}"
            f"{r['alerts']:>8}{r['precision']:>10.3f}{r['f1']:>7.3f}{shown:>10}  {kinds}"
        )
    return "\n".join(lines)
