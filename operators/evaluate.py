r"""``vigil-evaluate``: run a detector and the alert policy over a labelled stream, score alerts.

The stream comes on stdin (or ``--input FILE``) in one of two forms:

* ``jsonl``: the wire format of the flows, one reading per line with its ground-truth
  ``label``, exactly what ``vigil-generate sensors`` writes::

      vigil-generate sensors --count 200000 --seed 11 | vigil-evaluate --detector robust-z

  ``--wire metrics`` reads the metrics flow's field names (``series``, ``value``) instead
  of the sensors flow's (``sensor_id``, ``temp``)::

      vigil-generate metrics --count 30000 | vigil-evaluate --wire metrics --detector iforest

* ``csv``: a header line, then ``timestamp,value[,label][,series]`` rows; a label that is
  empty, ``0``, ``false`` or ``normal`` marks a normal row, anything else names the anomaly
  (``1`` counts as ``anomaly``); without a series column every row belongs to ``series``.

Instead of row labels, ``--windows FILE.json --key REL`` reads the ground truth as anomaly
windows in the format of NAB's ``combined_windows.json`` (``{"REL": [["start", "end"], ...]}``,
times read as UTC) and applies the windows of ``REL`` to every series of the stream, so a
NAB data file can be scored as it is::

    vigil-evaluate --format csv --input data/realKnownCause/nyc_taxi.csv \
        --windows labels/combined_windows.json --key realKnownCause/nyc_taxi.csv

Each series is scored as the flows score it (normalizer, value detector plus the ``stuck``
and ``gap`` features, calibration, alert policy), in event-time order, and the alerts are
matched to labelled episodes by :func:`operators.evaluation.evaluate`. One JSON object is
printed: precision, recall and F1 of alerts per labelled episode, false alerts per 1,000
readings, median detection delay, recall per anomaly kind and, under ``nab``, the NAB
score of the alerts per application profile (:mod:`operators.nabscore`; windows built
from the labelled episodes as NAB builds them, or the ``--windows`` as given). Rows inside
a ``--windows`` window count as ``anomaly`` rows for the episode figures. Unreadable lines
are counted and reported on stderr, never fatal.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

import numpy as np

from operators.alerting import AlertPolicy, AlertState, apply_policy
from operators.detectors import DEFAULT_DETECTOR, DETECTORS
from operators.evaluation import evaluate
from operators.events import BoolArray, SeriesBatch
from operators.nabscore import NabTally, tally_series, windows_from_labels, windows_from_times
from operators.normalize import NORMALIZERS, make_normalizer
from operators.score import detector_options
from operators.serde import METRICS, SENSORS, DecodeError, WireFormat, decode_fields, parse_ts_ms
from operators.steps import DetectConfig, detect_batch, new_detect_state

NORMAL_LABELS = frozenset({"", "0", "false", "normal", "none", "null"})
CHUNK = 1000


@dataclass
class Columns:
    """The readings of one series, in arrival order."""

    ts_ms: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)


def _label(raw: str) -> str | None:
    text = raw.strip()
    if text.lower() in NORMAL_LABELS:
        return None
    return "anomaly" if text == "1" else text


def read_jsonl(
    lines: Iterable[bytes], fmt: WireFormat = SENSORS
) -> Iterator[tuple[str, int, float, str | None] | str]:
    """Readings of wire-format lines; a reason string for each unreadable line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield decode_fields(None, line, fmt)
        except DecodeError as exc:
            yield f"line {number}: {exc}"


def read_csv(
    lines: Iterable[str], default_series: str
) -> Iterator[tuple[str, int, float, str | None] | str]:
    """Readings of ``timestamp,value[,label][,series]`` rows; a reason for each bad row."""
    rows = csv.reader(lines)
    header = [h.strip().lower() for h in next(rows, [])]
    if "timestamp" not in header or "value" not in header:
        yield f"header: expected columns timestamp,value[,label][,series], got {header}"
        return
    at = {
        name: header.index(name)
        for name in ("timestamp", "value", "label", "series")
        if name in header
    }
    for number, row in enumerate(rows, 2):
        try:
            ts_ms = parse_ts_ms(row[at["timestamp"]])
            value = float(row[at["value"]])
        except (IndexError, ValueError) as exc:
            yield f"line {number}: expected a timestamp and a number, got {row!r:.60} ({exc})"
            continue
        if not np.isfinite(value):
            yield f"line {number}: field 'value': expected a finite number, got {value!r}"
            continue
        label = _label(row[at["label"]]) if "label" in at and at["label"] < len(row) else None
        series = row[at["series"]] if "series" in at and at["series"] < len(row) else default_series
        yield series, ts_ms, value, label


