"""docker/compose.yaml cannot run here (no Docker engine): check what can be checked without it.

Pinned images, health checks where a dependant waits for health, ports on the loopback
only, named volumes declared, and the topics service creating every topic the flows
read and write by default (taken from the flows' own settings, so the two cannot drift).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from operators.config import Env

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def test_every_image_is_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


def test_waited_on_services_have_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in services.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if how["condition"] == "service_healthy":
                check = services[dep].get("healthcheck") or {}
                assert check.get("test"), f"{name} waits for {dep}'s health: none defined"


def test_ports_bind_to_the_loopback_and_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: port {port} not on 127.0.0.1"
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def _created_topics(compose: dict[str, Any]) -> set[str]:
    command = " ".join(compose["services"]["topics"]["command"])
    topics: set[str] = set()
    for part in command.split("&&"):
        words = shlex.split(part)
        if "create" in words:
            after = words[words.index("create") + 1 :]
            topics.update(w for w in after if not w.startswith("-") and not w.isdigit())
    return topics


def test_the_topics_service_creates_every_flows_default_topics(compose: dict[str, Any]) -> None:
    from dataflows import flow_sites, metrics, sensors, wildlife

    created = _created_topics(compose)
    kafkas = [
        sensors.Config.from_env(Env({})).kafka,
        metrics.Config.from_env(Env({})).kafka,
        wildlife.Config.from_env(Env({})).common.kafka,
        flow_sites.Config.from_env(Env({})).common.kafka,
    ]
    for k in kafkas:
        for topic in (k.topic, k.alerts_topic, k.dlq_topic):
            assert topic in created, f"compose does not create {topic}"
    assert {"frames", "frame-alerts", "frame-results", "frames-dlq"} <= created
