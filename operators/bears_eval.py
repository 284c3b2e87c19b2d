"""The bear flow, the original's approach and the default detector on a held-out simulated stream.

The held-out stream (:data:`HELDOUT`, :data:`HELDOUT_DAYS`) comes from another seed than
the training bears (:mod:`operators.models.train_bears`): five bears over three years,
scored from the end of the clean first year on. The original's approach, reproduced by
:func:`original_flags`:

1. readings standardised with the training scale, windows of 30 consecutive readings;
2. the reconstruction error of a window is the mean absolute error over its 30 steps
   (:meth:`operators.windowmodel.WindowModel.run`);
3. a window whose error exceeds the fixed threshold 0.48 flags the reading *after* it
   (the original paired window ``i..i+29`` with reading ``i+30``);
4. every reading on the date of a flagged reading, the day before and the day after
   is flagged ("anomalies widened to the whole day +-1 day").

The ``vigil`` row is the wildlife flow itself (:func:`operators.window_eval.model_alert_mask`:
the same model, its error calibrated per bear against the bear's own recent errors,
the gap feature, the default alert policy); the ``context`` row is the flow's
default streaming detector with no trained model
(:func:`operators.window_eval.detector_alert_mask`). Every approach reads each bear
from its first reading; alerts count from the end of the clean year on.

A flagged reading is an alert; :func:`operators.evaluation.evaluate` matches alerts to
the labelled episodes with a grace of :data:`GRACE_S` (one day) after an episode's last
reading. The ``per reading`` row flags the window's own last reading and does not widen.

Run ``python -m operators.bears_eval`` to print the figures.

Example:
    >>> windows_of(np.arange(32.0)).shape
    (3, 30, 1)

"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from generators.bears import BearSeries, BearSimConfig, bear_series
from operators.alerting import AlertPolicy
from operators.detectors import DEFAULT_DETECTOR
from operators.evaluation import Evaluation, evaluate
from operators.events import BoolArray, FloatArray, datetime_to_ms
from operators.models.lstm_ae import WINDOW
from operators.window_eval import detector_alert_mask, model_alert_mask, table
from operators.windowmodel import WindowModel

__all__ = [
    "GRACE_S",
    "HELDOUT",
    "HELDOUT_DAYS",
    "MODEL_NAME",
    "RECORD_PATH",
    "ROWS",
    "THRESHOLD",
    "evaluate_flags",
    "heldout_figures",
    "heldout_stream",
    "load_model",
    "original_flags",
    "windows_of",
]

RECORD_PATH = Path(__file__).resolve().parent / "models" / "bears_lstm_ae.json"
MODEL_NAME = "bears-lstm-ae"
#: The original's fixed threshold on the window's mean absolute error (scaled units).
THRESHOLD = 0.48
#: Seconds after an episode's last reading in which an alert still counts for it.
GRACE_S = 86_400.0
#: The held-out stream: another seed than training, anomalies after the first year.
HELDOUT = BearSimConfig(bears=5, seed=2024)
HELDOUT_DAYS = 3 * 365
_DAY_MS = 86_400_000


def windows_of(values: FloatArray, window: int = WINDOW) -> npt.NDArray[np.float32]:
    """Every run of ``window`` consecutive readings, ``float32 (n - window + 1, window, 1)``."""
    view = np.lib.stride_tricks.sliding_window_view(np.asarray(values, np.float32), window)
    return np.ascontiguousarray(view[:, :, None])


def load_model(record: Path = RECORD_PATH, threads: int = 0) -> WindowModel:
    """The autoencoder described by ``record`` (``threads`` 0: onnxruntime's default)."""
    return WindowModel.from_record(MODEL_NAME, record, threads=threads)


def original_flags(
    bear: BearSeries,
    model: WindowModel,
    *,
    threshold: float = THRESHOLD,
    widen_days: int = 1,
    next_reading: bool = True,
    error: Literal["last", "mean"] = "mean",
) -> BoolArray:
    """Which readings of ``bear`` the original's approach flags.

    Args:
        bear: One bear's readings.
        model: The autoencoder (:func:`load_model`).
        threshold: Fixed threshold on the window's mean absolute error.
        widen_days: Flag every reading within this many days of a flagged reading's
            date (the original: 1; 0: no widening).
        next_reading: Flag the reading after a window (the original) rather than its last.
        error: ``mean`` over the window (the original) or the ``last`` reading's error
            (what the flow scores), to tell the score's part from the calibration's.

    """
    mae = dataclasses.replace(model, error=error).run(windows_of(bear.values))[0]
    flags = np.zeros(len(bear), bool)
    if next_reading:
        flags[WINDOW:] = mae[:-1] > threshold
    else:
        flags[WINDOW - 1 :] = mae > threshold
    if widen_days:
        dates = bear.ts_ms // _DAY_MS
        bad = np.unique(dates[flags])
        near = np.unique((bad[:, None] + np.arange(-widen_days, widen_days + 1)).ravel())
        flags = np.isin(dates, near)
    return flags


def heldout_stream(cfg: BearSimConfig = HELDOUT, days: int = HELDOUT_DAYS) -> list[BearSeries]:
    """The held-out bears, whole (the first year gives the windows their history)."""
    return bear_series(cfg, days)


def evaluate_flags(
    streams: Sequence[BearSeries],
    flags: Sequence[BoolArray],
    from_ms: int,
    grace_s: float = GRACE_S,
) -> Evaluation:
    """Alerts (flagged readings) against the labels, counting readings from ``from_ms`` on."""
    readings: list[tuple[str, int, str | None]] = []
    alerts: list[tuple[str, int]] = []
    for bear, flag in zip(streams, flags, strict=True):
        keep = bear.ts_ms >= from_ms
        ts = bear.ts_ms[keep].tolist()
        names = [n for n, k in zip(bear.label_names(), keep.tolist(), strict=True) if k]
        readings += [(bear.bear_id, t, n) for t, n in zip(ts, names, strict=True)]
        alerts += [(bear.bear_id, int(t)) for t in bear.ts_ms[keep & flag]]
    return evaluate(readings, alerts, grace_s)


#: The original's rows of :func:`heldout_figures`: name, widen_days, next_reading, error.
ROWS: tuple[tuple[str, int, bool, Literal["last", "mean"]], ...] = (
    ("original", 1, True, "mean"),
    ("original_per_reading", 0, False, "mean"),
    ("fixed_0.48_last_error", 0, False, "last"),
)


def heldout_figures(model: WindowModel) -> dict[str, Any]:
    """Every approach's figures on the held-out stream, JSON-ready."""
    cfg = HELDOUT
    streams = heldout_stream()
    from_ms = datetime_to_ms(cfg.start) + cfg.clean_days * _DAY_MS
    policy = AlertPolicy()
    rows = {
        "vigil": evaluate_flags(
            streams,
            [
                model_alert_mask(b.bear_id, b.ts_ms, b.values, b.label_names(), model, policy)
                for b in streams
            ],
            from_ms,
        ).summary()
    }
    for name, widen, nxt, error in ROWS:
        flags = [
            original_flags(b, model, widen_days=widen, next_reading=nxt, error=error)
            for b in streams
        ]
        rows[name] = evaluate_flags(streams, flags, from_ms).summary()
    rows[DEFAULT_DETECTOR] = evaluate_flags(
        streams,
        [
            detector_alert_mask(b.bear_id, b.ts_ms, b.values, b.label_names(), policy)
            for b in streams
        ],
        from_ms,
    ).summary()
    return {
        "stream": (
            f"generators.bears.BearSimConfig(bears={cfg.bears}, seed={cfg.seed}), "
            f"{HELDOUT_DAYS} days, scored from day {cfg.clean_days}"
        ),
        "threshold": THRESHOLD,
        "grace_s": GRACE_S,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """Print every approach's figures on the held-out stream."""
    parser = argparse.ArgumentParser(
        prog="python -m operators.bears_eval", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--record", type=Path, default=RECORD_PATH, help="the model's record")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    figures = heldout_figures(load_model(args.record))
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"held-out stream: {figures['stream']}")
    print(f"threshold {THRESHOLD} on the window MAE; grace {GRACE_S / 3600:g} h after an episode")
    print(table(figures["rows"], ("h", 3600.0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