def alert_mask(
    series: str,
    cols: Columns,
    detect: DetectConfig,
    policy: AlertPolicy,
    normalizer: str,
) -> BoolArray:
    """Per reading of one series, whether it raises an alert, scored as the flows score it."""
    norm = make_normalizer(normalizer)
    state = new_detect_state(detect)
    alert_state = AlertState()
    ts = np.asarray(cols.ts_ms, dtype=np.int64)
    values = np.asarray(cols.values, dtype=np.float64)
    out: list[BoolArray] = []
    for start in range(0, len(values), CHUNK):
        stop = start + CHUNK
        chunk = values[start:stop]
        batch = SeriesBatch(
            series=series,
            ts_ms=ts[start:stop],
            values=chunk,
            labels=tuple(cols.labels[start:stop]),
            normalized=norm.transform_many(chunk),
        )
        scored = apply_policy(policy, alert_state, detect_batch(detect, state, batch))
        out.append(scored.alerted)
    return np.concatenate(out) if out else np.zeros(0, dtype=bool)


def window_edges(doc: object, key: str) -> list[tuple[int, int]]:
    """Event-time edges (epoch ms, inclusive) of the windows of ``key`` in a NAB windows file.

    Raises:
        ValueError: when the document is not ``{"key": [["start", "end"], ...]}``
            or holds no entry for ``key``; the message says what arrived.

    Example:
        >>> window_edges({"a.csv": [["1970-01-01 00:00:01", "1970-01-01 00:00:02.5"]]}, "a.csv")
        [(1000, 2500)]

    """
    if not isinstance(doc, dict):
        msg = f"--windows: expected a JSON object of file -> windows, got {type(doc).__name__}"
        raise ValueError(msg)
    if key not in doc:
        example = f", e.g. {next(iter(doc))!r}" if doc else ""
        msg = f"--key: expected a file of the windows file ({len(doc)} files{example}), got {key!r}"
        raise ValueError(msg)
    windows = doc[key]
    if not isinstance(windows, list):
        msg = f"--windows: {key}: expected a list of windows, got {type(windows).__name__}"
        raise ValueError(msg)
    edges: list[tuple[int, int]] = []
    for i, pair in enumerate(windows):
        if not (isinstance(pair, list) and len(pair) == 2):
            msg = f"--windows: {key}: window {i}: expected [start, end], got {pair!r:.60}"
            raise ValueError(msg)
        try:
            start, end = parse_ts_ms(pair[0]), parse_ts_ms(pair[1])
        except DecodeError as exc:
            msg = f"--windows: {key}: window {i}: {exc}"
            raise ValueError(msg) from None
        if end < start:
            msg = f"--windows: {key}: window {i}: expected start <= end, got {pair!r}"
            raise ValueError(msg)
        edges.append((start, end))
    return edges


def label_by_windows(series: dict[str, Columns], edges: list[tuple[int, int]]) -> None:
    """Label ``anomaly`` every reading inside a window, every other one normal (in place)."""
    for cols in series.values():
        ts = np.asarray(cols.ts_ms, dtype=np.int64)
        inside = np.zeros(len(ts) + 1, dtype=np.int64)
        for start, end in edges:
            inside[np.searchsorted(ts, start)] += 1
            inside[np.searchsorted(ts, end, side="right")] -= 1
        cols.labels = ["anomaly" if n else None for n in np.cumsum(inside[:-1]).tolist()]


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (policy defaults are the flows')."""
    default = AlertPolicy()
    p = argparse.ArgumentParser(prog="vigil-evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--input", help="file to read (default stdin)")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument(
        "--wire",
        choices=["sensors", "metrics"],
        default="sensors",
        help="field names of jsonl readings: the sensors or the metrics flow's",
    )
    p.add_argument("--series", default="series", help="series name of CSV rows without one")
    p.add_argument("--detector", choices=sorted(DETECTORS), default=DEFAULT_DETECTOR)
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="detector constructor option (value read as JSON), e.g. flagged=clip; repeatable",
    )
    p.add_argument("--features", default="value,stuck,gap", help="value plus any of stuck, gap")
    p.add_argument("--normalizer", choices=sorted(NORMALIZERS), default="fixed")
    p.add_argument("--threshold", type=float, default=default.threshold)
    p.add_argument("--critical", type=float, default=default.critical)
    p.add_argument("--persistence", type=int, default=default.persistence)
    p.add_argument("--cooldown-s", type=float, default=default.cooldown_s)
    p.add_argument(
        "--grace-s", type=float, default=10.0, help="seconds after an episode that count"
    )
    p.add_argument("--windows", help="NAB windows file (combined_windows.json) to use as labels")
    p.add_argument("--key", help="with --windows: the file whose windows apply, e.g. a/b.csv")
    return p


