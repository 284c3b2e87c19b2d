"""The sensors flow end to end against a Kafka-protocol broker, as a user runs it.

``vigil-generate sensors`` produces to the broker, malformed messages are
produced beside the readings, ``python -m bytewax.run dataflows.sensors``
consumes the topic in its own process, and the test reads the ``alerts`` and
dead-letter topics back.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from generators.sensors import SensorSimConfig, iter_readings
from generators.source import partition_of
from operators.evaluation import evaluate
from operators.records import alert_series_ms
from tests.integration.kafka_broker import MockKafkaBroker
from tests.integration.test_rerun_recording import read_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

COUNT = 30_000
SEED = 7
MALFORMED: list[tuple[bytes | None, bytes]] = [
    (b"1", b"{not json"),
    (b"2", b'{"sensor_id": "2", "ts": "2024-01-01 00:00:30", "temp": NaN}'),
    (b"3", orjson.dumps({"sensor_id": "3", "temp": 24.0})),
    (b"4", orjson.dumps({"sensor_id": "4", "ts": "yesterday", "temp": 24.0})),
    (b"0", orjson.dumps({"sensor_id": "0", "ts": "2024-01-01 00:00:31", "temp": "24"})),
    (b"1", orjson.dumps({"sensor_id": "1", "ts": "1970-01-01 00:00:00", "temp": 24.0})),
    (b"2", b"\xff\xfe not utf-8"),
    (b"3", orjson.dumps([1, 2, 3])),
    # A replay of a reading already consumed: out of event-time order for its sensor.
    (b"0", orjson.dumps({"sensor_id": "0", "ts": "2024-01-01 00:00:05", "temp": 24.0})),
]


@pytest.fixture(scope="module")
def run(kafka_broker: MockKafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Produce, run the flow once to the end of the topic, read its outputs."""
    broker = kafka_broker
    broker.create_topic("e2e-sensors", 4)
    broker.create_topic("e2e-alerts", 1)
    broker.create_topic("e2e-dlq", 1)
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "generators.cli",
            "sensors",
            "--bootstrap",
            broker.bootstrap,
            "--topic",
            "e2e-sensors",
            "--count",
            str(COUNT),
            "--seed",
            str(SEED),
            "--rate",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    # Each beside its sensor's readings (the generator's partitioner), so the replay
    # comes after the reading it repeats whatever the order partitions are read in.
    for key, value in MALFORMED:
        broker.produce("e2e-sensors", [(key, value)], partition=partition_of(key or b"", 4))

    work = tmp_path_factory.mktemp("e2e")
    env = {
        **os.environ,
        "VIGIL_KAFKA_BROKERS": broker.bootstrap,
        "VIGIL_KAFKA_TOPIC": "e2e-sensors",
        "VIGIL_KAFKA_ALERTS_TOPIC": "e2e-alerts",
        "VIGIL_KAFKA_DLQ_TOPIC": "e2e-dlq",
        "VIGIL_KAFKA_TAIL": "false",
        "VIGIL_KAFKA_CONFIG": '{"fetch.wait.max.ms": "20"}',
        "VIGIL_RERUN_MODE": "rrd",
        "VIGIL_RERUN_PATH": str(work / "sensors.rrd"),
    }
    flow = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.sensors"],
        cwd=work,  # the installed package, not the checkout's working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert flow.returncode == 0, flow.stderr
    return {
        "generator_stderr": gen.stderr,
        "flow_stderr": flow.stderr,
        "alerts": [orjson.loads(r.value or b"") for r in broker.read_topic("e2e-alerts")],
        "dead": [orjson.loads(r.value or b"") for r in broker.read_topic("e2e-dlq")],
        "rrd": work / "sensors.rrd",
    }


def test_generator_reports_progress_and_delivery(run: dict) -> None:
    last = run["generator_stderr"].strip().splitlines()[-1]
    assert f"delivered {COUNT}" in last
    assert "failed 0" in last


def test_dead_letter_topic_holds_exactly_the_malformed_messages(run: dict) -> None:
    dead = run["dead"]
    got = sorted(base64.b64decode(d["value_b64"]) for d in dead)
    assert got == sorted(v for _k, v in MALFORMED)
    by_value = {base64.b64decode(d["value_b64"]): d for d in dead}
    assert by_value[b"{not json"]["reason"].startswith("payload: expected JSON")
    assert by_value[MALFORMED[2][1]]["reason"] == "field 'ts': missing"
    assert "between 2000 and 2100" in by_value[MALFORMED[5][1]]["reason"]
    assert by_value[MALFORMED[-1][1]]["step"] == "normalize"
    assert all(d["origin"] == "e2e-sensors" and d["offset"] >= 0 for d in dead)


def test_alerts_match_the_labels(run: dict) -> None:
    alerts = run["alerts"]
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids))
    cfg = SensorSimConfig(count=COUNT, seed=SEED)
    readings = [(r.series, r.ts_ms, r.label) for r in iter_readings(cfg)]
    result = evaluate(readings, [alert_series_ms(a) for a in alerts])
    assert result.episodes > 150
    assert result.recall >= 0.75, result.summary()
    assert result.precision >= 0.8, result.summary()
    assert result.false_per_1000 <= 1.5, result.summary()
    assert result.by_kind["spike"][1] >= 0.75 * result.by_kind["spike"][0]


def test_kafka_run_gives_the_alerts_of_the_embedded_run(run: dict, tmp_path: Path) -> None:
    """Batching differs between the two sources; per-series order and alerts do not."""
    env = {
        **os.environ,
        "VIGIL_SIM_COUNT": str(COUNT),
        "VIGIL_SIM_SEED": str(SEED),
        "VIGIL_RERUN_MODE": "off",
        "VIGIL_OUT_DIR": str(tmp_path),
    }
    embedded = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.sensors"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert embedded.returncode == 0, embedded.stderr
    lines = (tmp_path / "alerts.jsonl").read_bytes().splitlines()
    assert {orjson.loads(line)["alert_id"] for line in lines} == {
        a["alert_id"] for a in run["alerts"]
    }


def test_flow_recording_holds_every_reading_and_alert(run: dict) -> None:
    rows, _static = read_rows(run["rrd"])
    cfg = SensorSimConfig(count=COUNT, seed=SEED)
    per_sensor = Counter(r.series for r in iter_readings(cfg))
    alerts = Counter(a["series"] for a in run["alerts"])
    for sensor, count in per_sensor.items():
        assert len(rows[f"/temperature/{sensor}"]) == count
        assert len(rows[f"/score/{sensor}"]) == count
        assert len(rows[f"/cloud/data/{sensor}"]) == count
        assert len(rows.get(f"/temperature/{sensor}/alert", [])) == alerts[sensor]
    assert sum(alerts.values()) == len(run["alerts"]) > 0
