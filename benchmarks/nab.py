"""NAB v1.1 benchmark of a registered detector on the labelled streams in shared/bench/nab.

Runs ``shared/bench/nab/run_detector.py`` twice: with the fast
``--callable operators.score:nab_factory`` form, and with the real command
(``vigil-score``, or ``python -m operators.score`` when the script is not
installed) in lockstep, to prove the command contract; checks that both give
the same scores; rescores the callable run at a fixed alert threshold with
``score.py --threshold``; measures the batch form's speed (events/s on one core)
and the pickled state of one series after each file; prints it all as JSON.

The NAB scripts need pandas, which is not a project dependency: run them with
an interpreter that has numpy and pandas (and river, which the detectors
import), e.g.::

    python3 -m venv /tmp/nabenv
    /tmp/nabenv/bin/pip install "numpy~=2.4" pandas "river~=0.26.1"
    .venv/bin/python benchmarks/nab.py --detector tail --python /tmp/nabenv/bin/python

Options: ``--threshold`` (default 0.999), ``--jobs``, ``--skip-cmd`` (callable
run only), ``--nab-root`` (default ``../shared/bench/nab``), ``--out`` (run
folders, default ``./nab-runs``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from operators.detectors import DEFAULT_DETECTOR, make_detector  # noqa: E402
from operators.score import detector_options  # noqa: E402

PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def run_runner(python: str, runner: Path, name: str, out: Path, extra: list[str]) -> dict:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [python, str(runner), "--name", name, "--out", str(out), *extra]
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "summary.json").read_text())


def fixed_threshold(python: str, nab_root: Path, out: Path, threshold: float) -> dict:
    dest = out / "fixed.json"
    subprocess.run(
        [
            python,
            str(nab_root / "score.py"),
            str(out),
            "--threshold",
            str(threshold),
            "--json",
            str(dest),
            "--nab-root",
            str(nab_root),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(dest.read_text())


def read_series(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Values and the seconds between consecutive timestamps of one data file."""
    values = np.loadtxt(path, delimiter=",", skiprows=1, usecols=1, dtype=np.float64, ndmin=1)
    stamps = np.loadtxt(path, delimiter=",", skiprows=1, usecols=0, dtype=str, ndmin=1)
    seconds = np.diff(stamps.astype("datetime64[s]")).astype(np.float64)
    return values, seconds


def speed_and_size(detector: str, data: Path, options: dict | None = None) -> dict:
    files = sorted(data.rglob("*.csv"))
    series = [read_series(f) for f in files]
    sizes = []
    seconds = 0.0
    for xs, intervals in series:
        d = make_detector(detector, options)
        t0 = time.process_time()
        # As the detect step does: the spacing of a batch, then its values.
        d.observe_intervals(intervals)
        d.score_learn_many(xs)
        seconds += time.process_time() - t0
        sizes.append(len(pickle.dumps(d)))
    events = sum(len(xs) for xs, _ in series)
    return {
        "events": events,
        "events_per_s_batch_one_core": round(events / seconds),
        "pickled_bytes_per_series_max": max(sizes),
        "pickled_bytes_per_series_median": int(np.median(sizes)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--detector", default=DEFAULT_DETECTOR)
    ap.add_argument("--threshold", type=float, default=0.999)
    ap.add_argument("--python", default=sys.executable, help="interpreter with numpy and pandas")
    ap.add_argument("--nab-root", type=Path, default=ROOT.parent / "shared" / "bench" / "nab")
    ap.add_argument("--out", type=Path, default=Path("nab-runs"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--skip-cmd", action="store_true", help="only the callable run")
    ap.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE", help="detector option"
    )
    args = ap.parse_args(argv)
    options = detector_options(args.detector, args.option)

    runner = args.nab_root / "run_detector.py"
    common = ["--nab-root", str(args.nab_root), "--jobs", str(args.jobs)]
    name = f"vigil-{args.detector}"
    out = (args.out / name).resolve()
    fast = run_runner(
        args.python,
        runner,
        name,
        out,
        [
            "--callable",
            "operators.score:nab_factory",
            "--param",
            f"detector={args.detector}",
            "--param",
            f"options={json.dumps(options)}",
            *common,
        ],
    )
    report: dict[str, object] = {
        "detector": args.detector,
        "options": options,
        "nab": {p: round(fast["scores"][p]["score"], 2) for p in PROFILES},
        "tuned_thresholds": {p: fast["scores"][p]["threshold"] for p in PROFILES},
    }
    fixed = fixed_threshold(args.python, args.nab_root, out, args.threshold)
    report["fixed_threshold"] = args.threshold
    report["nab_at_fixed_threshold"] = {p: round(fixed[p]["score"], 2) for p in PROFILES}

    if not args.skip_cmd:
        script = shutil.which("vigil-score", path=str(Path(sys.executable).parent))
        base = script if script else f"{sys.executable} -m operators.score"
        command = " ".join(
            [f"{base} --detector {args.detector}"] + [f"--option {o}" for o in args.option]
        )
        cmd_out = (args.out / f"{name}-cmd").resolve()
        slow = run_runner(args.python, runner, f"{name}-cmd", cmd_out, ["--cmd", command, *common])
        same = all(
            (cmd_out / rel).read_text() == (out / rel).read_text()
            for rel in (p["file"] for p in fast["per_file"])
        )
        report["cmd"] = {
            "command": command,
            "nab": {p: round(slow["scores"][p]["score"], 2) for p in PROFILES},
            "same_scores_as_callable": same,
            "seconds_wall": round(slow["seconds_wall"], 1),
        }
    report.update(speed_and_size(args.detector, args.nab_root / "data", options))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
