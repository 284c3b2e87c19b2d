"""Outages of the services a flow depends on: the flow waits, reports, and goes on without loss.

**Broker outage.** The sensors flow (``python -m bytewax.run dataflows.sensors``,
tailing) follows a topic on a Kafka-protocol broker of its own (not the
session's shared one). Part of the readings is offered; as soon as the first
alerts arrive, with the flow in the middle of that part, the broker process is
frozen (SIGSTOP) for :data:`BROKER_OUTAGE_S`, longer than every client timeout
that applies, which :data:`SHORT_TIMEOUTS` lowers (via ``VIGIL_KAFKA_CONFIG``)
to keep the test short: a request gets no answer for ``socket.timeout.ms``
(consumer fetches, every connection) and ``request.timeout.ms`` (a produce
request), and an alert or dead letter not acknowledged within
``message.timeout.ms`` is reported undelivered to the sink. The broker is then
resumed (SIGCONT) and the rest is offered. The flow must not exit, must log the
outage as rate-limited WARNING lines, and its alerts and dead letters, after
de-duplication (by alert id; dead letters by partition, offset and step), must
equal those of a run without an outage: no reading skipped, no message the
producer gave up on dropped.

**Milvus outage.** The frame flow (``python -m bytewax.run dataflows.frames``,
tailing) scores against a memory bank served by ``milvus-lite server`` in its
own process, with ``VIGIL_MILVUS_TIMEOUT_S`` lowered to 2 s. Once the target is
indexed and scored, the server is frozen (SIGSTOP) for :data:`MILVUS_OUTAGE_S`
while more frames arrive, then resumed; later it is killed (SIGKILL) while
frames arrive, and restarted on the same data directory (it then holds the
collections released). The flow must not exit, must retry with back-off
(WARNING lines with the attempt count, rate-limited; ``vigil_retries_total``
counted at its ``/metrics``), and every frame's result and alert must equal
those of a run without outage (the same frames through Milvus Lite in a file).
In a second test the server stays dead past ``VIGIL_MILVUS_GIVE_UP_S``: the
flow must exit non-zero naming that setting, having written nothing for the
frames it could not score, and the flow resumed from its recovery store once
the server is back must score them.

To see the figures (outage lengths, retries, duplicates)::

    .venv/bin/pytest tests/integration/test_outages.py -o log_cli=true --log-cli-level=INFO
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from generators.sensors import SensorSimConfig
from generators.telescope import TelescopeSimConfig, iter_frames, iter_messages
from tests.integration.flowproc import (
    KAFKA_CONFIG,
    FlowRun,
    TopicWatch,
    fill,
    init_recovery,
    sensor_messages,
    sensors_env,
    snapshot_committed,
)
from tests.integration.kafka_broker import MockKafkaBroker, Record

logger = logging.getLogger(__name__)

PARTITIONS = 2
SIM = SensorSimConfig(count=60_000, sensors=10, seed=31)
MALFORMED_EVERY = 499
#: Share of the messages offered before the outage.
BEFORE = 0.6
#: Client timeouts of the flow, lowered from librdkafka's defaults (socket 60 s,
#: request 30 s, message 300 s) so that the outage outlasts all of them quickly.
SHORT_TIMEOUTS = {
    "socket.timeout.ms": "2000",
    "request.timeout.ms": "2000",
    "message.timeout.ms": "3000",
}
#: Seconds the broker is frozen: longer than every timeout above.
BROKER_OUTAGE_S = 8.0
#: Seconds to wait for a flow to start, and for all outputs to arrive.
START_S, RUN_S = 60.0, 60.0
#: The flows' outage lines (``operators.retry.OutageLog``).
UNREACHABLE = re.compile(r"WARNING (\S+): (.+?): broker (?:still )?unreachable")
BACK = re.compile(r"WARNING \S+: (.+?): broker reachable again after ([\d.]+) s")


def by_alert_id(records: list[Record]) -> dict[bytes, bytes]:
    """Alert id -> record; fails if one id arrived with different contents."""
    out: dict[bytes, bytes] = {}
    for r in records:
        assert r.value is not None
        alert_id = orjson.loads(r.value)["alert_id"].encode()
        assert out.setdefault(alert_id, r.value) == r.value, f"alert {alert_id!r} differs"
    return out


def by_origin(records: list[Record]) -> dict[tuple[int, int, str], bytes]:
    """(partition, offset, step) of the original message -> dead-letter record; likewise."""
    out: dict[tuple[int, int, str], bytes] = {}
    for r in records:
        assert r.value is not None
        d = orjson.loads(r.value)
        key = (d["partition"], d["offset"], d["step"])
        assert out.setdefault(key, r.value) == r.value, f"dead letter {key} differs"
    return out


def wait_until(done: Callable[[], bool], timeout: float, what: str, flow: FlowRun) -> None:
    """Poll ``done()`` until it holds; the flow must keep running meanwhile."""
    deadline = time.monotonic() + timeout
    while not done():
        flow.check_running()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s:\n{flow.log()[-3000:]}")
        time.sleep(0.2)  # polling topics the flow writes, not waiting for data to arrive


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_broker_frozen_longer_than_the_client_timeouts_loses_nothing(tmp_path: Path) -> None:
    topic, alerts, dlq = "outage-sensors", "outage-alerts", "outage-dlq"
    messages = sensor_messages(SIM, PARTITIONS, malformed_every=MALFORMED_EVERY)
    malformed = len(messages) - SIM.count
    cut = round(len(messages) * BEFORE)
    with MockKafkaBroker.start(tmp_path / "broker.log") as broker:
        broker.create_topic(topic, PARTITIONS)
        for name in (alerts, dlq, "ref-alerts", "ref-dlq"):
            broker.create_topic(name, 1)
        env = sensors_env(broker.bootstrap, topic, alerts, dlq, tail=True)
        env["VIGIL_KAFKA_CONFIG"] = orjson.dumps({**KAFKA_CONFIG, **SHORT_TIMEOUTS}).decode()
        run = FlowRun.start("dataflows.sensors", env, tmp_path, "outage")
        watch = TopicWatch(broker.bootstrap, alerts)
        try:
            run.wait_reading(PARTITIONS, START_S)
            fill(broker.bootstrap, topic, messages[:cut])
            watch.wait_for(bool, RUN_S, run, "first alerts")
            stopped = time.monotonic()
            os.kill(broker.process.pid, signal.SIGSTOP)
            try:
                time.sleep(BROKER_OUTAGE_S)  # holding the outage, not waiting for data
            finally:
                os.kill(broker.process.pid, signal.SIGCONT)
            outage_s = time.monotonic() - stopped
            fill(broker.bootstrap, topic, messages[cut:])

            ref_env = sensors_env(broker.bootstrap, topic, "ref-alerts", "ref-dlq", tail=False)
            FlowRun.start("dataflows.sensors", ref_env, tmp_path, "reference").wait(RUN_S)
            reference = by_alert_id(broker.read_topic("ref-alerts"))
            ref_dead = by_origin(broker.read_topic("ref-dlq"))

            def caught_up() -> bool:
                alerts_seen = by_alert_id(broker.read_topic(alerts))
                return alerts_seen.keys() >= reference.keys() and len(
                    by_origin(broker.read_topic(dlq))
                ) >= len(ref_dead)

            wait_until(caught_up, RUN_S, "the outage run's outputs", run)
            assert run.running(), "the flow exited"
        finally:
            watch.close()
            run.kill()
        got_alerts, got_dead = broker.read_topic(alerts), broker.read_topic(dlq)

    assert len(ref_dead) == malformed
    assert len(reference) > 100
    assert by_alert_id(got_alerts) == reference
    assert by_origin(got_dead) == ref_dead

    log = run.log()
    lines = UNREACHABLE.findall(log)
    # The sinks had alerts to deliver when the broker froze: they reported it ...
    sinks = Counter(where for module, where in lines if module == "operators.sinks.kafka")
    assert sinks, log[-5000:]
    # ... at a limited rate: a line when it began, then at most one every 10 s,
    for where, count in sinks.items():
        assert count <= 2 + outage_s // 10, (where, count)
    # ... and when the broker answered again.
    back = {where: float(s) for where, s in BACK.findall(log)}
    assert sinks.keys() <= back.keys()
    assert "Traceback" not in log
    logger.info(
        "broker frozen %.1f s; flow waited, %d alerts (%d records, %d duplicates), "
        "%d dead letters (%d records); outage lines %s; reachable again after %s s",
        outage_s,
        len(reference),
        len(got_alerts),
        len(got_alerts) - len(reference),
        len(ref_dead),
        len(got_dead),
        dict(sinks),
        back,
    )


# --------------------------------------------------------------------------- Milvus

#: Small frames, every one usable (no clouds, defocus or bad weather): each frame
#: after the references is searched in the bank.
FRAMES = TelescopeSimConfig(
    count=26, width=192, height=144, stars=60, references=8, seed=4,
    asteroid_prob=0.3, hot_column_prob=0.25, clouds_prob=0.0, defocus_prob=0.0,
    weather_prob=0.0,
)  # fmt: skip
#: Frames offered before the first outage (the 8 references and some to score),
#: during the SIGSTOP, and while the server is killed.
PART_A, PART_B = 12, 19
#: Seconds one Milvus request may take in these runs (default 60 s).
MILVUS_TIMEOUT_S = 2.0
#: Seconds the server is frozen: several request timeouts.
MILVUS_OUTAGE_S = 8.0
#: Seconds the server is gone between its kill and its restart.
MILVUS_DOWN_S = 5.0
MILVUS_LINE = re.compile(r"WARNING operators\.framepipe: memory bank \S+: milvus (.*)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MilvusLiteServer:
    """``milvus-lite server`` in its own process, on a fixed port and data directory.

    Args:
        data: The server's data directory (kept across restarts).
        log: Where its output goes (appended).

    """

    def __init__(self, data: Path, log: Path) -> None:
        self.data = data
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it accepts connections."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data),
                 "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-lite server exited: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"milvus-lite server not up after {timeout} s") from None
                time.sleep(0.1)  # polling a port, not waiting for data

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: nothing is flushed or closed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


def frames_env(
    broker: MockKafkaBroker, prefix: str, work: Path, *, tail: bool, milvus: str = ""
) -> dict[str, str]:
    """The frame flow on ``<prefix>-frames``, writing ``<prefix>-results``, -alerts, -dlq."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIGIL_", "BYTEWAX_"))}
    env |= {
        "VIGIL_KAFKA_BROKERS": broker.bootstrap,
        "VIGIL_KAFKA_TOPIC": f"{prefix}-frames",
        "VIGIL_KAFKA_ALERTS_TOPIC": f"{prefix}-alerts",
        "VIGIL_KAFKA_RESULTS_TOPIC": f"{prefix}-results",
        "VIGIL_KAFKA_DLQ_TOPIC": f"{prefix}-dlq",
        "VIGIL_KAFKA_TAIL": "true" if tail else "false",
        "VIGIL_KAFKA_CONFIG": orjson.dumps(KAFKA_CONFIG).decode(),
        "VIGIL_FRAMES_MODEL": "random",
        "VIGIL_FRAMES_REFERENCES": str(FRAMES.references),
        "VIGIL_OUT_DIR": str(work / f"{prefix}-out"),
        "VIGIL_RERUN_MODE": "off",
    }
    if milvus:
        env["VIGIL_MILVUS_URI"] = milvus
    return env


