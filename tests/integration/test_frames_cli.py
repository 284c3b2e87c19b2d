"""``vigil-frames`` on a folder of FITS files, as a user with their own telescope runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from operators.frames_cli import main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

REFS = 8


@pytest.fixture(scope="module")
def night(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated night written as FITS files with a truth file."""
    out = tmp_path_factory.mktemp("night")
    gen = subprocess.run(
        [sys.executable, "-m", "generators.cli", "frames", "--out", str(out), "--count", "30",
         "--width", "192", "--height", "144", "--stars", "60", "--references", str(REFS),
         "--seed", "2", "--hot-column-prob", "0.3", "--satellite-trail-prob", "0.2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    return out


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_index_score_accept_info(
    night: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bank = ["--bank", str(tmp_path / "bank.db"), "--model", "random", "--quiet"]
    files = sorted(night.glob("*.fits"))
    truth = {
        json.loads(t)["file"]: json.loads(t)
        for t in (night / "truth.jsonl").read_text().split("\n")
        if t
    }
    refs = [str(f) for f in files[:REFS]]
    assert main([*bank, "index", "--target", "M31", *refs]) == 0
    [summary] = lines(capsys)
    assert summary["references"] == REFS
    assert summary["patches"] == REFS * 5 * 6  # 2 x 2 cells of 16 px: 144 / 32, 192 / 32
    assert summary["threshold"] > 0

    rest = files[REFS:]
    assert main([*bank, "score", *map(str, rest)]) == 0
    scored = lines(capsys)
    assert [Path(r["file"]).name for r in scored] == [f.name for f in rest]
    for r in scored:
        t = truth[Path(r["file"]).name]
        if t["unusable"]:
            assert r["skipped"]
            assert r["score"] is None
    anomalous = [r for r in scored if r["is_anomaly"]]
    assert anomalous
    assert all(r["boxes"] for r in anomalous)
    hits = [r for r in anomalous if truth[Path(r["file"]).name]["truth"]]
    assert len(hits) >= len(anomalous) // 2

    # Feedback: a frame a person marks normal no longer alerts.
    marked = anomalous[0]["file"]
    assert main([*bank, "accept", marked]) == 0
    capsys.readouterr()
    assert main([*bank, "score", marked]) == 0
    [again] = lines(capsys)
    assert not again["is_anomaly"]
    assert again["score"] < anomalous[0]["score"]

    assert main([*bank, "info"]) == 0
    [info] = lines(capsys)
    assert info["target"] == "M31"
    assert info["patches"] == (REFS + 1) * 5 * 6


def test_bad_files_are_reported_and_the_rest_scored(
    night: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bank = ["--bank", str(tmp_path / "bank.db"), "--model", "random", "--quiet"]
    files = sorted(night.glob("*.fits"))
    assert main([*bank, "index", "--target", "M31", *map(str, files[:REFS])]) == 0
    capsys.readouterr()
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    assert main([*bank, "score", str(broken), str(files[-1])]) == 1
    captured = capsys.readouterr()
    assert "broken.fits" in captured.err
    assert len(captured.out.splitlines()) == 1
    # A target with no references is skipped with the reason, not scored.
    assert main([*bank, "--object", "M42", "score", str(files[-1])]) == 0


def test_unknown_target_is_skipped_and_usage_errors(tmp_path: Path) -> None:
    assert main(["--bank", str(tmp_path / "b.db"), "--model", "nope.onnx", "info"]) == 2
    with pytest.raises(SystemExit):
        main(["index"])  # no --target, no files
