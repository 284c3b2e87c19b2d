from __future__ import annotations

import io
import json

import orjson
import pytest
from bytewax.testing import TestingSink, run_main

from dataflows.sensors import Config, Sinks, build_flow
from generators.sensors import SensorSimConfig, iter_messages, iter_readings
from generators.source import SimulatorSource
from operators.evaluate import main
from operators.evaluation import evaluate
from operators.records import alert_series_ms

pytestmark = pytest.mark.timeout(120)
SIM = SensorSimConfig(count=20_000, seed=5)


def run_cli(argv: list[str], data: bytes, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(argv, stdin=io.BytesIO(data)) == 0
    return json.loads(capsys.readouterr().out)


def test_jsonl_stream_scores_like_the_flow(capsys: pytest.CaptureFixture[str]) -> None:
    data = b"".join(value + b"\n" for _key, value in iter_messages(SIM))
    got = run_cli([], data, capsys)

    alerts: list = []
    flow = build_flow(
        Config(sim=SIM),
        source=SimulatorSource(SIM, partitions=2, batch_size=700),
        sinks=Sinks(TestingSink(alerts), TestingSink([]), None),
    )
    run_main(flow)
    records = [orjson.loads(v) for _k, v in alerts]
    flow_result = evaluate(
        [(r.series, r.ts_ms, r.label) for r in iter_readings(SIM)],
        [alert_series_ms(a) for a in records],
    ).summary()
    assert got["alerts"] == len(records) > 10
    for key in ("events", "episodes", "detected", "recall", "precision", "f1"):
        assert got[key] == flow_result[key], key
    assert got["skipped"] == 0


def test_csv_with_labels_and_bad_rows(capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["timestamp,value,label"]
    for i in range(400):
        value = 50.0 if i in (200, 300) else 20.0 + (i * 7 % 10) / 10
        label = "1" if i in (200, 300) else ""
        rows.append(f"2024-01-01 00:{i // 60:02d}:{i % 60:02d},{value},{label}")
    rows.insert(50, "2024-01-01 00:00:49.5,not-a-number,")
    rows.insert(60, "garbage")
    data = ("\n".join(rows) + "\n").encode()
    got = run_cli(["--format", "csv", "--normalizer", "robust"], data, capsys)
    assert got["events"] == 400
    assert got["skipped"] == 2
    assert got["episodes"] == 2
    assert got["recall"] == 1.0
    assert got["recall_by_kind"] == {"anomaly": 1.0}


def test_bad_features_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--features", "stuck"], stdin=io.BytesIO(b"")) == 2
    assert "--features" in capsys.readouterr().err
