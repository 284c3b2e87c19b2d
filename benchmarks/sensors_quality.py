"""Alert quality and speed of the sensors flow on the simulator's labelled stream.

Runs the real flow (embedded simulator, decode, normalize, detectors, alert policy,
alerts and dead letters collected in memory, Rerun to an ``.rrd`` file in a temporary
directory) with the default settings and with ``VIGIL_PRESET=original``, each on the
default simulator (every anomaly kind) and on the original's simulator (spikes only), and
prints one JSON object per run: precision, recall
and F1 of alerts counted per labelled episode, false alerts per 1,000 readings, median
detection delay, recall per anomaly kind, and events per second through the whole flow
(wall clock of ``run_main``, this machine's load included).

    .venv/bin/python benchmarks/sensors_quality.py --count 200000 --seed 11
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import orjson
from bytewax.testing import TestingSink, run_main

from dataflows.sensors import Config, Sinks, build_flow
from generators.sensors import iter_readings
from generators.source import SimulatorSource
from operators.config import Env
from operators.evaluation import evaluate
from operators.records import alert_series_ms
from operators.sinks.rerun import RerunSink


def run(preset: str, sim: str, count: int, seed: int, out: Path) -> dict[str, object]:
    env = {
        "VIGIL_PRESET": preset,
        "VIGIL_SIM_PRESET": sim,
        "VIGIL_SIM_COUNT": str(count),
        "VIGIL_SIM_SEED": str(seed),
    }
    cfg = Config.from_env(Env(env))
    cfg = replace(cfg, rerun=replace(cfg.rerun, mode="rrd", path=out / f"{preset}.rrd"))
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
    records = [orjson.loads(v) for _k, v in alerts]
    readings = [(r.series, r.ts_ms, r.label) for r in iter_readings(cfg.sim)]
    result = evaluate(
        readings,
        [alert_series_ms(a) for a in records],
    )
    return {
        "preset": preset,
        "simulator": sim,
        "detector": cfg.detect.detector,
        "dead_letters": len(dead),
        "events_per_s": round(len(readings) / elapsed),
        **result.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for sim in ("default", "original"):
            for preset in ("default", "original"):
                result = run(preset, sim, args.count, args.seed, Path(tmp))
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