def frame_topics(broker: MockKafkaBroker, prefix: str) -> None:
    for suffix in ("frames", "results", "alerts", "dlq"):
        broker.create_topic(f"{prefix}-{suffix}", 1)


def by_frame(records: list[Record]) -> dict[str, dict[str, Any]]:
    """Frame id -> its result; fails if one frame got two different results."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        assert r.value is not None
        d = orjson.loads(r.value)
        assert out.setdefault(d["frame_id"], d) == d, f"frame {d['frame_id']} scored twice apart"
    return out


def scraped(port: int, name: str, **labels: str) -> float:
    """Sum of the samples ``name`` with ``labels`` served at ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_milvus_frozen_then_restarted_mid_run_loses_no_frame(
    kafka_broker: MockKafkaBroker, tmp_path: Path
) -> None:
    broker = kafka_broker
    messages = list(iter_messages(FRAMES))
    frame_topics(broker, "mo")
    frame_topics(broker, "mo-ref")
    broker.produce("mo-ref-frames", messages)
    # The run without outage: Milvus Lite in a file of its own, at the same time.
    reference = FlowRun.start(
        "dataflows.frames", frames_env(broker, "mo-ref", tmp_path, tail=False), tmp_path, "ref"
    )
    server = MilvusLiteServer(tmp_path / "milvus", tmp_path / "milvus.log")
    server.start()
    api_port = free_port()
    env = frames_env(broker, "mo", tmp_path, tail=True, milvus=server.uri)
    env |= {
        "VIGIL_MILVUS_TIMEOUT_S": str(MILVUS_TIMEOUT_S),
        "VIGIL_MILVUS_GIVE_UP_S": "60",
        "BYTEWAX_DATAFLOW_API_ENABLED": "true",
        "BYTEWAX_DATAFLOW_API_PORT": str(api_port),
    }
    run = FlowRun.start("dataflows.frames", env, tmp_path, "outage")
    watch = TopicWatch(broker.bootstrap, "mo-results")

    def results(n: int) -> Callable[[list[bytes]], bool]:
        return lambda values: len(values) >= n

    try:
        broker.produce("mo-frames", messages[:PART_A])
        watch.wait_for(results(PART_A), 90, run, "results before the outages")
        # Frozen while frames wait: each search times out and is tried again.
        server.signal(signal.SIGSTOP)
        frozen = time.monotonic()
        broker.produce("mo-frames", messages[PART_A:PART_B])
        time.sleep(MILVUS_OUTAGE_S)  # holding the outage
        server.signal(signal.SIGCONT)
        frozen_s = time.monotonic() - frozen
        watch.wait_for(results(PART_B), 60, run, "results after SIGCONT")
        # Gone while frames wait: connections are refused, then the restarted
        # server holds the collections released until the bank reloads them.
        server.kill()
        killed = time.monotonic()
        broker.produce("mo-frames", messages[PART_B:])
        time.sleep(MILVUS_DOWN_S)  # holding the outage
        server.start()
        down_s = time.monotonic() - killed
        watch.wait_for(results(len(messages)), 60, run, "results after the restart")
        assert run.running(), "the flow exited"
        retries = scraped(api_port, "vigil_retries_total", service="milvus", call="search")
        reference.wait(90)
    finally:
        watch.close()
        run.kill()
        reference.kill()
        server.stop()

    got = by_frame(broker.read_topic("mo-results"))
    expected = by_frame(broker.read_topic("mo-ref-results"))
    assert len(expected) == len(messages)
    assert sum(r["skipped"] is None for r in expected.values()) == len(messages) - 8
    assert got == expected  # every frame, scored as without the outages
    alerts = {r.key: r.value for r in broker.read_topic("mo-alerts")}
    assert alerts == {r.key: r.value for r in broker.read_topic("mo-ref-alerts")}
    assert not broker.read_topic("mo-dlq")

    log = run.log()
    lines = MILVUS_LINE.findall(log)
    began = [line for line in lines if line.startswith("unreachable")]
    ended = [line for line in lines if line.startswith("reachable again")]
    assert len(began) == len(ended) == 2, lines  # one outage each, each reported once over
    assert all(re.search(r"attempt \d+ failed, retrying in", line) for line in began)
    # Rate-limited: a line when an outage begins, then at most one every 10 s.
    assert len(lines) <= 2 * 2 + (frozen_s + down_s) // 10, lines
    assert retries >= 2
    logger.info(
        "Milvus frozen %.1f s then down %.1f s: %d frames, %d results (%d duplicates), "
        "%d search retries; %s",
        frozen_s,
        down_s,
        len(messages),
        len(broker.read_topic("mo-results")),
        len(broker.read_topic("mo-results")) - len(got),
        retries,
        ended,
    )


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_milvus_gone_past_the_give_up_time_fails_loudly_and_recovery_scores_the_frames(
    kafka_broker: MockKafkaBroker, tmp_path: Path
) -> None:
    broker = kafka_broker
    messages = list(iter_messages(FRAMES))[: PART_A + 2]
    frame_topics(broker, "mg")
    server = MilvusLiteServer(tmp_path / "milvus", tmp_path / "milvus.log")
    server.start()
    store = init_recovery(tmp_path / "recovery")
    env = frames_env(broker, "mg", tmp_path, tail=True, milvus=server.uri)
    env |= {"VIGIL_MILVUS_TIMEOUT_S": "1", "VIGIL_MILVUS_GIVE_UP_S": "4"}
    run = FlowRun.start("dataflows.frames", env, tmp_path, "gives-up", recovery=store)
    watch = TopicWatch(broker.bootstrap, "mg-results")
    try:
        broker.produce("mg-frames", messages[:PART_A])
        watch.wait_for(
            lambda v: len(v) >= PART_A and snapshot_committed(store), 90, run, "a snapshot"
        )
        server.kill()
        killed = time.monotonic()
        broker.produce("mg-frames", messages[PART_A:])
        code = run.procs[0].wait(60)
        exited_s = time.monotonic() - killed
        watch.poll()
        written = len(watch.values)
        server.start()
        env["VIGIL_KAFKA_TAIL"] = "false"
        FlowRun.start("dataflows.frames", env, tmp_path, "resumed", recovery=store).wait(90)
    finally:
        watch.close()
        run.kill()
        server.stop()

    log = run.log()
    assert code != 0
    assert "gave up after" in log
    assert "VIGIL_MILVUS_GIVE_UP_S" in log
    # Nothing was written for the frames Milvus could not score: not skipped, not dropped ...
    assert written == PART_A
    # ... and the resumed run scored them.
    got = by_frame(broker.read_topic("mg-results"))
    assert len(got) == len(messages)
    late = [f.frame_id for f in iter_frames(FRAMES)][PART_A : len(messages)]
    assert all(got[f]["skipped"] is None for f in late), [got[f] for f in late]
    logger.info(
        "Milvus gone: the flow gave up and exited with %d %.1f s after the kill "
        "(give-up time 4 s, request timeout 1 s); resumed, it scored the %d frames left",
        code,
        exited_s,
        len(late),
    )
