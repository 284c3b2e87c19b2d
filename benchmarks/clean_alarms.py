"""False alarms of a detector on clean synthetic streams that hold no anomaly.

Every reading a clean stream gets over the threshold is a false alarm. The streams are
daily cycles (amplitude 30 around 50) sampled 24, 288 or 1,440 times a day with Gaussian
noise, white noise, a noisy square wave, a random walk, sparse exponential spikes and a
daily cycle with heavy-tailed (Student t, 3 degrees of freedom) noise, each over several
seeds. The first seventh of each stream is not counted (it is NAB's probation share).
One JSON object a line: a stream kind, its readings and seeds, and the readings over the
threshold for each setting compared (by default ``context`` as it is, and without its
burst channel).

    .venv/bin/python benchmarks/clean_alarms.py
    .venv/bin/python benchmarks/clean_alarms.py --compare '{}' '{"bursts": 0}' --threshold 2.468

``--threshold`` is in the detector's digits (2.468 digits is the calibrated 0.9966, the
tuned NAB threshold of ``context``; 3 digits is the flows' 0.999).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from operators.detectors import DETECTORS

Stream = tuple[str, int, float, Callable[[np.random.Generator], np.ndarray]]


def daily(n: int, per_day: int, noise: float) -> Callable[[np.random.Generator], np.ndarray]:
    """A daily cycle of ``per_day`` readings with Gaussian noise of ``noise``."""
    t = np.arange(n)
    return lambda rng: 50.0 + 30.0 * np.sin(2 * np.pi * t / per_day) + rng.normal(0, noise, n)


def streams(n_short: int, n_long: int) -> Iterator[Stream]:
    """(kind, readings, seconds between readings, maker from a random generator)."""
    t = np.arange(n_short)
    yield "daily 288, noise 1", n_short, 300.0, daily(n_short, 288, 1.0)
    yield "daily 288, noise 3", n_short, 300.0, daily(n_short, 288, 3.0)
    yield "white noise", n_short, 300.0, lambda rng: rng.normal(0, 1, n_short)
    yield (
        "square wave",
        n_short,
        300.0,
        lambda rng: np.where((t // 144) % 2 == 0, 20.0, 80.0) + rng.normal(0, 1, n_short),
    )
    yield "random walk", n_short, 300.0, lambda rng: np.cumsum(rng.normal(0, 1, n_short))
    yield (
        "sparse spikes",
        n_short,
        300.0,
        lambda rng: rng.exponential(1, n_short) * (rng.random(n_short) < 0.05) * 10,
    )
    yield (
        "daily 288, t noise",
        n_short,
        300.0,
        lambda rng: np.maximum(
            0.0, 50 + 30 * np.sin(2 * np.pi * t / 288) + rng.standard_t(3, n_short) * 5
        ),
    )
    for per_day, seconds in ((24, 3600.0), (288, 300.0), (1440, 60.0)):
        for noise in (0.3, 1.0, 2.0):
            yield f"daily {per_day}, noise {noise}", n_long, seconds, daily(n_long, per_day, noise)


def alarms(
    name: str, options: dict[str, Any], xs: np.ndarray, seconds: float, threshold: float
) -> int:
    """Readings after the probation share that score over ``threshold`` digits."""
    detector = DETECTORS[name](**options)
    detector.observe_intervals(np.full(8, seconds))
    scores = detector.score_learn_many(xs)
    return int((scores[len(xs) // 7 :] > threshold).sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", default="context")
    parser.add_argument("--compare", nargs="+", default=["{}", '{"bursts": 0}'])
    parser.add_argument("--threshold", type=float, default=2.468)
    parser.add_argument("--short", type=int, default=4032, help="readings of the short streams")
    parser.add_argument("--long", type=int, default=16000, help="readings of the daily cycles")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the short streams")
    parser.add_argument("--long-seeds", type=int, default=3)
    args = parser.parse_args(argv)
    settings = [json.loads(text) for text in args.compare]
    totals = [0] * len(settings)
    for kind, n, seconds, make in streams(args.short, args.long):
        seeds = args.seeds if n == args.short else args.long_seeds
        counts = [0] * len(settings)
        for seed in range(seeds):
            xs = make(np.random.default_rng(seed))
            for i, options in enumerate(settings):
                counts[i] += alarms(args.detector, options, xs, seconds, args.threshold)
        totals = [a + b for a, b in zip(totals, counts, strict=True)]
        row = {"stream": kind, "readings": n, "seeds": seeds}
        row |= {f"alarms {text}": c for text, c in zip(args.compare, counts, strict=True)}
        print(json.dumps(row), flush=True)
    print(json.dumps({"total": dict(zip(args.compare, totals, strict=True))}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
