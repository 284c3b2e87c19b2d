"""The ``vigil-score`` command contract, through a real subprocess."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from operators.score import nab_factory

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(60)
COMMAND = [sys.executable, "-m", "operators.score", "--detector", "tail"]


def synthetic_rows(n: int = 300, seed: int = 5) -> list[str]:
    rng = np.random.default_rng(seed)
    values = 20.0 + rng.normal(0.0, 0.5, n)
    if n > 250:
        values[250] = 60.0
    return [f"2024-01-01 00:{i // 60:02d}:{i % 60:02d},{v:.4f}" for i, v in enumerate(values)]


def run(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        COMMAND, input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=30, check=False
    )


def test_one_score_in_unit_interval_per_row() -> None:
    rows = synthetic_rows()
    out = run("timestamp,value\n" + "\n".join(rows) + "\n")
    assert out.returncode == 0, out.stderr
    scores = [float(s) for s in out.stdout.splitlines()]
    assert len(scores) == len(rows)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert scores[250] == max(scores)
    assert scores[250] > 0.9999


def test_scores_equal_the_callable_form() -> None:
    rows = synthetic_rows()
    out = run("timestamp,value\n" + "\n".join(rows) + "\n")
    f = nab_factory("tail")
    expected = [f(r.split(",")[0], float(r.split(",")[1])) for r in rows]
    assert [float(s) for s in out.stdout.splitlines()] == expected


def test_bad_rows_score_zero_and_are_reported() -> None:
    rows = synthetic_rows(60)
    rows[10] = "2024-01-01 00:00:10,not-a-number"
    rows[20] = "only-a-timestamp"
    rows[30] = "2024-01-01 00:00:30,nan"
    out = run("timestamp,value\n" + "\n".join(rows) + "\n")
    assert out.returncode == 0
    scores = [float(s) for s in out.stdout.splitlines()]
    assert len(scores) == len(rows)
    assert scores[10] == scores[20] == scores[30] == 0.0
    assert "row 10" in out.stderr
    assert "not-a-number" in out.stderr
    assert "row 20" in out.stderr
    assert "row 30" in out.stderr


def test_header_only_gives_no_output() -> None:
    out = run("timestamp,value\n")
    assert out.returncode == 0
    assert out.stdout == ""


def test_each_score_is_flushed_before_the_next_row_is_sent() -> None:
    """Lockstep, as the NAB runner drives it: row i+1 is written only after score i is read."""
    proc = subprocess.Popen(
        COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, bufsize=0
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = b""
    try:
        proc.stdin.write(b"timestamp,value\n")
        for i, row in enumerate(synthetic_rows(40)):
            proc.stdin.write(row.encode() + b"\n")
            while b"\n" not in buf:
                ready, _, _ = select.select([fd], [], [], 20.0)
                assert ready, f"no score for row {i} within 20 s"
                chunk = os.read(fd, 4096)
                assert chunk, f"command exited after {i} rows"
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            assert 0.0 <= float(line) <= 1.0
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
        assert proc.stdout.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_default_detector_with_options_equals_the_callable_form() -> None:
    rows = [
        f"2024-01-0{1 + i // 1440} {i // 60 % 24:02d}:{i % 60:02d}:00,{v}"
        for i, v in enumerate((20.0 + np.random.default_rng(3).normal(0.0, 0.5, 3000)).round(4))
    ]
    command = [sys.executable, "-m", "operators.score", "--option", "flagged=clip"]
    out = subprocess.run(
        command,
        input="timestamp,value\n" + "\n".join(rows) + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=True,
    )
    f = nab_factory("context", {"flagged": "clip"})
    expected = [f(r.split(",")[0], float(r.split(",")[1])) for r in rows]
    assert [float(s) for s in out.stdout.splitlines()] == expected


@pytest.mark.parametrize("option", ["flagged=ignore", "no_such_option=1", "missing-equals"])
def test_bad_detector_options_are_usage_errors(option: str) -> None:
    command = [sys.executable, "-m", "operators.score", "--option", option]
    out = subprocess.run(command, input="", capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 2
    assert "vigil-score: error:" in out.stderr