def main(argv: list[str] | None = None, stdin: IO[bytes] | None = None) -> int:
    """Run the command; returns the exit code."""
    args = build_parser().parse_args(argv)
    features = {f.strip() for f in args.features.split(",") if f.strip()}
    if "value" not in features or features - {"value", "stuck", "gap"}:
        print(
            "vigil-evaluate: --features: expected value plus any of stuck, gap; "
            f"got {args.features!r}",
            file=sys.stderr,
        )
        return 2
    policy = AlertPolicy(args.threshold, args.critical, args.persistence, args.cooldown_s)
    try:
        policy.validate()
    except ValueError as exc:
        print(f"vigil-evaluate: {exc}", file=sys.stderr)
        return 2
    edges: list[tuple[int, int]] | None = None
    if (args.windows is None) != (args.key is None):
        print("vigil-evaluate: --windows and --key: expected both or neither", file=sys.stderr)
        return 2
    if args.windows is not None:
        try:
            with open(args.windows, "rb") as fh:
                edges = window_edges(json.load(fh), args.key)
        except (OSError, ValueError) as exc:
            print(f"vigil-evaluate: {exc}", file=sys.stderr)
            return 2
    try:
        options = detector_options(args.detector, args.option)
    except ValueError as exc:
        print(f"vigil-evaluate: --option: {exc}", file=sys.stderr)
        return 2
    detect = DetectConfig(
        args.detector,
        stuck="stuck" in features,
        gap="gap" in features,
        options=tuple(sorted(options.items())),
    )
    source: IO[bytes] = open(args.input, "rb") if args.input else (stdin or sys.stdin.buffer)  # noqa: SIM115
    with source:
        if args.format == "jsonl":
            rows = read_jsonl(source, METRICS if args.wire == "metrics" else SENSORS)
        else:
            rows = read_csv((line.decode("utf-8", "replace") for line in source), args.series)
        series: dict[str, Columns] = defaultdict(Columns)
        bad = 0
        for row in rows:
            if isinstance(row, str):
                bad += 1
                if bad <= 10:
                    print(f"vigil-evaluate: skipped {row}", file=sys.stderr)
                continue
            name, ts_ms, value, label = row
            cols = series[name]
            if cols.ts_ms and ts_ms <= cols.ts_ms[-1]:
                bad += 1
                if bad <= 10:
                    print(
                        f"vigil-evaluate: skipped {name!r} at {ts_ms} ms: out of order",
                        file=sys.stderr,
                    )
                continue
            cols.ts_ms.append(ts_ms)
            cols.values.append(value)
            cols.labels.append(label)
    if edges is not None:
        label_by_windows(series, edges)
    readings = [
        (name, t, label)
        for name, cols in series.items()
        for t, label in zip(cols.ts_ms, cols.labels, strict=True)
    ]
    alerts: list[tuple[str, int]] = []
    nab = NabTally()
    for name, cols in series.items():
        mask = alert_mask(name, cols, detect, policy, args.normalizer)
        ts = np.asarray(cols.ts_ms, dtype=np.int64)
        alerts.extend((name, t) for t in ts[mask].tolist())
        if edges is None:
            windows = windows_from_labels([label is not None for label in cols.labels])
        else:
            windows = windows_from_times(ts, edges)
            if len(windows) < len(edges):
                print(
                    f"vigil-evaluate: series {name!r}: {len(edges) - len(windows)} of "
                    f"{len(edges)} windows of {args.key} hold no reading or overlap",
                    file=sys.stderr,
                )
        nab += tally_series(len(ts), windows, mask)
    result = evaluate(readings, alerts, grace_s=args.grace_s)
    summary = {
        "detector": args.detector,
        "features": sorted(features),
        "threshold": args.threshold,
        "series": len(series),
        "skipped": bad,
        **result.summary(),
        "nab": nab.summary(),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
