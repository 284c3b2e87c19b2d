"""The real metrics flow under bytewax.testing: outputs, dead letters, recovery, workers."""

from __future__ import annotations

import base64
import math
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflows.metrics import FLOW_DETECTOR, Config, Sinks, build_flow
from generators.metrics import MetricSimConfig, iter_messages, iter_readings
from generators.source import SimulatorSource
from operators.alerting import AlertPolicy
from operators.config import ConfigError, Env
from operators.evaluation import evaluate
from operators.events import RawBatch
from operators.flowkit import default_sinks
from operators.records import alert_series_ms
from operators.sinks.files import JsonlSink
from operators.sinks.rerun import RerunSink
from operators.steps import DetectConfig

pytestmark = pytest.mark.timeout(180)

ROBUST = Config(detect=DetectConfig("robust-z"))
IFOREST = Config(detect=DetectConfig("iforest"))


def reading(series: str, minute: int, value: object) -> bytes:
    ts = f"2024-01-01 {minute // 60:02d}:{minute % 60:02d}:00"
    return orjson.dumps({"series": series, "ts": ts, "value": value})


def raw_batch(values: list[bytes], start_offset: int = 0, key: bytes = b"cpu") -> RawBatch:
    n = len(values)
    return RawBatch(
        "raw-data", 0, (key,) * n, tuple(values), tuple(range(start_offset, start_offset + n))
    )


def run(cfg: Config, source, **kwargs) -> tuple[list[dict], list[dict]]:  # type: ignore[no-untyped-def]
    alerts: list = []
    dead: list = []
    flow = build_flow(cfg, source=source, sinks=Sinks(TestingSink(alerts), TestingSink(dead), None))
    run_main(flow, **kwargs)
    return [orjson.loads(v) for _k, v in alerts], [orjson.loads(v) for _k, v in dead]


def sim_batches(cfg: MetricSimConfig, size: int = 250) -> list[RawBatch]:
    msgs = list(iter_messages(cfg))
    return [
        RawBatch(
            "simulator",
            0,
            tuple(k for k, _ in msgs[i : i + size]),
            tuple(v for _, v in msgs[i : i + size]),
            tuple(range(i, min(i + size, len(msgs)))),
        )
        for i in range(0, len(msgs), size)
    ]


def test_defaults_are_the_projects_detector_and_policy_on_embedded_outputs() -> None:
    cfg = Config.from_env(Env({}))
    assert cfg.detect == DetectConfig(FLOW_DETECTOR, stuck=True, gap=True)
    assert cfg.policy == AlertPolicy()
    assert cfg.embedded
    assert (cfg.kafka.topic, cfg.kafka.alerts_topic, cfg.kafka.dlq_topic) == (
        "raw-data",
        "anomalies",
        "raw-data-dlq",
    )
    assert cfg.sim == MetricSimConfig()
    sinks = default_sinks(cfg.kafka, cfg.out_dir, cfg.rerun, "metrics-")
    assert isinstance(sinks.alerts, JsonlSink)
    assert isinstance(sinks.dead_letters, JsonlSink)
    assert sinks.alerts.path == Path("vigil-out/metrics-alerts.jsonl")
    assert sinks.dead_letters.path == Path("vigil-out/metrics-dead-letters.jsonl")
    assert isinstance(sinks.view, RerunSink)
    assert cfg.rerun.path == Path("vigil-out/metrics.rrd")
    assert cfg.rerun.application_id == "vigil-metrics"
    assert cfg.rerun.labels.entity == "metric"


def test_config_from_env_reads_shape_detector_and_topics() -> None:
    env = Env(
        {
            "VIGIL_METRICS_SHAPE": "trend",
            "VIGIL_DETECTOR": "iforest",
            "VIGIL_SIM_SERIES": "5",
            "VIGIL_SIM_SPIKE_PROB": "0.1",
            "VIGIL_KAFKA_BROKERS": "b1:9092,b2:9092",
            "VIGIL_KAFKA_TOPIC": "m",
            "VIGIL_COOLDOWN_S": "600",
            "VIGIL_FEATURES": "value",
        }
    )
    cfg = Config.from_env(env)
    assert cfg.sim == MetricSimConfig(shape="trend", series=5, spike_prob=0.1)
    assert cfg.detect == DetectConfig("iforest", stuck=False, gap=False)
    assert cfg.kafka.brokers == ("b1:9092", "b2:9092")
    assert (cfg.kafka.topic, cfg.kafka.alerts_topic) == ("m", "anomalies")
    assert cfg.policy == AlertPolicy(cooldown_s=600.0)
    assert not cfg.embedded
    assert env.unknown() == []


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("VIGIL_METRICS_SHAPE", "flat", "expected one of"),
        ("VIGIL_DETECTOR", "magic", "expected one of"),
        ("VIGIL_SIM_SPIKE_PROB", "2", "expected a probability in [0, 1]"),
        ("VIGIL_SIM_SERIES", "0", "expected at least 1 series"),
        ("VIGIL_FIXED_HI", "-1", "expected > VIGIL_FIXED_LO"),
    ],
)
def test_config_errors_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: {re.escape(expected)}"):
        Config.from_env(Env({name: value}))


