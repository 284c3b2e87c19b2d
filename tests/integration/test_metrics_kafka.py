"""The metrics flow end to end against a Kafka-protocol broker, as a user runs it.

``vigil-generate metrics`` produces the spiky shape to ``raw-data``, malformed
messages are produced beside the readings, ``python -m bytewax.run
dataflows.metrics`` (with ``VIGIL_DETECTOR=iforest``, on its default topics)
consumes the topic in its own process, and the test reads the ``anomalies``
and ``raw-data-dlq`` topics back.
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

from generators.metrics import MetricSimConfig, iter_readings
from generators.source import partition_of
from operators.evaluation import evaluate
from operators.records import alert_series_ms
from tests.integration.kafka_broker import MockKafkaBroker
from tests.integration.test_rerun_recording import read_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SIM = MetricSimConfig(count=8_000, series=2, seed=3)
# The isolation forest calibrates against its own last 1,024 scores of a series: it
# cannot reach the alert threshold before, so the spikes of that warm-up are missed.
WARM_UP = 1024
GRACE_S = 600  # ten readings
MALFORMED: list[tuple[bytes | None, bytes]] = [
    (b"0", b"{not json"),
    (b"1", b'{"series": "1", "ts": "2024-01-01 00:00:30", "value": NaN}'),
    (b"0", orjson.dumps({"series": "0", "value": 0.5})),
    (b"1", orjson.dumps({"series": "1", "ts": "yesterday", "value": 0.5})),
    (b"0", orjson.dumps({"series": "0", "ts": "2024-01-01 00:00:31", "value": "0.5"})),
    (b"1", orjson.dumps({"series": "1", "ts": "1970-01-01 00:00:00", "value": 0.5})),
    (b"0", b"\xff\xfe not utf-8"),
    (b"1", orjson.dumps({"series": "1", "ts": "2024-01-01 00:00:31", "temp": 0.5})),
]
# A replay of a reading already consumed: out of event-time order for its series. It goes
# to its series' partition (the generator's CRC32 one), so it comes after the readings.
REPLAY = (b"0", orjson.dumps({"series": "0", "ts": "2024-01-01 00:05:00", "value": 0.5}))


def generator_args(bootstrap: str) -> list[str]:
    return [
        *("metrics", "--bootstrap", bootstrap, "--count", str(SIM.count)),
        *("--series", str(SIM.series), "--seed", str(SIM.seed), "--rate", "0"),
    ]


@pytest.fixture(scope="module")
def run(kafka_broker: MockKafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Produce, run the flow once to the end of the topic, read its outputs."""
    broker = kafka_broker
    broker.create_topic("raw-data", 4)
    broker.create_topic("anomalies", 1)
    broker.create_topic("raw-data-dlq", 1)
    gen = subprocess.run(
        [sys.executable, "-m", "generators.cli", *generator_args(broker.bootstrap)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    broker.produce("raw-data", MALFORMED)
    broker.produce("raw-data", [REPLAY], partition=partition_of(REPLAY[0] or b"", 4))

    work = tmp_path_factory.mktemp("e2e-metrics")
    env = {
        **os.environ,
        "VIGIL_KAFKA_BROKERS": broker.bootstrap,
        "VIGIL_KAFKA_TAIL": "false",
        "VIGIL_KAFKA_CONFIG": '{"fetch.wait.max.ms": "20"}',
        "VIGIL_DETECTOR": "iforest",
        "VIGIL_RERUN_MODE": "rrd",
        "VIGIL_RERUN_PATH": str(work / "metrics.rrd"),
    }
    flow = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.metrics"],
        cwd=work,  # the installed package, not the checkout's working directory
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert flow.returncode == 0, flow.stderr
    return {
        "generator_stderr": gen.stderr,
        "alerts": [orjson.loads(r.value or b"") for r in broker.read_topic("anomalies")],
        "dead": [orjson.loads(r.value or b"") for r in broker.read_topic("raw-data-dlq")],
        "rrd": work / "metrics.rrd",
    }


def test_generator_reports_delivery(run: dict) -> None:
    last = run["generator_stderr"].strip().splitlines()[-1]
    assert f"delivered {SIM.count}" in last
    assert "failed 0" in last


def test_dead_letter_topic_holds_exactly_the_malformed_messages(run: dict) -> None:
    dead = run["dead"]
    expected = sorted(v for _, v in [*MALFORMED, REPLAY])
    assert sorted(base64.b64decode(d["value_b64"]) for d in dead) == expected
    by_value = {base64.b64decode(d["value_b64"]): d for d in dead}
    assert by_value[b"{not json"]["reason"].startswith("payload: expected JSON")
    assert by_value[MALFORMED[2][1]]["reason"] == "field 'ts': missing"
    assert by_value[MALFORMED[4][1]]["reason"].startswith("field 'value': expected a number")
    assert "between 2000 and 2100" in by_value[MALFORMED[5][1]]["reason"]
    assert by_value[REPLAY[1]]["step"] == "normalize"
    assert "duplicate or out of order" in by_value[REPLAY[1]]["reason"]
    assert all(d["origin"] == "raw-data" and d["offset"] >= 0 for d in dead)


def test_alerts_find_most_labelled_spikes_with_few_false_alerts(run: dict) -> None:
    alerts = run["alerts"]
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids))
    assert {a["detector"] for a in alerts} == {"iforest"}
    readings = [(r.series, r.ts_ms, r.label) for r in iter_readings(SIM)]
    keys = [alert_series_ms(a) for a in alerts]
    # Measured with seeds 1-8 at this size: recall 0.69-0.76 over the whole stream,
    # 0.95-1.00 after the warm-up; precision 0.89-0.95; 0.4-0.9 false alerts per 1,000.
    whole = evaluate(readings, keys, grace_s=GRACE_S)
    assert whole.episodes > 50
    assert whole.recall >= 0.6, whole.summary()
    assert whole.precision >= 0.8, whole.summary()
    assert whole.false_per_1000 <= 1.5, whole.summary()
    warm = readings[0][1] + WARM_UP * 60_000
    late = evaluate([r for r in readings if r[1] >= warm], keys, grace_s=GRACE_S)
    assert late.recall >= 0.85, late.summary()


