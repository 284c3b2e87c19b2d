"""A Kafka-protocol broker for integration tests: librdkafka's mock cluster in its own process.

librdkafka (bundled in the confluent-kafka wheel) carries a mock cluster that speaks
the real Kafka protocol on a loopback port. It lives as long as the process that
created it, and only that process can create topics with a chosen partition count
(through the mock cluster handle), so the broker runs as a small server process:

    python kafka_broker.py [--brokers N] [--topic NAME:PARTITIONS ...]

It prints its bootstrap address as the first line of stdout, then answers one
command per stdin line, answered by ``ok`` or ``error <reason>``:
``create <topic> <partitions>`` creates a topic; ``errors <api-key> <code>...``
makes the next requests of that kind (0: Produce, 1: Fetch) fail with those
Kafka error codes. It exits when stdin closes, on ``quit``, or on SIGTERM.

:class:`MockKafkaBroker` starts and drives that process from a test;
:func:`produce` and :func:`read_topic` write and read topics with plain clients.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_RD_KAFKA_PRODUCER = 0

Message = tuple[bytes | None, bytes | None]


# --------------------------------------------------------------------------- server side


def find_librdkafka() -> str:
    """Path of the librdkafka shared library bundled with confluent-kafka.

    ``VIGIL_LIBRDKAFKA`` overrides the search; a system library is the last resort.
    """
    override = os.environ.get("VIGIL_LIBRDKAFKA")
    if override:
        return override
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is not None and spec.origin is not None:
        package = Path(spec.origin).parent
        for folder in (package.parent / "confluent_kafka.libs", package / ".dylibs", package):
            found = sorted(folder.glob("librdkafka*.so*")) + sorted(
                folder.glob("librdkafka*.dylib")
            )
            if found:
                return str(found[0])
    system = ctypes.util.find_library("rdkafka")
    if system is None:
        msg = "librdkafka not found: install confluent-kafka or set VIGIL_LIBRDKAFKA"
        raise FileNotFoundError(msg)
    return system


class MockCluster:
    """librdkafka's mock cluster, driven through ctypes (server process only).

    Args:
        brokers: Number of mock brokers.

    """

    def __init__(self, brokers: int = 1) -> None:
        lib = ctypes.CDLL(find_librdkafka())
        lib.rd_kafka_conf_new.restype = ctypes.c_void_p
        lib.rd_kafka_conf_set.restype = ctypes.c_int
        lib.rd_kafka_conf_set.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.rd_kafka_new.restype = ctypes.c_void_p
        lib.rd_kafka_new.argtypes = [
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_size_t,
        ]
        lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
        lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
        lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
        lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
        lib.rd_kafka_mock_topic_create.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_int,
        ]
        lib.rd_kafka_mock_push_request_errors_array.restype = None
        lib.rd_kafka_mock_push_request_errors_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int16,
            ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.rd_kafka_err2str.restype = ctypes.c_char_p
        lib.rd_kafka_err2str.argtypes = [ctypes.c_int]
        self._lib = lib

        errstr = ctypes.create_string_buffer(512)
        conf = lib.rd_kafka_conf_new()
        # The handle only hosts the cluster; its "no bootstrap.servers" notice is noise.
        lib.rd_kafka_conf_set(conf, b"log_level", b"4", errstr, len(errstr))
        self._rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, len(errstr))
        if not self._rk:
            msg = f"rd_kafka_new failed: {errstr.value.decode(errors='replace')}"
            raise RuntimeError(msg)
        self._mcluster = lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._mcluster:
            lib.rd_kafka_destroy(self._rk)
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self.bootstrap: str = lib.rd_kafka_mock_cluster_bootstraps(self._mcluster).decode()

    def create_topic(self, name: str, partitions: int, replication: int = 1) -> None:
        """Create a topic with a chosen number of partitions.

        Raises:
            ValueError: on a bad name or count, or when the mock refuses.

        """
        if not TOPIC_NAME.match(name):
            raise ValueError(f"topic: expected [A-Za-z0-9._-]{{1,249}}, got {name!r}")
        if partitions < 1:
            raise ValueError(f"partitions: expected >= 1, got {partitions}")
        err = self._lib.rd_kafka_mock_topic_create(
            self._mcluster, name.encode(), partitions, replication
        )
        if err:
            reason = self._lib.rd_kafka_err2str(err).decode(errors="replace")
            raise ValueError(f"creating topic {name!r}: {reason}")

    def push_request_errors(self, api_key: int, codes: list[int]) -> None:
        """Answer the next requests of kind ``api_key`` with these error codes, in order."""
        array = (ctypes.c_int * len(codes))(*codes)
        self._lib.rd_kafka_mock_push_request_errors_array(
            self._mcluster, api_key, len(codes), array
        )

    def close(self) -> None:
        """Stop the cluster and release its handle."""
        self._lib.rd_kafka_mock_cluster_destroy(self._mcluster)
        self._lib.rd_kafka_destroy(self._rk)


def _parse_topic(spec: str) -> tuple[str, int]:
    name, _, count = spec.rpartition(":")
    if not name or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME:PARTITIONS, got {spec!r}")
    return name, int(count)


def _answer(cluster: MockCluster, line: str) -> str:
    words = line.split()
    numbers = [w.lstrip("-").isdigit() for w in words[2:]]
    if len(words) == 3 and words[0] == "create" and all(numbers):
        try:
            cluster.create_topic(words[1], int(words[2]))
        except ValueError as exc:
            return f"error {exc}"
        return "ok"
    if len(words) >= 3 and words[0] == "errors" and words[1].isdigit() and all(numbers):
        cluster.push_request_errors(int(words[1]), [int(w) for w in words[2:]])
        return "ok"
    usage = "'create <topic> <partitions>', 'errors <api-key> <code>...' or 'quit'"
    return f"error expected {usage}, got {line!r}"


def serve(argv: list[str] | None = None) -> None:
    """Run the broker process: print the address, then answer stdin commands."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument("--topic", type=_parse_topic, action="append", default=[])
    args = parser.parse_args(argv)

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    cluster = MockCluster(args.brokers)
    try:
        for name, partitions in args.topic:
            cluster.create_topic(name, partitions)
        print(cluster.bootstrap, flush=True)
        for line in sys.stdin:
            if line.strip() == "quit":
                break
            if line.strip():
                print(_answer(cluster, line), flush=True)
    finally:
        cluster.close()


