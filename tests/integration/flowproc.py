"""Run a flow as ``python -m bytewax.run`` processes against the mock broker, as an operator does.

Helpers of the integration tests that start, SIGKILL and restart the sensors
flow (one or more processes on free loopback ports, ``-w`` workers, a recovery
store), offer readings to its input topic at a paced rate in the background,
and follow an output topic while the flow writes it.

Example:
    >>> [len(m) for m in sensor_messages(SensorSimConfig(count=4, sensors=2), 4, malformed_every=2)]
    [3, 3, 3, 3, 3, 3]

"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from generators.sensors import SensorSimConfig, iter_messages
from generators.source import partition_of
from tests.integration.kafka_broker import Record

#: Extra librdkafka settings of the flow's clients: the mock broker holds each
#: fetch up to fetch.wait.max.ms, which would add that much to every poll.
KAFKA_CONFIG = {"fetch.wait.max.ms": "10", "fetch.queue.backoff.ms": "5"}

#: The Kafka source's start-up line: where each partition is read from.
READS_FROM = re.compile(r"kafka source (\S+)\[(\d+)\]: step \S+ reads from offset (\d+)")

#: ``(key, value, partition)`` of a message offered to the input topic.
Message = tuple[bytes, bytes, int]
#: Where a dead letter's message was: ``(partition, offset, step)``.
Origin = tuple[int, int, str]


def _malformed(n: int, cfg: SensorSimConfig) -> tuple[bytes, bytes]:
    """The ``n``-th malformed message: three decode errors and a replay, in turn.

    The replay is a well-formed reading at the stream's first event time, so the
    normalize step rejects it as out of order: a dead letter that depends on state.
    """
    sensor = str(n % cfg.sensors)
    first = cfg.start.strftime("%Y-%m-%d %H:%M:%S")
    kinds = (
        b'{"sensor_id": "%s", "ts": ' % sensor.encode(),
        orjson.dumps({"sensor_id": sensor, "temp": 24.0, "n": n}),
        orjson.dumps({"sensor_id": sensor, "ts": first, "temp": f"hot {n}"}),
        orjson.dumps({"sensor_id": sensor, "ts": first, "temp": 20.0 + n % 97 / 10}),
    )
    return sensor.encode(), kinds[n % len(kinds)]


def sensor_messages(
    cfg: SensorSimConfig, partitions: int, *, malformed_every: int = 0
) -> list[Message]:
    """The simulated readings as messages, each key in ``crc32(key) % partitions``.

    Args:
        cfg: The simulator's settings.
        partitions: Partitions of the input topic.
        malformed_every: Put a malformed message after every this many readings
            (0: none). Each is keyed by a sensor id and lands in its partition.

    """
    out: list[Message] = []
    for i, (key, value) in enumerate(iter_messages(cfg), start=1):
        out.append((key, value, partition_of(key, partitions)))
        if malformed_every and i % malformed_every == 0:
            bad_key, bad_value = _malformed(i // malformed_every, cfg)
            out.append((bad_key, bad_value, partition_of(bad_key, partitions)))
    return out


def _producer(bootstrap: str) -> Producer:
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "lz4",
            "linger.ms": 20,
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
        }
    )


def fill(bootstrap: str, topic: str, messages: list[Message], *, timeout: float = 60.0) -> None:
    """Produce every message at once and wait until all are delivered.

    Raises:
        RuntimeError: when a message was not delivered within ``timeout``.

    """
    feeder = Feeder(bootstrap, topic, messages, rate=0.0)
    feeder.start()
    feeder.finish(timeout)


class Feeder(threading.Thread):
    """Offer messages to a topic at ``rate`` messages/s in the background (0: at once).

    Messages keep their order within a partition (an idempotent producer).
    Wall-clock pacing is the point here: it makes the flow follow a live topic.

    Args:
        bootstrap: Broker address.
        topic: The input topic.
        messages: What to offer, in order.
        rate: Messages per second.

    """

    def __init__(self, bootstrap: str, topic: str, messages: list[Message], rate: float) -> None:
        super().__init__(name=f"feeder-{topic}", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.messages = messages
        self.rate = rate
        self.sent = 0
        self.error: BaseException | None = None
        self._failures: list[KafkaError] = []
        self._halt = threading.Event()

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            self._failures.append(err)

    def run(self) -> None:
        try:
            self._offer()
        except BaseException as exc:  # handed to the test thread by finish()
            self.error = exc

    def _offer(self) -> None:
        producer = _producer(self.bootstrap)
        started = time.monotonic()
        total = len(self.messages)
        while self.sent < total and not self._halt.is_set():
            elapsed = time.monotonic() - started
            due = total if self.rate <= 0 else min(total, int(elapsed * self.rate) + 1)
            for key, value, partition in self.messages[self.sent : due]:
                while True:
                    try:
                        producer.produce(
                            self.topic, value, key, partition, on_delivery=self._on_delivery
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
            self.sent = max(self.sent, due)
            producer.poll(0)
            if self.sent < total:
                self._halt.wait(0.005)
        left = producer.flush(60)
        if left or self._failures:
            msg = f"feeding {self.topic!r}: {left} undelivered, errors {self._failures[:3]}"
            raise RuntimeError(msg)

    def stop(self) -> None:
        """Offer nothing more (what was offered is still delivered)."""
        self._halt.set()

    def finish(self, timeout: float) -> None:
        """Wait until every message is delivered.

        Raises:
            TimeoutError: when the feeder is still going after ``timeout`` s.
            RuntimeError: when it failed.

        """
        self.join(timeout)
        if self.is_alive():
            self._halt.set()
            raise TimeoutError(f"feeding {self.topic!r}: {self.sent} sent after {timeout} s")
        if self.error is not None:
            raise RuntimeError(f"feeding {self.topic!r} failed") from self.error


def cluster_addresses(n: int) -> str:
    """``n`` loopback ``host:port`` addresses free now, as ``-a`` takes them (``;``-separated)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return ";".join(f"127.0.0.1:{sock.getsockname()[1]}" for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def init_recovery(directory: Path, partitions: int = 1) -> Path:
    """Create a recovery store: ``python -m bytewax.recovery DIRECTORY PARTITIONS``."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "bytewax.recovery", str(directory), str(partitions)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory


def snapshot_committed(store: Path) -> bool:
    """True once the store's latest execution has committed a snapshot of its own.

    Reads the recovery partition of Bytewax 0.21.1 (a SQLite file in WAL mode, so
    a reader does not hold up the flow writing it): an execution starts at
    ``exs.resume_epoch`` (the last committed epoch + 1) and ``commits.commit_epoch``
    reaches it when the first snapshot that execution took is durable. Killed
    before then, a flow resumes where the previous execution did.

    Raises:
        ValueError: unless the store has exactly one partition.

    """
    parts = sorted(store.glob("part-*.sqlite3"))
    if len(parts) != 1:
        raise ValueError(f"recovery store {store}: expected one partition, got {len(parts)}")
    with closing(sqlite3.connect(f"file:{parts[0]}?mode=ro", uri=True)) as db:
        resume = db.execute("SELECT max(resume_epoch) FROM exs").fetchone()[0]
        commit = db.execute("SELECT max(commit_epoch) FROM commits").fetchone()[0]
    return resume is not None and commit is not None and commit >= resume


def sensors_env(
    bootstrap: str, topic: str, alerts_topic: str, dlq_topic: str, *, tail: bool
) -> dict[str, str]:
    """Environment of the sensors flow on ``topic`` (no Rerun view)."""
    return {
        **os.environ,
        "VIGIL_KAFKA_BROKERS": bootstrap,
        "VIGIL_KAFKA_TOPIC": topic,
        "VIGIL_KAFKA_ALERTS_TOPIC": alerts_topic,
        "VIGIL_KAFKA_DLQ_TOPIC": dlq_topic,
        "VIGIL_KAFKA_TAIL": "true" if tail else "false",
        "VIGIL_KAFKA_CONFIG": orjson.dumps(KAFKA_CONFIG).decode(),
        "VIGIL_RERUN_MODE": "off",
    }


@dataclass
class FlowRun:
    """One execution of a flow: its ``bytewax.run`` processes and their log files."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(
        cls,
        module: str,
        env: dict[str, str],
        work: Path,
        name: str,
        *,
        processes: int = 1,
        workers: int = 1,
        recovery: Path | None = None,
        snapshot_s: int = 1,
    ) -> FlowRun:
        """Start ``python -m bytewax.run MODULE`` as ``processes`` processes of ``workers`` each.

        Args:
            module: The flow's import string.
            env: The processes' environment.
            work: Working directory; logs go to ``<name>.<i>.log`` there.
            name: Name of this run (log files).
            processes: Processes of the cluster (``-i``/``-a`` when more than one).
            workers: Workers per process (``-w``).
            recovery: Recovery store (``-r``, with ``-s snapshot_s -b 0``).
            snapshot_s: Seconds between snapshots (whole seconds: ``bytewax.run``
                reads ``-s`` as an integer).

        """
        command = [sys.executable, "-m", "bytewax.run", module, "-w", str(workers)]
        if recovery is not None:
            command += ["-r", str(recovery), "-s", str(snapshot_s), "-b", "0"]
        addresses = cluster_addresses(processes) if processes > 1 else ""
        procs, logs = [], []
        for i in range(processes):
            cluster = ["-i", str(i), "-a", addresses] if processes > 1 else []
            log = work / f"{name}.{i}.log"
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(command + cluster, cwd=work, env=env, stdout=out, stderr=out)
                )
            logs.append(log)
        return cls(procs, logs)

    def log(self) -> str:
        """The log of every process, one after the other."""
        return "".join(log.read_text(errors="replace") for log in self.logs)

    def running(self) -> bool:
        """True while every process runs."""
        return all(proc.poll() is None for proc in self.procs)

    def read_from(self, process: int | None = None) -> dict[int, int]:
        """Partition -> offset it was read from, as the Kafka source logged it.

        Args:
            process: Only the partitions this process read (default: every process).

        """
        text = self.log() if process is None else self.logs[process].read_text(errors="replace")
        return {int(p): int(o) for _topic, p, o in READS_FROM.findall(text)}

    def wait_reading(self, partitions: int, timeout: float) -> None:
        """Wait until the source has opened all ``partitions`` (the flow is up).

        Raises:
            TimeoutError: when it has not within ``timeout`` s.
            RuntimeError: when a process exited first.

        """
        deadline = time.monotonic() + timeout
        while len(self.read_from()) < partitions:
            self.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow not reading after {timeout} s:\n{self.log()[-3000:]}")
            time.sleep(0.05)  # polling a log file, not waiting for data to arrive

    def check_running(self) -> None:
        """Raise with the logs when a process has exited."""
        if not self.running():
            codes = [proc.poll() for proc in self.procs]
            raise RuntimeError(f"flow exited with {codes}:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL every process: no sink is closed, no snapshot is taken."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait(30)

    def wait(self, timeout: float) -> float:
        """Wait until every process has exited; returns the seconds since start.

        Raises:
            RuntimeError: with the logs, when a process exited non-zero or took too long.

        """
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"flow still running after {timeout} s") from None
        codes = [proc.returncode for proc in self.procs]
        if any(codes):
            raise RuntimeError(f"flow exited with {codes}:\n{self.log()[-3000:]}")
        return time.monotonic() - self.started


