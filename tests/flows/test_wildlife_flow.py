"""The real wildlife (bear heart-rate) flow under bytewax.testing: alerts, dead letters, view."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from rerun.chunk import RrdReader

from dataflows.wildlife import (
    IDENTITY,
    MODEL_RECORD,
    Config,
    Sinks,
    build_flow,
    load_model,
)
from generators.bears import BearSimConfig, bear_series, iter_messages
from operators.alerting import AlertPolicy
from operators.config import Env
from operators.evaluation import evaluate
from operators.events import RawBatch, datetime_to_ms
from operators.records import alert_series_ms
from operators.sinks.rerun import RerunConfig, RerunSink
from operators.window_eval import model_alert_mask
from tests.flows.test_metrics_flow import sim_batches

pytestmark = pytest.mark.timeout(300)

#: Two years of three bears: a clean year, then a year with anomalies.
SIM = BearSimConfig(bears=3, seed=99, count=3 * 2 * 365 * 4)
DAY_MS = 86_400_000


def run(
    cfg, batches: list[RawBatch], view: RerunSink | None = None, workers: int = 1, build=build_flow
):  # type: ignore[no-untyped-def]
    """Alert and dead-letter records of a model flow (``build``) over ``batches``."""
    alerts: list = []
    dead: list = []
    sinks = Sinks(TestingSink(alerts), TestingSink(dead), view)
    flow = build(cfg, source=TestingSource(batches), sinks=sinks)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return [orjson.loads(v) for _k, v in alerts], [orjson.loads(v) for _k, v in dead]


def test_defaults_read_the_shipped_model_and_bear_topics() -> None:
    cfg = Config.from_env(Env({}))
    assert cfg.common.embedded
    assert cfg.model_record == MODEL_RECORD
    assert (cfg.common.kafka.topic, cfg.common.kafka.alerts_topic, cfg.common.kafka.dlq_topic) == (
        "bears",
        "bear-alerts",
        "bears-dlq",
    )
    model = load_model()
    assert (model.window, model.channels, model.kind, model.error) == (30, 1, "autoencoder", "last")
    assert len(model.reference) >= 100


@pytest.fixture(scope="module")
def flow_alerts() -> list[dict]:
    alerts, dead = run(Config(sim=SIM), sim_batches(SIM, size=500))
    assert dead == []
    return alerts


def test_the_flow_finds_the_labelled_anomalies_with_few_false_alerts(
    flow_alerts: list[dict],
) -> None:
    streams = bear_series(SIM, 2 * 365)
    from_ms = datetime_to_ms(SIM.start) + SIM.clean_days * DAY_MS
    readings = [
        (b.bear_id, t, n)
        for b in streams
        for t, n in zip(b.ts_ms.tolist(), b.label_names(), strict=True)
        if t >= from_ms
    ]
    alerts = [alert_series_ms(a) for a in flow_alerts]
    result = evaluate(readings, [a for a in alerts if a[1] >= from_ms], grace_s=86_400.0)
    # Measured 2026-11-23 on this seed: see the README's bear evaluation for the held-out figures.
    assert result.episodes > 20
    assert result.recall >= 0.8
    assert result.precision >= 0.5
    reasons = [a["reason"] for a in flow_alerts]
    assert all(a["detector"] == "bears-lstm-ae" for a in flow_alerts)
    model_reasons = [r for r in reasons if not r.startswith("gap: ")]
    assert len(model_reasons) > len(reasons) // 2
    assert all("model output" in r and "expected" in r for r in model_reasons)


def test_the_flow_alerts_exactly_where_the_evaluation_does(flow_alerts: list[dict]) -> None:
    model = load_model()
    expected = set()
    for b in bear_series(SIM, 2 * 365):
        mask = model_alert_mask(b.bear_id, b.ts_ms, b.values, b.label_names(), model, AlertPolicy())
        expected |= {(b.bear_id, int(t)) for t in b.ts_ms[mask]}
    # The flow reads SIM.count readings, a little past two years when days went missing.
    end_ms = datetime_to_ms(SIM.start) + 2 * 365 * DAY_MS
    got = {alert_series_ms(a) for a in flow_alerts}
    assert {a for a in got if a[1] < end_ms} == expected


def test_two_workers_raise_the_same_alerts(flow_alerts: list[dict]) -> None:
    alerts, dead = run(Config(sim=SIM), sim_batches(SIM, size=500), workers=2)
    assert dead == []
    assert {a["alert_id"] for a in alerts} == {a["alert_id"] for a in flow_alerts}


def test_bad_messages_become_dead_letters_and_the_counts_reconcile() -> None:
    msgs = list(iter_messages(BearSimConfig(bears=1, seed=3, count=200)))
    bad = [
        (b"bear-0", b"{not json"),
        (b"bear-0", orjson.dumps({"bear_id": "bear-0", "ts": "2024-01-01 00:00:00"})),
        (b"bear-0", b'{"bear_id": "bear-0", "ts": "2024-03-01 00:00:00", "heart_rate": "fast"}'),
        (b"bear-0", b'{"bear_id": "bear-0", "ts": "2024-03-01 00:00:00", "heart_rate": NaN}'),
        (b"bear-0", msgs[10][1]),  # a duplicate of an earlier reading
    ]
    every = msgs[:100] + bad + msgs[100:]
    batch = RawBatch(
        "bears",
        0,
        tuple(k for k, _ in every),
        tuple(v for _, v in every),
        tuple(range(len(every))),
    )
    _alerts, dead = run(Config(), [batch])
    assert len(dead) == len(bad)
    reasons = " | ".join(d["reason"] for d in dead)
    for needle in ("JSON", "heart_rate", "duplicate or out of order"):
        assert needle in reasons
    assert {d["step"] for d in dead} == {"decode", "normalize"}


def test_the_view_draws_the_series_its_reconstruction_and_the_score(tmp_path: Path) -> None:
    sim = BearSimConfig(bears=2, seed=5, count=2 * 400)
    path = tmp_path / "wildlife.rrd"
    view = RerunSink(RerunConfig.recording(path, IDENTITY.application_id, IDENTITY.view))
    run(Config(sim=sim), sim_batches(sim, size=200), view=view)
    counts: dict[str, int] = {}
    for chunk in RrdReader(path).stream().to_chunks():
        if not chunk.is_static and chunk.entity_path != "/__properties":
            rows = chunk.to_record_batch().num_rows
            counts[chunk.entity_path] = counts.get(chunk.entity_path, 0) + rows
    for bear in ("bear-0", "bear-1"):
        assert counts[f"/heart_rate/{bear}"] == 400
        assert counts[f"/score/{bear}"] == 400
        # The model reconstructs from the 30th reading on.
        assert counts[f"/heart_rate/{bear}/expected"] == 400 - 29
