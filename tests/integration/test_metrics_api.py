"""The project's metrics where an operator reads them: Bytewax's API server and a real broker.

A flow started as ``python -m bytewax.run`` with ``BYTEWAX_DATAFLOW_API_ENABLED=true``
serves ``/metrics`` with Bytewax's own metrics and the project's (one registry); the
Kafka source sets the consumer lag from what the broker's fetch responses said.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from operators.events import RawBatch
from operators.metrics import LagGauge
from operators.sources import kafka as kafka_source
from operators.sources.kafka import KafkaBatchSource
from tests.integration.kafka_broker import MockKafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STARTUP_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def sensors_flow(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The sensors flow on its endless simulator, its API server on a free port."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIGIL_", "BYTEWAX_"))}
    env |= {
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(port),
        "VIGIL_SIM_COUNT": "0",
        "VIGIL_SIM_RATE": "2000",
        "VIGIL_RERUN_MODE": "off",
        "VIGIL_OUT_DIR": str(tmp_path / "out"),
    }
    log = (tmp_path / "flow.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", "dataflows.sensors"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port, proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


def samples(text: str, name: str, **labels: str) -> list[float]:
    """Values of the samples called ``name`` whose labels include ``labels``."""
    return [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]


def scrape_until(port: int, proc: subprocess.Popen[bytes], ready: Callable[[str], bool]) -> str:
    """``/metrics`` once ``ready`` says so (the server starts with the flow)."""
    deadline = time.monotonic() + STARTUP_S
    text = ""
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the flow exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except (urllib.error.URLError, ConnectionError):
            text = ""
        if text and ready(text):
            return text
        time.sleep(0.2)  # the server is not up yet, or the first batch is not through
    raise AssertionError(f"/metrics not ready within {STARTUP_S} s; last:\n{text[-2000:]}")


def listening_address(port: int) -> str | None:
    """Local address (hex, as /proc/net/tcp has it) of the socket listening on ``port``."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, _remote, state = line.split()[1:4]
        address, hex_port = local.split(":")
        if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
            return address
    return None


def test_the_api_server_serves_bytewax_and_vigil_metrics(
    sensors_flow: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, proc = sensors_flow
    text = scrape_until(
        port, proc, lambda t: sum(samples(t, "vigil_events_total", flow="sensors")) > 0
    )
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"vigil_events", "vigil_dead_letters", "vigil_alerts"} <= names  # without _total
    assert "bytewax_inp_part_next_batch_duration_seconds" in names  # Bytewax's own


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_the_api_server_listens_on_every_interface(
    sensors_flow: tuple[int, subprocess.Popen[bytes]],
) -> None:
    # Bytewax 0.21 binds 0.0.0.0: publish or firewall the port accordingly (README).
    port, proc = sensors_flow
    scrape_until(port, proc, lambda t: "bytewax_" in t)
    assert listening_address(port) == "00000000"


def test_the_kafka_source_reports_consumer_lag(
    kafka_broker: MockKafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic, total, batch = "lag-metrics", 50, 10
    kafka_broker.create_topic(topic, 1)
    kafka_broker.produce(topic, [(b"k", b"%d" % i) for i in range(total)], partition=0)
    # Update at every batch rather than once a second, so the test needs no clock.
    monkeypatch.setattr(kafka_source, "LagGauge", functools.partial(LagGauge, interval_s=0.0))
    src = KafkaBatchSource(
        [kafka_broker.bootstrap], topic, batch_size=batch, add_config={"fetch.wait.max.ms": "10"}
    )
    part = src.build_part("input", "0", None)
    lags: list[float | None] = []
    read = 0
    deadline = time.monotonic() + 30
    try:
        while read < total:
            assert time.monotonic() < deadline, f"{read} of {total} messages"
            batches: list[RawBatch] = part.next_batch()
            if batches:
                read += sum(map(len, batches))
                lags.append(
                    REGISTRY.get_sample_value(
                        "vigil_consumer_lag_messages", {"topic": topic, "partition": "0"}
                    )
                )
    finally:
        part.close()
    assert lags == [float(total - batch * (i + 1)) for i in range(total // batch)]