def test_kafka_run_gives_the_alerts_of_the_embedded_run(run: dict, tmp_path: Path) -> None:
    """Batching differs between the two sources; per-series order and alerts do not."""
    env = {
        **os.environ,
        "VIGIL_SIM_COUNT": str(SIM.count),
        "VIGIL_SIM_SERIES": str(SIM.series),
        "VIGIL_SIM_SEED": str(SIM.seed),
        "VIGIL_DETECTOR": "iforest",
        "VIGIL_RERUN_MODE": "off",
        "VIGIL_OUT_DIR": str(tmp_path),
    }
    embedded = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.metrics"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert embedded.returncode == 0, embedded.stderr
    lines = (tmp_path / "metrics-alerts.jsonl").read_bytes().splitlines()
    assert {orjson.loads(line)["alert_id"] for line in lines} == {
        a["alert_id"] for a in run["alerts"]
    }
    assert (tmp_path / "metrics-dead-letters.jsonl").read_bytes() == b""


def test_flow_recording_holds_every_reading_and_alert(run: dict) -> None:
    rows, static = read_rows(run["rrd"])
    per_series = Counter(r.series for r in iter_readings(SIM))
    alerts = Counter(a["series"] for a in run["alerts"])
    for series, count in per_series.items():
        assert len(rows[f"/metric/{series}"]) == count
        assert len(rows[f"/score/{series}"]) == count
        assert len(rows.get(f"/metric/{series}/alert", [])) == alerts[series]
        assert static[f"/metric/{series}"]["SeriesLines:names"] == [f"series {series}"]
    assert sum(alerts.values()) == len(run["alerts"]) > 0
    assert not any(entity.startswith("/cloud") for entity in rows)
    alert_values = sorted(v[0] for s in per_series for _t, v in rows[f"/metric/{s}/alert"])
    assert alert_values == sorted(a["value"] for a in run["alerts"])
