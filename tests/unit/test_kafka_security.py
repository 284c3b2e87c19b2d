"""SASL/TLS settings of ``VIGIL_KAFKA_CONFIG`` reach every Kafka client the project builds.

Every flow is built as ``python -m bytewax.run`` would build it (``Config.from_env``,
then ``build_flow``) with brokers and SASL/TLS settings in its environment; each
Kafka source and sink found in the dataflow then opens its clients against fake
``Consumer``/``Producer`` classes that keep the configuration they were given.
The simulators' producer (``vigil-generate``) is checked the same way. No broker.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from bytewax.dataflow import Dataflow

from generators import cli
from operators.config import Env
from operators.sinks import kafka as kafka_sink
from operators.sinks.kafka import KafkaBytesSink
from operators.sources import kafka as kafka_source
from operators.sources.kafka import KafkaBatchSource

pytestmark = pytest.mark.timeout(120)

SECURITY = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanisms": "SCRAM-SHA-512",
    "sasl.username": "vigil",
    "sasl.password": "not-a-secret",
    "ssl.ca.location": "/certs/ca.pem",
}
BROKERS = "broker-1:9093,broker-2:9093"
ENV = {
    "VIGIL_KAFKA_BROKERS": BROKERS,
    "VIGIL_KAFKA_CONFIG": orjson.dumps(SECURITY).decode(),
    "VIGIL_RERUN_MODE": "off",
}
#: Each flow module and the Kafka sinks it writes (alerts, dead letters; frames: results).
FLOWS = {
    "dataflows.sensors": 2,
    "dataflows.metrics": 2,
    "dataflows.wildlife": 2,
    "dataflows.flow_sites": 2,
    "dataflows.frames": 3,
}


class Clients:
    """Configurations handed to ``Consumer`` and ``Producer``, in order."""

    def __init__(self) -> None:
        self.configs: list[tuple[str, dict[str, Any]]] = []

    def consumer(self, config: dict[str, Any]) -> FakeConsumer:
        self.configs.append(("consumer", config))
        return FakeConsumer()

    def producer(self, config: dict[str, Any]) -> object:
        self.configs.append(("producer", config))
        return object()


class FakeConsumer:
    """Just enough of a consumer for ``list_parts`` and ``build_part``: one empty partition."""

    def list_topics(self, topic: str, timeout: float) -> Any:
        meta = SimpleNamespace(partitions={0: None}, error=None)
        return SimpleNamespace(topics={topic: meta})

    def get_watermark_offsets(self, tp: Any, timeout: float | None = None) -> tuple[int, int]:
        return 0, 0

    def assign(self, partitions: list[Any]) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def clients(monkeypatch: pytest.MonkeyPatch) -> Clients:
    recorded = Clients()
    monkeypatch.setattr(kafka_source, "Consumer", recorded.consumer)
    monkeypatch.setattr(kafka_sink, "Producer", recorded.producer)
    return recorded


def endpoints(node: Any) -> Iterator[Any]:
    """Every source and sink held by the steps of a dataflow, at any depth."""
    for step in node.substeps:
        for f in dataclasses.fields(step):
            value = getattr(step, f.name)
            if isinstance(value, KafkaBatchSource | KafkaBytesSink):
                yield value
        yield from endpoints(step)


def build(module_name: str) -> Dataflow:
    module = importlib.import_module(module_name)
    flow: Dataflow = module.build_flow(module.Config.from_env(Env(ENV)))
    return flow


@pytest.mark.parametrize(("module_name", "sinks"), FLOWS.items())
def test_every_kafka_client_of_a_flow_gets_the_security_settings(
    clients: Clients, module_name: str, sinks: int
) -> None:
    found = list(endpoints(build(module_name)))
    sources = [e for e in found if isinstance(e, KafkaBatchSource)]
    assert len(sources) == 1
    assert len(found) - len(sources) == sinks
    for e in found:
        if isinstance(e, KafkaBatchSource):
            parts = e.list_parts()
            e.build_part("input", parts[0], None)
        else:
            e.build("out", 0, 1)
    kinds = [kind for kind, _ in clients.configs]
    # list_parts and build_part each open a consumer; each sink one producer per worker.
    assert kinds.count("consumer") == 2
    assert kinds.count("producer") == sinks
    for kind, config in clients.configs:
        assert config.items() >= SECURITY.items(), f"{module_name}: a {kind} lacks them"
        assert config["bootstrap.servers"] == BROKERS


def test_the_flows_required_settings_win_over_the_extra_ones(clients: Clients) -> None:
    # Extra settings cannot turn off what the source relies on (no commits, EOF events).
    source = KafkaBatchSource(["b:9092"], "t", add_config={"enable.auto.commit": "true"})
    source.list_parts()
    (_kind, config), *_ = clients.configs
    assert config["enable.auto.commit"] == "false"


@pytest.mark.parametrize("command", ["sensors", "metrics", "bears", "flowsites", "frames"])
def test_the_simulators_producer_gets_the_security_settings(command: str) -> None:
    args = cli.build_parser().parse_args([command, "--bootstrap", BROKERS])
    env = Env({"VIGIL_KAFKA_CONFIG": ENV["VIGIL_KAFKA_CONFIG"]})
    config = cli.producer_config(args, env)
    assert config.items() >= SECURITY.items()
    assert config["bootstrap.servers"] == BROKERS
    assert env.unknown() == []


def test_the_simulators_option_overrides_the_shared_settings() -> None:
    override = '{"sasl.username": "generator"}'
    args = cli.build_parser().parse_args(
        ["sensors", "--bootstrap", BROKERS, "--kafka-config", override]
    )
    config = cli.producer_config(args, Env({"VIGIL_KAFKA_CONFIG": ENV["VIGIL_KAFKA_CONFIG"]}))
    assert config["sasl.username"] == "generator"
    assert config["sasl.password"] == SECURITY["sasl.password"]


def test_a_malformed_shared_setting_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIGIL_KAFKA_CONFIG", "[1, 2]")
    code = cli.main(["sensors", "--bootstrap", BROKERS, "--count", "1"])
    assert code == cli.EXIT_USAGE
    assert "VIGIL_KAFKA_CONFIG: expected a JSON object" in capsys.readouterr().err