class TopicWatch:
    """Follow a topic from its beginning while a flow writes it.

    Args:
        bootstrap: Broker address.
        topic: The topic (it must exist).

    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.values: list[bytes] = []
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "vigil-tests-watch",
                "enable.auto.commit": False,
                **KAFKA_CONFIG,
            }
        )
        meta = self._consumer.list_topics(topic, timeout=10).topics[topic]
        self._consumer.assign([TopicPartition(topic, p, -2) for p in sorted(meta.partitions)])

    def poll(self) -> None:
        """Take what has arrived since the last call."""
        for m in self._consumer.consume(10_000, 0.05):
            err = m.error()
            if err is not None:
                raise RuntimeError(f"watching {self.topic!r}: {err}")
            self.values.append(m.value() or b"")

    def wait_for(
        self, done: Callable[[list[bytes]], bool], timeout: float, flow: FlowRun, what: str
    ) -> None:
        """Poll until ``done(values)`` holds.

        Raises:
            TimeoutError: naming ``what``, after ``timeout`` s.
            RuntimeError: when the flow exits first.

        """
        deadline = time.monotonic() + timeout
        while not done(self.values):
            flow.check_running()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {timeout} s ({len(self.values)} read)")
            self.poll()

    def close(self) -> None:
        """Close the consumer."""
        self._consumer.close()


def alerts_by_id(records: list[Record]) -> dict[bytes, bytes]:
    """Alert id -> alert record, from an alerts topic read back (repeats collapse).

    Raises:
        ValueError: when a record is not keyed by its id, or one id came with two contents.

    """
    out: dict[bytes, bytes] = {}
    for r in records:
        value = r.value or b""
        alert_id = str(orjson.loads(value)["alert_id"]).encode()
        if r.key != alert_id:
            raise ValueError(f"alert {alert_id!r} keyed {r.key!r}")
        if out.setdefault(alert_id, value) != value:
            raise ValueError(f"alert {alert_id!r} came as {out[alert_id]!r} and as {value!r}")
    return out


def dead_letters_by_origin(records: list[Record]) -> dict[Origin, bytes]:
    """(partition, offset, step) of the original message -> dead-letter record; likewise.

    Raises:
        ValueError: when one origin came with two contents.

    """
    out: dict[Origin, bytes] = {}
    for r in records:
        value = r.value or b""
        d = orjson.loads(value)
        origin = (int(d["partition"]), int(d["offset"]), str(d["step"]))
        if out.setdefault(origin, value) != value:
            raise ValueError(f"dead letter {origin} came as {out[origin]!r} and as {value!r}")
    return out
