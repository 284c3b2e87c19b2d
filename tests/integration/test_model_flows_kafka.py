"""The trained-model flows end to end against a Kafka-protocol broker, as a user runs them.

For each flow, ``vigil-generate`` produces its simulator's stream to the flow's
default topic, malformed messages are produced beside the readings,
``python -m bytewax.run dataflows.<flow>`` consumes the topic in its own process
(ONNX model, per-series calibration, alert policy), and the test reads the
alerts and dead-letter topics back. The alerts must be exactly those the
in-process evaluation (:func:`operators.window_eval.model_alert_mask`) raises on
the same readings: the broker, the partitions and the batching change nothing.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pytest

from operators.alerting import AlertPolicy
from operators.events import datetime_to_ms
from operators.records import alert_series_ms
from operators.window_eval import model_alert_mask
from tests.integration.kafka_broker import MockKafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


@dataclass(frozen=True)
class Case:
    """One flow: how to produce its stream, where it goes, what it should alert on."""

    module: str
    generate: list[str]
    topic: str
    alerts_topic: str
    dlq_topic: str
    malformed: list[tuple[bytes | None, bytes]]
    expected: Callable[[], set[tuple[str, int]]]
    until_ms: int


BEAR_DAYS = 600  # the generator's count covers a little more when days go missing
BEARS_UNTIL_MS = datetime_to_ms(datetime(2024, 1, 1, tzinfo=UTC)) + BEAR_DAYS * 86_400_000


def _bears_expected() -> set[tuple[str, int]]:
    from dataflows.wildlife import load_model
    from generators.bears import BearSimConfig, bear_series

    cfg = BearSimConfig(bears=2, seed=17)
    assert datetime_to_ms(cfg.start) + BEAR_DAYS * 86_400_000 == BEARS_UNTIL_MS
    model, out = load_model(), set()
    for b in bear_series(cfg, BEAR_DAYS):
        mask = model_alert_mask(b.bear_id, b.ts_ms, b.values, b.label_names(), model, AlertPolicy())
        out |= {(b.bear_id, int(t)) for t in b.ts_ms[mask]}
    return out


BEARS = Case(
    module="dataflows.wildlife",
    generate=["bears", "--bears", "2", "--seed", "17", "--count", str(2 * BEAR_DAYS * 4)],
    topic="bears",
    alerts_topic="bear-alerts",
    dlq_topic="bears-dlq",
    malformed=[
        (b"bear-0", b"{not json"),
        (b"bear-1", b'{"bear_id": "bear-1", "ts": "2024-01-01 00:00:30", "heart_rate": NaN}'),
        (b"bear-0", orjson.dumps({"bear_id": "bear-0", "heart_rate": 50.0})),
        (b"bear-1", b"\xff\xfe not utf-8"),
    ],
    expected=_bears_expected,
    until_ms=BEARS_UNTIL_MS,
)


SITE_TICKS = 6 * 288  # six days of 5-minute readings
SITES_UNTIL_MS = datetime_to_ms(datetime(2024, 1, 1, tzinfo=UTC)) + SITE_TICKS * 300_000


def _sites_expected() -> set[tuple[str, int]]:
    from dataflows.flow_sites import load_model
    from generators.flowsites import FlowSiteConfig, site_arrays

    cfg = FlowSiteConfig(sites=3, seed=23)
    assert datetime_to_ms(cfg.start) + SITE_TICKS * 300_000 == SITES_UNTIL_MS
    model, out = load_model(), set()
    for s in site_arrays(cfg, SITE_TICKS):
        mask = model_alert_mask(
            s.site_id, s.ts_ms, s.values, s.label_names, model, AlertPolicy(), primary=1
        )
        out |= {(s.site_id, int(t)) for t in s.ts_ms[mask]}
    return out


SITES = Case(
    module="dataflows.flow_sites",
    generate=["flowsites", "--sites", "3", "--seed", "23", "--count", str(3 * SITE_TICKS)],
    topic="flow-sites",
    alerts_topic="flow-site-alerts",
    dlq_topic="flow-sites-dlq",
    malformed=[
        (b"site-0", b"{not json"),
        (b"site-1", b'{"site_id": "site-1", "ts": "2024-01-01 00:00:30", "velocity": NaN}'),
        (b"site-2", orjson.dumps({"site_id": "site-2", "ts": "2024-01-01 00:00:30"})),
        (b"site-0", b"\xff\xfe not utf-8"),
    ],
    expected=_sites_expected,
    until_ms=SITES_UNTIL_MS,
)


def run_case(case: Case, broker: MockKafkaBroker, work: Path) -> dict:
    broker.create_topic(case.topic, 3)
    broker.create_topic(case.alerts_topic, 1)
    broker.create_topic(case.dlq_topic, 1)
    gen = subprocess.run(
        [sys.executable, "-m", "generators.cli", *case.generate, "--bootstrap", broker.bootstrap],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gen.returncode == 0, gen.stderr
    broker.produce(case.topic, case.malformed)
    env = {
        **os.environ,
        "VIGIL_KAFKA_BROKERS": broker.bootstrap,
        "VIGIL_KAFKA_TAIL": "false",
        "VIGIL_KAFKA_CONFIG": '{"fetch.wait.max.ms": "20"}',
        "VIGIL_RERUN_MODE": "off",
    }
    flow = subprocess.run(
        [sys.executable, "-m", "bytewax.run", case.module],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert flow.returncode == 0, flow.stderr
    return {
        "alerts": [orjson.loads(r.value or b"") for r in broker.read_topic(case.alerts_topic)],
        "dead": [orjson.loads(r.value or b"") for r in broker.read_topic(case.dlq_topic)],
    }


@pytest.mark.parametrize("case", [BEARS, SITES], ids=["wildlife", "flow_sites"])
def test_model_flow_through_the_broker(
    case: Case, kafka_broker: MockKafkaBroker, tmp_path: Path
) -> None:
    out = run_case(case, kafka_broker, tmp_path)
    dead = out["dead"]
    assert sorted(base64.b64decode(d["value_b64"]) for d in dead) == sorted(
        v for _, v in case.malformed
    )
    assert all(d["reason"] for d in dead)
    alerts = out["alerts"]
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids))
    expected = case.expected()
    assert len(expected) > 5
    got = {alert_series_ms(a) for a in alerts}
    assert {a for a in got if a[1] < case.until_ms} == expected
    assert np.all([0.0 <= a["score"] <= 1.0 for a in alerts])
