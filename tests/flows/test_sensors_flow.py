"""The real sensors flow under bytewax.testing: outputs, dead letters, recovery, workers."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflows.sensors import Config, Sinks, build_flow
from generators.sensors import SensorSimConfig, iter_readings
from generators.source import SimulatorSource
from operators.config import Env
from operators.events import RawBatch
from operators.serde import encode_reading

pytestmark = pytest.mark.timeout(180)


def reading(sensor: str, second: int, temp: float) -> bytes:
    return orjson.dumps(
        {
            "sensor_id": sensor,
            "ts": f"2024-01-01 00:{second // 60:02d}:{second % 60:02d}",
            "temp": temp,
        }
    )


def raw_batch(values: list[bytes], start_offset: int = 0, key: bytes = b"1") -> RawBatch:
    n = len(values)
    return RawBatch(
        "sensors", 0, (key,) * n, tuple(values), tuple(range(start_offset, start_offset + n))
    )


def run(cfg: Config, source, **kwargs) -> tuple[list[dict], list[dict]]:  # type: ignore[no-untyped-def]
    alerts: list = []
    dead: list = []
    flow = build_flow(cfg, source=source, sinks=Sinks(TestingSink(alerts), TestingSink(dead), None))
    run_main(flow, **kwargs)
    return [orjson.loads(v) for _k, v in alerts], [orjson.loads(v) for _k, v in dead]


def test_exact_alert_on_tiny_input() -> None:
    temps = [24.0, 24.5, 23.8, 24.2, 24.9, 23.5, 24.1, 24.4, 23.9, 24.6] * 2 + [79.5, 24.3]
    values = [reading("1", i, t) for i, t in enumerate(temps)]
    alerts, dead = run(Config(), TestingSource([raw_batch(values[:7]), raw_batch(values[7:], 7)]))
    assert dead == []
    [a] = alerts
    assert a["series"] == "1"
    assert a["ts"] == "2024-01-01T00:00:20+00:00"
    assert a["value"] == 79.5
    assert a["severity"] == "critical"
    assert a["detector"] == "robust-z"
    assert a["reason"].startswith("value: 79.50 outside the recent range 23.50..24.90")
    assert set(a) == {
        "alert_id",
        "series",
        "ts",
        "value",
        "score",
        "severity",
        "detector",
        "reason",
        "label",
    }


def test_original_preset_flags_the_spike_like_the_original() -> None:
    cfg = Config.from_env(Env({"VIGIL_PRESET": "original"}))
    assert cfg.detect.detector == "hst-original"
    temps = [24.0, 24.5, 23.8, 24.2, 24.9, 23.5, 24.1, 24.4, 23.9, 24.6] * 10 + [79.5]
    alerts, _ = run(
        cfg, TestingSource([raw_batch([reading("1", i, t) for i, t in enumerate(temps)])])
    )
    assert [a["value"] for a in alerts] == [79.5]
    assert alerts[0]["detector"] == "hst-original"


def test_malformed_input_reaches_dead_letters_with_bytes_and_reason() -> None:
    good = [reading("1", i, 24.0 + (i % 3) * 0.1) for i in range(12)]
    bad = [
        b"{not json",
        b'{"sensor_id": "1", "ts": "2024-01-01 00:00:30", "temp": NaN}',
        orjson.dumps({"sensor_id": "1", "temp": 24.0}),
        orjson.dumps({"sensor_id": "1", "ts": "soon", "temp": 24.0}),
        orjson.dumps({"sensor_id": "1", "ts": "2024-01-01 00:00:31", "temp": "24"}),
        good[3],  # a replayed (duplicate) reading: out of event-time order
    ]
    values = good + bad
    alerts, dead = run(Config(), TestingSource([raw_batch(values)]))
    assert len(dead) == len(bad)
    by_offset = {d["offset"]: d for d in dead}
    assert sorted(by_offset) == list(range(12, 12 + len(bad)))
    for offset, payload in zip(range(12, 18), bad, strict=True):
        assert base64.b64decode(by_offset[offset]["value_b64"]) == payload
    reasons = [by_offset[o]["reason"] for o in range(12, 18)]
    assert reasons[0].startswith("payload: expected JSON")
    assert reasons[1].startswith("payload: expected JSON")
    assert reasons[2] == "field 'ts': missing"
    assert reasons[3].startswith("field 'ts': expected 'YYYY-mm-dd HH:MM:SS'")
    assert reasons[4].startswith("field 'temp': expected a number, got str")
    assert "duplicate or out of order" in reasons[5]
    assert by_offset[17]["step"] == "normalize"
    assert alerts == []


def sim_batches(cfg: SensorSimConfig, size: int = 250) -> list[RawBatch]:
    msgs = [encode_reading(r) for r in iter_readings(cfg)]
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


SIM = SensorSimConfig(count=12_000, seed=5)


def test_resume_after_abort_gives_the_same_alerts(tmp_path: Path) -> None:
    batches = sim_batches(SIM)
    full, _ = run(Config(), TestingSource(batches))
    assert len(full) > 10

    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    cut = len(batches) // 2
    interrupted = [*batches[:cut], TestingSource.ABORT(), *batches[cut:]]
    source = TestingSource(interrupted)
    first, _ = run(Config(), source, epoch_interval=timedelta(0), recovery_config=rc)
    assert 0 < len(first) < len(full)
    second, _ = run(Config(), source, epoch_interval=timedelta(0), recovery_config=rc)
    resumed = {a["alert_id"]: a for a in first + second}
    assert resumed == {a["alert_id"]: a for a in full}


def test_two_workers_give_the_same_alerts_as_one() -> None:
    cfg = Config(sim=SIM)

    def go(workers: int) -> dict[str, dict]:
        alerts: list = []
        dead: list = []
        flow = build_flow(
            cfg,
            source=SimulatorSource(SIM, partitions=4, batch_size=300),
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


def test_the_number_of_shards_changes_no_alert() -> None:
    batches = sim_batches(SIM)
    by_shards = [
        {a["alert_id"]: a for a in run(Config(shards=n), TestingSource(batches))[0]}
        for n in (64, 1, 3)
    ]
    assert len(by_shards[0]) > 10
    assert by_shards[0] == by_shards[1] == by_shards[2]


def test_resuming_with_another_shard_count_is_refused(tmp_path: Path) -> None:
    batches = sim_batches(SIM)
    init_db_dir(tmp_path, 1)
    rc = RecoveryConfig(str(tmp_path))
    source = TestingSource([*batches[:3], TestingSource.ABORT(), *batches[3:]])
    run(Config(shards=64), source, epoch_interval=timedelta(0), recovery_config=rc)
    with pytest.raises(Exception, match="VIGIL_SHARDS=64, this flow runs with 7"):
        run(Config(shards=7), source, epoch_interval=timedelta(0), recovery_config=rc)


def test_alerts_cover_the_labelled_anomalies() -> None:
    alerts, _ = run(Config(), TestingSource(sim_batches(replace(SIM, count=20_000))))
    labelled = [a for a in alerts if a["label"] is not None]
    assert len(labelled) / len(alerts) > 0.8