# --------------------------------------------------------------------------- client side


@dataclass(frozen=True, slots=True)
class Record:
    """One message read back from a topic."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class MockKafkaBroker:
    """A running broker process, driven from a test.

    Args:
        process: The broker process (stdin and stdout pipes in binary mode).
        bootstrap: Its bootstrap address.

    """

    def __init__(self, process: subprocess.Popen[bytes], bootstrap: str) -> None:
        self.process = process
        self.bootstrap = bootstrap
        self._lock = threading.Lock()
        self._buffer = b""

    @classmethod
    def start(cls, log_path: Path, *, brokers: int = 1, timeout: float = 30.0) -> MockKafkaBroker:
        """Start a broker process and wait for its address.

        Args:
            log_path: Where the process's stderr goes.
            brokers: Number of mock brokers.
            timeout: Seconds to wait for the address.

        """
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, __file__, "--brokers", str(brokers)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        broker = cls(process, "")
        try:
            broker.bootstrap = broker._read_line(timeout)
        except BaseException:
            broker.close()
            raise
        return broker

    def _read_line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise TimeoutError(f"mock broker: no answer within {timeout} s")
                chunk = os.read(fd, 4096)
                if not chunk:
                    msg = f"mock broker exited with code {self.process.wait()} (see its log)"
                    raise RuntimeError(msg)
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode().strip()

    def create_topic(self, name: str, partitions: int, *, timeout: float = 10.0) -> None:
        """Create a topic with ``partitions`` partitions.

        Raises:
            ValueError: when the broker refuses (bad name, topic exists).

        """
        if not TOPIC_NAME.match(name):
            raise ValueError(f"topic: expected [A-Za-z0-9._-]{{1,249}}, got {name!r}")
        self._command(f"create {name} {partitions}", timeout)

    def push_request_errors(self, api_key: int, *codes: int, timeout: float = 10.0) -> None:
        """Answer the next requests of kind ``api_key`` (0: Produce, 1: Fetch) with errors.

        Args:
            api_key: Kafka protocol API key of the requests to fail.
            codes: Kafka error codes, one per request, in order.
            timeout: Seconds to wait for the broker's answer.

        """
        self._command(f"errors {api_key} {' '.join(map(str, codes))}", timeout)

    def _command(self, line: str, timeout: float) -> None:
        assert self.process.stdin is not None
        with self._lock:
            self.process.stdin.write(f"{line}\n".encode())
            self.process.stdin.flush()
            answer = self._read_line(timeout)
        if answer != "ok":
            raise ValueError(answer.removeprefix("error "))

    def produce(
        self, topic: str, messages: Iterable[Message], *, partition: int | None = None
    ) -> None:
        """Write ``(key, value)`` messages and wait until they are delivered."""
        produce(self.bootstrap, topic, messages, partition=partition)

    def read_topic(self, topic: str, *, timeout: float = 30.0) -> list[Record]:
        """Every message of the topic, ordered by partition and offset."""
        return read_topic(self.bootstrap, topic, timeout=timeout)

    def close(self) -> None:
        """Stop the broker process (stdin EOF, then SIGTERM, then SIGKILL)."""
        stdin: IO[bytes] | None = self.process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        for stop in (None, self.process.terminate, self.process.kill):
            if stop is not None:
                stop()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                continue
            break
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> MockKafkaBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[Message],
    *,
    partition: int | None = None,
    timeout: float = 30.0,
) -> None:
    """Write ``(key, value)`` messages to a topic and wait until all are delivered.

    Args:
        bootstrap: Broker address.
        topic: The topic.
        messages: ``(key, value)`` pairs; ``None`` is a missing key or a tombstone.
        partition: Target partition (default: by key, as other Kafka clients do).
        timeout: Seconds to wait for delivery.

    Raises:
        RuntimeError: if any message was not delivered.

    """
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "compression.type": "lz4",
            "linger.ms": 5,
            "partitioner": "murmur2_random",
            "delivery.report.only.error": True,
            "on_delivery": on_delivery,
        }
    )
    target = -1 if partition is None else partition
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value, key, partition=target)
                break
            except BufferError:
                producer.poll(0.05)
    left = producer.flush(timeout)
    if left or failures:
        msg = f"producing to {topic!r}: {left} undelivered after {timeout} s, errors {failures[:3]}"
        raise RuntimeError(msg)


def read_topic(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[Record]:
    """Read a topic from the beginning to its current end on every partition.

    Raises:
        TimeoutError: if some partition did not reach its end within ``timeout``.
        RuntimeError: on a consumer error or an unknown topic.

    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "vigil-tests",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "fetch.queue.backoff.ms": 1,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise RuntimeError(f"reading {topic!r}: {meta.error}")
        pending = set(meta.partitions)
        consumer.assign(
            [TopicPartition(topic, p, -2) for p in sorted(pending)]  # -2: OFFSET_BEGINNING
        )
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic!r}: partitions {pending} not at end")
            for m in consumer.consume(10_000, 0.1):
                err = m.error()
                partition, offset = m.partition(), m.offset()
                assert partition is not None
                assert offset is not None
                if err is None:
                    records.append(Record(partition, offset, m.key(), m.value()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(partition)
                else:
                    raise RuntimeError(f"reading {topic!r}: {err}")
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


if __name__ == "__main__":
    serve()