def test_exact_alert_on_tiny_input() -> None:
    values = [round(math.sin(0.1 * i), 4) for i in range(40)]
    values[30] = round(values[30] + 4.0, 4)
    msgs = [reading("cpu", i, v) for i, v in enumerate(values)]
    alerts, dead = run(ROBUST, TestingSource([raw_batch(msgs[:25]), raw_batch(msgs[25:], 25)]))
    assert dead == []
    assert alerts == [
        {
            "alert_id": "169600d1-ec26-5919-b3bd-8dac3f497d74",
            "series": "cpu",
            "ts": "2024-01-01T00:30:00+00:00",
            "value": 4.1411,
            "score": 1.0,
            "severity": "critical",
            "detector": "robust-z",
            "reason": "value: 4.14 outside the recent range 0.00..1.00 "
            "(robust-z score 10.3, p=0.0e+00)",
            "label": None,
        }
    ]


def test_malformed_input_reaches_dead_letters_with_bytes_and_reason() -> None:
    good = [reading("cpu", i, round(math.sin(0.1 * i), 4)) for i in range(12)]
    bad = [
        b"{not json",
        b'{"series": "cpu", "ts": "2024-01-01 01:00:00", "value": NaN}',
        orjson.dumps({"series": "cpu", "value": 0.5}),
        orjson.dumps({"series": "cpu", "ts": "soon", "value": 0.5}),
        reading("cpu", 61, "0.5"),
        orjson.dumps({"series": "cpu", "ts": "2024-01-01 01:02:00", "temp": 0.5}),
        good[3],  # a replayed (duplicate) reading: out of event-time order
    ]
    alerts, dead = run(ROBUST, TestingSource([raw_batch(good + bad)]))
    assert alerts == []
    assert len(dead) == len(bad)
    by_offset = {d["offset"]: d for d in dead}
    offsets = list(range(12, 12 + len(bad)))
    assert sorted(by_offset) == offsets
    for offset, payload in zip(offsets, bad, strict=True):
        assert base64.b64decode(by_offset[offset]["value_b64"]) == payload
        assert by_offset[offset]["origin"] == "raw-data"
    reasons = [by_offset[o]["reason"] for o in offsets]
    assert reasons[0].startswith("payload: expected JSON")
    assert reasons[1].startswith("payload: expected JSON")
    assert reasons[2] == "field 'ts': missing"
    assert reasons[3].startswith("field 'ts': expected 'YYYY-mm-dd HH:MM:SS'")
    assert reasons[4].startswith("field 'value': expected a number, got str")
    assert reasons[5].startswith("field 'value': expected a number, got NoneType")
    assert "duplicate or out of order" in reasons[6]
    assert [by_offset[o]["step"] for o in offsets] == ["decode"] * 6 + ["normalize"]


SIM = MetricSimConfig(count=9_000, series=3, seed=5)


def test_iforest_finds_the_spikes_after_its_warm_up() -> None:
    sim = MetricSimConfig(count=8_000, series=2, seed=9)
    alerts, dead = run(IFOREST, TestingSource(sim_batches(sim)))
    assert dead == []
    readings = list(iter_readings(sim))
    warm = readings[0].ts_ms + 1024 * 60_000  # the forest's window of 1,024 readings
    late = [(r.series, r.ts_ms, r.label) for r in readings if r.ts_ms >= warm]
    keys = [alert_series_ms(a) for a in alerts]
    assert all(ts >= warm for _s, ts in keys)  # silent while it learns
    result = evaluate(late, keys, grace_s=600)
    assert result.episodes > 40
    assert result.recall >= 0.85, result.summary()
    assert result.precision >= 0.8, result.summary()
    assert all(a["detector"] == "iforest" for a in alerts)


def test_resume_after_abort_gives_the_same_alerts(tmp_path: Path) -> None:
    batches = sim_batches(SIM)
    full, _ = run(IFOREST, TestingSource(batches))
    assert len(full) > 10

    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    cut = len(batches) * 2 // 3
    interrupted = [*batches[:cut], TestingSource.ABORT(), *batches[cut:]]
    source = TestingSource(interrupted)
    first, _ = run(IFOREST, source, epoch_interval=timedelta(0), recovery_config=rc)
    assert 0 < len(first) < len(full)
    second, _ = run(IFOREST, source, epoch_interval=timedelta(0), recovery_config=rc)
    resumed = {a["alert_id"]: a for a in first + second}
    assert resumed == {a["alert_id"]: a for a in full}


@pytest.mark.parametrize("shape", ["spiky", "trend"])
def test_two_workers_give_the_same_alerts_as_one(shape: str) -> None:
    sim = replace(SIM, shape=shape)
    cfg = replace(IFOREST if shape == "spiky" else ROBUST, sim=sim)

    def go(workers: int) -> dict[str, dict]:
        alerts: list = []
        dead: list = []
        flow = build_flow(
            cfg,
            source=SimulatorSource(sim, partitions=4, batch_size=300),
            sinks=Sinks(TestingSink(alerts), TestingSink(dead), None),
        )
        if workers == 1:
            run_main(flow)
        else:
            cluster_main(flow, [], 0, worker_count_per_proc=workers)
        assert dead == []
        return {orjson.loads(v)["alert_id"]: orjson.loads(v) for _k, v in alerts}

    one, two = go(1), go(2)
    assert len(one) > 10
    assert one == two
