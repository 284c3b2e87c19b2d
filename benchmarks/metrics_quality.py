"""Alert quality and speed of the metrics flow on the simulator's labelled streams.

Runs the real flow (embedded simulator, decode, normalize, detectors, alert policy,
alerts and dead letters collected in memory, Rerun to an ``.rrd`` file in a temporary
directory) for each shape (``spiky``, ``trend``) and each detector asked for, and prints
one JSON object per run: precision, recall and F1 of alerts counted per labelled episode
(an episode is detected by an alert from its first reading to ``--grace-s`` after its
last; any other alert is false), false alerts per 1,000 readings, recall per anomaly
kind, and events per second through the whole flow (wall clock of ``run_main``, this
machine's load included). For the spiky shape it also counts the alerts on unlabelled
readings, those with a small addition (below ``spike_label_min``: the stream's noise by the
simulator's rule) and those on the clean sine, and gives the figures after each series'
first ``--warm-up`` readings.

    .venv/bin/python benchmarks/metrics_quality.py --count 90000 --seed 11
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import orjson
from bytewax.testing import TestingSink, run_main

from dataflows.metrics import Config, Sinks, build_flow
from generators.metrics import MetricSimConfig, iter_readings
from generators.source import SimulatorSource
from operators.config import Env
from operators.evaluation import evaluate
from operators.events import Reading
from operators.records import alert_series_ms
from operators.sinks.rerun import RerunSink


def unlabelled_alerts(
    sim: MetricSimConfig, readings: list[Reading], alerts: set[tuple[str, int]]
) -> dict[str, int]:
    """Alerts on unlabelled readings: with a small addition (the noise), or on the clean sine."""
    out = {"alerts_on_small_additions": 0, "alerts_on_clean_readings": 0}
    for r in readings:
        if r.label is None and (r.series, r.ts_ms) in alerts:
            i = round((r.ts - sim.start).total_seconds() / sim.interval_s)
            small = r.value - round(math.sin(0.1 * i), sim.decimals) > 1e-3
            out["alerts_on_small_additions" if small else "alerts_on_clean_readings"] += 1
    return out


def run(env: dict[str, str], grace_s: float, warm_up: int, out: Path) -> dict[str, object]:
    cfg = Config.from_env(Env({"VIGIL_RERUN_PATH": str(out / "metrics.rrd"), **env}))
    alerts: list[tuple[bytes | None, bytes]] = []
    dead: list[tuple[bytes | None, bytes]] = []
    flow = build_flow(
        cfg,
        source=SimulatorSource(cfg.sim, partitions=cfg.sim_partitions, batch_size=cfg.batch_size),
        sinks=Sinks(TestingSink(alerts), TestingSink(dead), RerunSink(cfg.rerun)),
    )
    start = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - start
    readings = list(iter_readings(cfg.sim))
    keys = [alert_series_ms(orjson.loads(v)) for _k, v in alerts]
    labelled = [(r.series, r.ts_ms, r.label) for r in readings]
    summary: dict[str, object] = {
        "shape": cfg.sim.shape,
        "detector": cfg.detect.detector,
        "settings": env,
        "dead_letters": len(dead),
        "events_per_s": round(len(readings) / elapsed),
        **evaluate(labelled, keys, grace_s=grace_s).summary(),
    }
    if cfg.sim.shape == "spiky":
        summary |= unlabelled_alerts(cfg.sim, readings, set(keys))
        warm = readings[0].ts_ms + round(warm_up * cfg.sim.interval_s * 1000)
        late_keys = [k for k in keys if k[1] >= warm]
        late = evaluate([x for x in labelled if x[1] >= warm], late_keys, grace_s=grace_s)
        summary["after_warm_up"] = {
            k: v for k, v in late.summary().items() if k in ("recall", "precision", "f1")
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=90_000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--shapes", default="spiky,trend")
    parser.add_argument("--detectors", default="default,iforest", help="'default': unset")
    parser.add_argument("--grace-s", type=float, default=600.0, help="default: ten readings")
    parser.add_argument("--warm-up", type=int, default=1024, help="readings per series")
    parser.add_argument("--set", action="append", default=[], metavar="VIGIL_NAME=VALUE")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.set)
    extra |= {"VIGIL_SIM_COUNT": str(args.count), "VIGIL_SIM_SEED": str(args.seed)}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            for detector in args.detectors.split(","):
                env = {"VIGIL_METRICS_SHAPE": shape, **extra}
                if detector != "default":
                    env["VIGIL_DETECTOR"] = detector
                result = run(env, args.grace_s, args.warm_up, Path(tmp))
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
