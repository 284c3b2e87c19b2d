"""The ``vigil-score`` command: score one CSV stream, one calibrated score per row.

Reads CSV ``timestamp,value`` on standard input (a header line first) and
writes, for each data row, the calibrated anomaly score in [0, 1] that the
flows' alert policy thresholds, one per line, flushed after each row. It reads
line by line and scores each row before reading the next, so it can run in
lockstep with a caller that sends row ``i + 1`` only after reading score ``i``
(the NAB runner's default). A row whose value is not a finite number is
reported on standard error and scores 0, so every row still gets one line.

Usage::

    vigil-score [--detector NAME] < series.csv
    python -m operators.score --detector tail < series.csv

:func:`nab_factory` is the same scoring as a Python callable, for the NAB
runner's faster ``--callable operators.score:nab_factory`` mode.

Example:
    >>> f = nab_factory("tail")
    >>> scores = [f(f"t{i}", 20.0 + (i % 7) * 0.1) for i in range(200)]
    >>> all(0.0 <= s <= 1.0 for s in scores)
    True
    >>> f("t200", 95.0) > 0.9999
    True

"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import numpy as np

from operators.calibrate import calibrate
from operators.detectors import DEFAULT_DETECTOR, DETECTORS, make_detector


def nab_factory(
    detector: str = DEFAULT_DETECTOR, options: Mapping[str, Any] | None = None
) -> Callable[[str, float], float]:
    """A fresh scorer ``f(timestamp, value) -> calibrated score`` for one series.

    The spacing of the timestamps is passed to the detector before each value
    (seasonal detectors learn the length of a day in readings from it); a
    timestamp that cannot be read only leaves that spacing out.

    Args:
        detector: Registered detector name.
        options: The detector's constructor options.

    Raises:
        ValueError: for an unknown detector name or options it does not take.

    """
    det = make_detector(detector, options)
    last: list[datetime] = []

    def score(timestamp: str, value: float) -> float:
        try:
            ts = datetime.fromisoformat(timestamp.strip())
        except ValueError:
            pass
        else:
            ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
            if last:
                det.observe_intervals(np.array([(ts - last[0]).total_seconds()]))
            last[:] = [ts]
        raw = det.score_learn_many(np.array([value], dtype=np.float64))
        return float(calibrate(det.calibrator, raw)[0])

    return score


def parse_option(text: str) -> tuple[str, Any]:
    """A ``NAME=VALUE`` command-line option; the value is read as JSON, else kept as text.

    Example:
        >>> parse_option("flag_level=3.5"), parse_option("flagged=clip")
        (('flag_level', 3.5), ('flagged', 'clip'))

    Raises:
        ValueError: when there is no ``=`` or no name.

    """
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        msg = f"expected NAME=VALUE, got {text!r}"
        raise ValueError(msg)
    try:
        return name.strip(), json.loads(value)
    except json.JSONDecodeError:
        return name.strip(), value


def detector_options(detector: str, texts: list[str]) -> dict[str, Any]:
    """The ``--option NAME=VALUE`` texts as constructor options, checked on ``detector``.

    Raises:
        ValueError: for a malformed option, or options the detector does not take or accept.

    """
    options = dict(parse_option(text) for text in texts)
    make_detector(detector, options)
    return options


def _parse_value(line: str) -> float:
    """The finite ``value`` field of a ``timestamp,value`` row.

    Raises:
        ValueError: naming what was expected and what arrived.

    """
    fields = line.split(",")
    if len(fields) < 2:
        msg = f"expected 'timestamp,value', got {line!r}"
        raise ValueError(msg)
    text = fields[1].strip()
    try:
        value = float(text)
    except ValueError:
        msg = f"expected a number in column 'value', got {text!r}"
        raise ValueError(msg) from None
    if not math.isfinite(value):
        msg = f"expected a finite number in column 'value', got {text!r}"
        raise ValueError(msg)
    return value


def score_stream(
    detector: str,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    options: Mapping[str, Any] | None = None,
) -> int:
    """Score every row of ``stdin`` onto ``stdout``; returns the number of bad rows."""
    score = nab_factory(detector, options)
    bad = 0
    row = 0
    first = True
    while True:
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        if first:
            first = False
            if line.split(",")[0].strip().lower() == "timestamp":
                continue
            print("vigil-score: no 'timestamp,value' header; reading rows", file=stderr)
        try:
            value = _parse_value(line)
        except ValueError as err:
            bad += 1
            print(f"vigil-score: row {row}: {err}; scored 0", file=stderr, flush=True)
            result = 0.0
        else:
            result = score(line.split(",", 1)[0], value)
        stdout.write(f"{result!r}\n")
        stdout.flush()
        row += 1
    return bad


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vigil-score``; returns the exit status (0, or 2 on bad usage)."""
    parser = argparse.ArgumentParser(
        prog="vigil-score",
        description="Score CSV 'timestamp,value' rows from stdin: one calibrated score "
        "in [0, 1] per row on stdout, flushed after each row.",
    )
    parser.add_argument(
        "--detector",
        default=DEFAULT_DETECTOR,
        choices=sorted(DETECTORS),
        help=f"registered detector (default: {DEFAULT_DETECTOR})",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="detector constructor option (value read as JSON), e.g. flagged=clip; repeatable",
    )
    args = parser.parse_args(argv)
    try:
        options = detector_options(args.detector, args.option)
    except ValueError as exc:
        parser.error(str(exc))
    score_stream(args.detector, sys.stdin, sys.stdout, sys.stderr, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
