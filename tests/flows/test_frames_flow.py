"""The real frame flow under bytewax.testing: warm-up, alerts with boxes, dead letters, recovery."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from dataflows.frames import Config, FrameSinks, build_flow
from generators.telescope import TelescopeSimConfig, iter_messages
from operators.config import ConfigError, Env
from operators.events import RawBatch
from operators.framesteps import SharedPipeline

pytestmark = pytest.mark.timeout(300)

# Small frames and the torch-free random model keep the flow tests quick.
SIM = TelescopeSimConfig(
    seed=5,
    count=40,
    width=192,
    height=144,
    stars=60,
    references=8,
    asteroid_prob=0.25,
    hot_column_prob=0.2,
    satellite_trail_prob=0.2,
    clouds_prob=0.05,
    weather_prob=0.05,
    defocus_prob=0.05,
)


def config(tmp: Path, name: str = "bank") -> Config:
    return Config(
        sim=SIM, references=8, model="random", milvus_uri=str(tmp / f"{name}.db"), out_dir=tmp
    )


def batches(cfg: TelescopeSimConfig = SIM, size: int = 3) -> list[RawBatch]:
    msgs = list(iter_messages(cfg))
    return [
        RawBatch(
            "frames",
            0,
            tuple(k for k, _ in msgs[i : i + size]),
            tuple(v for _, v in msgs[i : i + size]),
            tuple(range(i, min(i + size, len(msgs)))),
        )
        for i in range(0, len(msgs), size)
    ]


def run(cfg: Config, source, **kwargs) -> tuple[list[dict], list[dict], list[dict]]:  # type: ignore[no-untyped-def]
    alerts: list = []
    results: list = []
    dead: list = []
    sinks = FrameSinks(TestingSink(alerts), TestingSink(results), TestingSink(dead), None)
    pipeline = SharedPipeline(cfg.open_pipeline)
    flow = build_flow(cfg, source=source, sinks=sinks, pipeline=pipeline)
    try:
        run_main(flow, **kwargs)
    finally:
        pipeline.close()
    return tuple([orjson.loads(v) for _, v in out] for out in (alerts, results, dead))  # type: ignore[return-value]


def test_warm_up_then_scored_frames_and_alerts_with_boxes(tmp_path: Path) -> None:
    alerts, results, dead = run(config(tmp_path), TestingSource(batches()))
    assert dead == []
    assert len(results) == SIM.count
    warm = [r for r in results if r["skipped"] and r["skipped"].startswith("reference")]
    assert len(warm) == 8
    assert warm[-1]["skipped"].endswith("target indexed")
    unusable = [r for r in results if r["unusable"]]
    assert unusable
    assert all(r["skipped"] and not r["skipped"].startswith("reference") for r in unusable)
    scored = [r for r in results if r["skipped"] is None]
    assert all(r["score"] is not None and r["threshold"] > 0 for r in scored)
    assert alerts
    for a in alerts:
        assert a["boxes"]
        assert a["score"] > a["threshold"]
        assert a["reason"].startswith("patches unlike any reference of 'M31'")
    by_id = {r["frame_id"]: r for r in results}
    assert all(by_id[a["frame_id"]]["is_anomaly"] for a in alerts)
    # Frames with a large injected anomaly alert, and their boxes overlap the truth.
    big = [r for r in scored if r["truth"] and any(t[4] == "hot_column" for t in r["truth"])]
    assert big
    assert any(r["is_anomaly"] for r in big)
    hit = 0
    for a in alerts:
        for x0, y0, x1, y1, _kind in a["truth"] or []:
            hit += any(
                b["x0"] < x1 and x0 < b["x1"] and b["y0"] < y1 and y0 < b["y1"] for b in a["boxes"]
            )
    assert hit > 0


def test_bad_messages_become_dead_letters_with_reasons(tmp_path: Path) -> None:
    good = batches()[0]
    bad = RawBatch(
        "frames",
        1,
        (b"cam1", b"cam1", b"cam1", None),
        (b"not a frame", good.values[0][:200], None, b"VGFR\x01\x00\x00\x00\x02{}"),
        (0, 1, 2, 3),
    )
    _alerts, results, dead = run(config(tmp_path), TestingSource([bad, good]))
    assert [d["offset"] for d in dead] == [0, 1, 2, 3]
    assert all(d["step"] == "decode" and d["reason"] for d in dead)
    assert dead[2]["reason"].startswith("value: expected a frame message, got a tombstone")
    assert len(results) == len(good)


def test_resume_after_abort_gives_the_same_results(tmp_path: Path) -> None:
    parts = batches()
    full_alerts, full, _ = run(config(tmp_path, "full"), TestingSource(parts))
    (tmp_path / "rec").mkdir()
    init_db_dir(tmp_path / "rec", 1)
    rc = RecoveryConfig(str(tmp_path / "rec"))
    # The abort falls inside the warm-up: the collected references must survive it.
    source = TestingSource([*parts[:2], TestingSource.ABORT(), *parts[2:]])
    cfg = config(tmp_path, "resumed")
    first_alerts, first, _ = run(cfg, source, epoch_interval=timedelta(0), recovery_config=rc)
    assert 0 < len(first) < len(full)
    second_alerts, second, _ = run(cfg, source, epoch_interval=timedelta(0), recovery_config=rc)
    merged = {r["frame_id"]: r for r in first + second}
    assert merged == {r["frame_id"]: r for r in full}
    assert {a["alert_id"] for a in first_alerts + second_alerts} == {
        a["alert_id"] for a in full_alerts
    }


def test_two_workers_give_the_same_results_as_one(tmp_path: Path) -> None:
    sim = replace(SIM, cameras=("cam1", "cam2"), targets=("M31", "M13"), count=40)
    parts = batches(sim, size=2)
    one_alerts, one, _ = run(config(tmp_path, "one"), TestingSource(parts))
    alerts: list = []
    results: list = []
    dead: list = []
    cfg = config(tmp_path, "two")
    pipeline = SharedPipeline(cfg.open_pipeline)
    sinks = FrameSinks(TestingSink(alerts), TestingSink(results), TestingSink(dead), None)
    flow = build_flow(cfg, source=TestingSource(parts), sinks=sinks, pipeline=pipeline)
    try:
        cluster_main(flow, [], 0, worker_count_per_proc=2)
    finally:
        pipeline.close()
    two = [orjson.loads(v) for _, v in results]
    assert {r["frame_id"]: r for r in two} == {r["frame_id"]: r for r in one}
    assert len(alerts) == len(one_alerts)


def test_config_from_env_and_errors() -> None:
    cfg = Config.from_env(
        Env({"VIGIL_MILVUS_URI": "http://milvus:19530", "VIGIL_FRAMES_MIN_WEATHER": "70"})
    )
    assert cfg.milvus_uri == "http://milvus:19530"
    assert cfg.rules.min_weather == 70.0
    assert cfg.references == 20
    with pytest.raises(ConfigError, match="VIGIL_FRAMES_FALSE_ALARM_RATE"):
        Config.from_env(Env({"VIGIL_FRAMES_FALSE_ALARM_RATE": "2"}))
    with pytest.raises(ConfigError, match="VIGIL_FRAMES_REFERENCES"):
        Config.from_env(Env({"VIGIL_FRAMES_REFERENCES": "2"}))
