"""The frame flow end to end against a Kafka-protocol broker and Milvus Lite, as a user runs it.

``vigil-generate frames`` produces PNG frames to ``frames`` and, for a second
camera, file references (frames too large for a Kafka message travel as a path
on a shared folder); a corrupt message goes beside them. ``python -m
bytewax.run dataflows.frames`` runs in its own process with the bank in a
Milvus Lite file, and the test reads ``frame-alerts``, ``frame-results`` and
``frames-dlq`` back, and the Rerun recording.
"""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from rerun.chunk import RrdReader

from tests.integration.kafka_broker import MockKafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

COUNT = 36
REFERENCES = 8
SMALL = ("--width", "192", "--height", "144", "--stars", "60", "--references", str(REFERENCES))
ANOMALIES = ("--asteroid-prob", "0.3", "--hot-column-prob", "0.25", "--clouds-prob", "0.06")
CORRUPT = (b"cam1", b"VGFR\x01\x00\x00\x00\x05{}xyz")


def generate(bootstrap: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "generators.cli", "frames", "--bootstrap", bootstrap,
         "--count", str(COUNT), "--seed", "4", *SMALL, *ANOMALIES, *extra],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(kafka_broker: MockKafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> dict:
    broker = kafka_broker
    for topic, parts in (
        ("frames", 2),
        ("frame-alerts", 1),
        ("frame-results", 1),
        ("frames-dlq", 1),
    ):
        broker.create_topic(topic, parts)
    work = tmp_path_factory.mktemp("e2e-frames")
    shared = work / "shared"
    shared.mkdir()
    png = generate(broker.bootstrap, "--cameras", "cam1")
    assert png.returncode == 0, png.stderr
    refs = generate(
        broker.bootstrap, "--cameras", "cam2", "--targets", "M13",
        "--encoding", "ref", "--ref-dir", str(shared),
    )  # fmt: skip
    assert refs.returncode == 0, refs.stderr
    broker.produce("frames", [CORRUPT])
    env = {
        **os.environ,
        "VIGIL_KAFKA_BROKERS": broker.bootstrap,
        "VIGIL_KAFKA_TAIL": "false",
        "VIGIL_KAFKA_CONFIG": '{"fetch.wait.max.ms": "20"}',
        "VIGIL_FRAMES_MODEL": "random",
        "VIGIL_FRAMES_REFERENCES": str(REFERENCES),
        "VIGIL_FRAMES_REF_ROOTS": str(shared),
        "VIGIL_OUT_DIR": str(work / "out"),
        "VIGIL_RERUN_MODE": "rrd",
    }
    flow = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflows.frames"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert flow.returncode == 0, flow.stderr
    return {
        "alerts": [orjson.loads(r.value or b"") for r in broker.read_topic("frame-alerts")],
        "results": [orjson.loads(r.value or b"") for r in broker.read_topic("frame-results")],
        "dead": [orjson.loads(r.value or b"") for r in broker.read_topic("frames-dlq")],
        "rrd": work / "out" / "frames.rrd",
        "bank": work / "out" / "vigil-frames.db",
    }


def test_every_frame_has_a_result_and_the_corrupt_one_is_dead_lettered(run: dict) -> None:
    results = run["results"]
    assert len(results) == 2 * COUNT
    assert {r["camera"] for r in results} == {"cam1", "cam2"}
    assert {r["target"] for r in results} == {"M31", "M13"}
    [dead] = run["dead"]
    assert dead["step"] == "decode"
    assert dead["origin"] == "frames"
    assert dead["reason"].startswith("json:")


def test_each_target_warms_up_then_is_scored(run: dict) -> None:
    for target in ("M31", "M13"):
        mine = [r for r in run["results"] if r["target"] == target]
        warm = [r for r in mine if (r["skipped"] or "").startswith("reference")]
        assert len(warm) == REFERENCES
        scored = [r for r in mine if r["skipped"] is None]
        assert len(scored) > COUNT // 2
        assert all(r["score"] >= 0 and r["threshold"] > 0 for r in scored)
    assert run["bank"].is_dir()


def test_alerts_carry_boxes_and_find_injected_anomalies(run: dict) -> None:
    alerts = run["alerts"]
    assert alerts
    ids = [a["alert_id"] for a in alerts]
    assert len(ids) == len(set(ids))
    assert all(a["boxes"] and a["score"] > a["threshold"] for a in alerts)
    with_truth = [a for a in alerts if a["truth"]]
    assert len(with_truth) >= len(alerts) // 2


def test_unusable_frames_are_skipped_with_a_reason(run: dict) -> None:
    unusable = [r for r in run["results"] if r["unusable"]]
    assert unusable
    assert all(r["skipped"] and r["score"] is None for r in unusable)


def test_the_recording_shows_frames_scores_and_boxes(run: dict) -> None:
    paths = {c.entity_path for c in RrdReader(run["rrd"]).stream().to_chunks()}
    for camera in ("cam1", "cam2"):
        assert {f"/frames/{camera}/image", f"/frames/{camera}/image/anomaly"} <= paths
        assert {f"/frames/{camera}/image/boxes", f"/frames/{camera}/header"} <= paths
        assert f"/score/{camera}" in paths
