"""The real flow-sites flow under bytewax.testing: five channels, both models, dead letters."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from rerun.chunk import RrdReader

from dataflows.flow_sites import IDENTITY, Config, build_flow, load_model
from generators.flowsites import FlowSiteConfig, iter_messages, site_arrays
from operators.alerting import AlertPolicy
from operators.config import ConfigError, Env
from operators.evaluation import evaluate
from operators.events import RawBatch
from operators.records import alert_series_ms
from operators.sinks.rerun import RerunConfig, RerunSink
from operators.window_eval import model_alert_mask
from tests.flows.test_metrics_flow import sim_batches
from tests.flows.test_wildlife_flow import run as run_model_flow

pytestmark = pytest.mark.timeout(300)

DAYS = 10
SIM = FlowSiteConfig(sites=3, seed=31, count=3 * DAYS * 288)


def run(cfg: Config, batches: list[RawBatch], view: RerunSink | None = None, workers: int = 1):  # type: ignore[no-untyped-def]
    return run_model_flow(cfg, batches, view, workers, build=build_flow)


def test_defaults_and_model_choice() -> None:
    cfg = Config.from_env(Env({}))
    assert (
        cfg.model,
        cfg.common.kafka.topic,
        cfg.common.kafka.alerts_topic,
        cfg.common.kafka.dlq_topic,
    ) == (
        "classifier",
        "flow-sites",
        "flow-site-alerts",
        "flow-sites-dlq",
    )
    assert Config.from_env(Env({"VIGIL_MODEL": "autoencoder"})).model == "autoencoder"
    with pytest.raises(ConfigError, match="VIGIL_MODEL"):
        Config.from_env(Env({"VIGIL_MODEL": "forecaster"}))
    clf, ae = load_model("classifier"), load_model("autoencoder")
    assert (clf.kind, clf.window, clf.channels) == ("classifier", 50, 5)
    assert (ae.kind, ae.window, ae.channels) == ("autoencoder", 50, 5)


@pytest.mark.parametrize("model", ["classifier", "autoencoder"])
def test_the_flow_alerts_exactly_where_the_evaluation_does(model: str) -> None:
    alerts, dead = run(Config(sim=SIM, model=model), sim_batches(SIM, size=700))
    assert dead == []
    wm = load_model(model)
    expected: set[tuple[str, int]] = set()
    readings = []
    for s in site_arrays(SIM, DAYS * 288):
        mask = model_alert_mask(
            s.site_id, s.ts_ms, s.values, s.label_names, wm, AlertPolicy(), primary=1
        )
        expected |= {(s.site_id, int(t)) for t in s.ts_ms[mask]}
        readings += [
            (s.site_id, t, n) for t, n in zip(s.ts_ms.tolist(), s.label_names, strict=True)
        ]
    end = max(t for _, t, _ in readings)
    got = {alert_series_ms(a) for a in alerts}
    assert {a for a in got if a[1] <= end} == expected
    if model == "classifier":  # the flow's default: most faults found, most alerts right
        result = evaluate(readings, list(expected), grace_s=900.0)
        assert result.episodes >= 10
        assert result.recall >= 0.6
        assert result.precision >= 0.6


def test_two_workers_raise_the_same_alerts() -> None:
    one, _ = run(Config(sim=SIM), sim_batches(SIM, size=700))
    two, dead = run(Config(sim=SIM), sim_batches(SIM, size=700), workers=2)
    assert dead == []
    assert {a["alert_id"] for a in two} == {a["alert_id"] for a in one}


def test_bad_messages_become_dead_letters() -> None:
    msgs = list(iter_messages(FlowSiteConfig(sites=1, seed=3, count=120)))
    good = orjson.loads(msgs[5][1])
    bad = [
        (b"site-0", b"{not json"),
        (b"site-0", orjson.dumps({k: v for k, v in good.items() if k != "level"})),
        (b"site-0", orjson.dumps({**good, "ts": "2024-03-01 00:00:00", "flow": "high"})),
        (b"site-9", orjson.dumps({**good, "ts": "2024-03-01 00:00:00"})),  # key != site
        (b"site-0", msgs[5][1]),  # a duplicate
    ]
    every = msgs[:60] + bad + msgs[60:]
    batch = RawBatch(
        "flow-sites",
        0,
        tuple(k for k, _ in every),
        tuple(v for _, v in every),
        tuple(range(len(every))),
    )
    _alerts, dead = run(Config(), [batch])
    assert len(dead) == len(bad)
    reasons = " | ".join(d["reason"] for d in dead)
    for needle in ("JSON", "'level': missing", "'flow'", "key", "duplicate or out of order"):
        assert needle in reasons


def test_the_view_draws_flow_and_score(tmp_path: Path) -> None:
    sim = FlowSiteConfig(sites=2, seed=5, count=2 * 300)
    path = tmp_path / "flow_sites.rrd"
    run(
        Config(sim=sim),
        sim_batches(sim, size=200),
        RerunSink(RerunConfig.recording(path, IDENTITY.application_id, IDENTITY.view)),
    )
    counts: dict[str, int] = {}
    for chunk in RrdReader(path).stream().to_chunks():
        if not chunk.is_static and chunk.entity_path != "/__properties":
            rows = chunk.to_record_batch().num_rows
            counts[chunk.entity_path] = counts.get(chunk.entity_path, 0) + rows
    for site in ("site-0", "site-1"):
        assert counts[f"/flow/{site}"] == 300
        assert counts[f"/score/{site}"] == 300
        assert f"/flow/{site}/expected" not in counts  # the classifier reconstructs nothing
