"""KafkaBatchSource and KafkaBytesSink against a Kafka-protocol broker on loopback."""

from __future__ import annotations

import time
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from operators.events import RawBatch
from operators.sinks.kafka import KafkaBytesSink, KafkaSinkError
from operators.sources.kafka import KafkaBatchSource, KafkaSourceError
from tests.integration.kafka_broker import MockKafkaBroker, Record

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

# Low fetch wait: an idle partition answers quickly, so tests end quickly.
FAST = {"fetch.wait.max.ms": "10"}
PRODUCE, FETCH = 0, 1  # Kafka protocol API keys
NOT_LEADER_FOR_PARTITION = 6  # Kafka error code, retriable
TOPIC_AUTHORIZATION_FAILED = 29  # Kafka error code, not retriable


def known_messages(partition: int, n: int) -> list[tuple[bytes | None, bytes | None]]:
    """Keys and values of one partition, with a missing key and a tombstone."""
    msgs: list[tuple[bytes | None, bytes | None]] = [
        (f"k{partition}-{i}".encode(), f'{{"p":{partition},"i":{i}}}'.encode()) for i in range(n)
    ]
    msgs[1] = (None, b"no key")
    msgs[2] = (b"deleted", None)
    return msgs


def fill(broker: MockKafkaBroker, topic: str, per_partition: list[int]) -> list[Record]:
    """Create a topic and write known messages to each partition; return them as records."""
    broker.create_topic(topic, len(per_partition))
    expected = []
    for p, n in enumerate(per_partition):
        msgs = known_messages(p, n)
        broker.produce(topic, msgs, partition=p)
        expected += [Record(p, i, k, v) for i, (k, v) in enumerate(msgs)]
    return expected


def records(batches: list[RawBatch]) -> list[Record]:
    return sorted(
        (
            Record(b.partition, o, k, v)
            for b in batches
            for k, v, o in zip(b.keys, b.values, b.offsets, strict=True)
        ),
        key=lambda r: (r.partition, r.offset),
    )


def read_flow(source: KafkaBatchSource, out: list[RawBatch]) -> Dataflow:
    flow = Dataflow("read")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    return flow


def source(broker: MockKafkaBroker, topic: str, **kwargs: object) -> KafkaBatchSource:
    return KafkaBatchSource(
        [broker.bootstrap],
        topic,
        add_config=FAST,
        **kwargs,  # type: ignore[arg-type]
    )


def drain(part, count: int, timeout: float = 30.0) -> list[RawBatch]:  # type: ignore[no-untyped-def]
    """Call ``next_batch`` until ``count`` messages arrived (busy loop, like bytewax's own)."""
    batches: list[RawBatch] = []
    deadline = time.monotonic() + timeout
    while sum(map(len, batches)) < count:
        assert time.monotonic() < deadline, f"{sum(map(len, batches))} of {count} messages"
        batches += part.next_batch()
    return batches


def drain_to_end(part, timeout: float = 30.0) -> list[RawBatch]:  # type: ignore[no-untyped-def]
    """Call ``next_batch`` until the partition ends."""
    batches: list[RawBatch] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            batches += part.next_batch()
        except StopIteration:
            return batches
    raise AssertionError(f"partition did not end within {timeout} s")


def test_flow_reads_every_message_with_partition_and_offset(kafka_broker: MockKafkaBroker) -> None:
    expected = fill(kafka_broker, "read-all", [40, 25, 3])
    out: list[RawBatch] = []
    run_main(read_flow(source(kafka_broker, "read-all", tail=False, batch_size=7), out))
    assert records(out) == expected
    assert {b.origin for b in out} == {"read-all"}
    assert max(map(len, out)) <= 7
    for b in out:
        assert list(b.offsets) == sorted(b.offsets)


def test_two_workers_read_the_same_messages(kafka_broker: MockKafkaBroker) -> None:
    expected = fill(kafka_broker, "two-workers", [10, 11, 12])
    out: list[RawBatch] = []
    flow = read_flow(source(kafka_broker, "two-workers", tail=False), out)
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert records(out) == expected


def test_resume_from_snapshot_has_no_loss_and_no_repeat(kafka_broker: MockKafkaBroker) -> None:
    expected = fill(kafka_broker, "resume", [30])
    src = source(kafka_broker, "resume", batch_size=4)
    part = src.build_part("in", "0", None)
    first = drain(part, 10)
    snap = part.snapshot()
    part.close()
    assert snap == first[-1].offsets[-1] + 1

    resumed = src.build_part("in", "0", snap)
    rest = drain(resumed, 30 - snap)
    resumed.close()
    assert records(first + rest) == expected


def test_flow_resumes_from_recovery_and_reads_only_new_messages(
    kafka_broker: MockKafkaBroker, tmp_path: Path
) -> None:
    fill(kafka_broker, "recover", [5, 5])
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    first: list[RawBatch] = []
    run_main(
        read_flow(source(kafka_broker, "recover", tail=False), first), recovery_config=recovery
    )
    assert len(records(first)) == 10

    kafka_broker.produce("recover", [(b"new", b"1"), (b"new", b"2")], partition=1)
    second: list[RawBatch] = []
    run_main(
        read_flow(source(kafka_broker, "recover", tail=False), second), recovery_config=recovery
    )
    assert records(second) == [Record(1, 5, b"new", b"1"), Record(1, 6, b"new", b"2")]


def test_start_end_reads_only_messages_produced_after_start(kafka_broker: MockKafkaBroker) -> None:
    fill(kafka_broker, "from-end", [20])
    part = source(kafka_broker, "from-end", start="end").build_part("in", "0", None)
    assert part.snapshot() == 20
    kafka_broker.produce("from-end", [(b"a", b"after-1"), (None, b"after-2")], partition=0)
    batches = drain(part, 2)
    part.close()
    assert records(batches) == [Record(0, 20, b"a", b"after-1"), Record(0, 21, None, b"after-2")]


def test_tailing_partition_waits_at_the_end(kafka_broker: MockKafkaBroker) -> None:
    fill(kafka_broker, "tail", [3])
    part = source(kafka_broker, "tail", tail=True).build_part("in", "0", None)
    assert len(records(drain(part, 3))) == 3
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # reaching the end (EOF events) must not end it
        assert part.next_batch() == []
    assert part.next_awake() is not None
    kafka_broker.produce("tail", [(b"k", b"later")], partition=0)
    assert records(drain(part, 1)) == [Record(0, 3, b"k", b"later")]
    part.close()


def test_untailed_partition_ends_at_the_end_it_saw(kafka_broker: MockKafkaBroker) -> None:
    fill(kafka_broker, "finite", [6])
    part = source(kafka_broker, "finite", tail=False).build_part("in", "0", None)
    kafka_broker.produce("finite", [(b"k", b"beyond")], partition=0)
    batches = drain_to_end(part)
    assert [r.offset for r in records(batches)] == list(range(6))
    assert part.snapshot() == 6
    part.close()


def test_sink_writes_messages_that_read_back_in_order(kafka_broker: MockKafkaBroker) -> None:
    kafka_broker.create_topic("sink-out", 1)
    items: list[tuple[bytes | None, bytes]] = [
        (f"k{i % 3}".encode(), b"v%d" % i) for i in range(50)
    ]
    items[7] = (None, b"unkeyed")
    flow = Dataflow("write")
    stream = op.input("in", flow, TestingSource(items, batch_size=8))
    op.output("out", stream, KafkaBytesSink([kafka_broker.bootstrap], "sink-out"))
    run_main(flow)
    back = kafka_broker.read_topic("sink-out")
    assert [(r.key, r.value) for r in back] == items
    assert [r.offset for r in back] == list(range(50))


def test_sink_keeps_a_key_on_one_partition_in_order(kafka_broker: MockKafkaBroker) -> None:
    kafka_broker.create_topic("sink-keyed", 3)
    items = [(f"sensor-{i % 5}".encode(), b"%d" % i) for i in range(100)]
    flow = Dataflow("write")
    stream = op.input("in", flow, TestingSource(items, batch_size=30))
    op.output("out", stream, KafkaBytesSink([kafka_broker.bootstrap], "sink-keyed"))
    run_main(flow)
    back = kafka_broker.read_topic("sink-keyed")
    assert sorted((r.key, r.value) for r in back) == sorted(items)
    for key in {k for k, _v in items}:
        assert len({r.partition for r in back if r.key == key}) == 1
        assert [r.value for r in back if r.key == key] == [v for k, v in items if k == key]


def test_sink_fails_loudly_on_a_refused_message(kafka_broker: MockKafkaBroker) -> None:
    sink = KafkaBytesSink([kafka_broker.bootstrap], "sink-refused")
    part = sink.build("out", 0, 1)
    with pytest.raises(KafkaSinkError, match="sink-refused"):
        part.write_batch([(b"k", b"x" * 2_000_000)])  # above message.max.bytes


def test_sink_fails_loudly_when_delivery_fails(tmp_path: Path) -> None:
    with MockKafkaBroker.start(tmp_path / "broker.log") as broker:
        broker.create_topic("sink-denied", 1)
        part = KafkaBytesSink([broker.bootstrap], "sink-denied").build("out", 0, 1)
        part.write_batch([(b"k", b"first")])
        broker.push_request_errors(PRODUCE, TOPIC_AUTHORIZATION_FAILED)
        with pytest.raises(KafkaSinkError, match=r"sink-denied.*1 messages not delivered"):
            part.write_batch([(b"k", b"second")])
        assert [r.value for r in broker.read_topic("sink-denied")] == [b"first"]


def test_source_rides_out_a_retriable_fetch_error(tmp_path: Path) -> None:
    with MockKafkaBroker.start(tmp_path / "broker.log") as broker:
        expected = fill(broker, "fetch-retry", [5])
        broker.push_request_errors(FETCH, NOT_LEADER_FOR_PARTITION, NOT_LEADER_FOR_PARTITION)
        part = source(broker, "fetch-retry", tail=False).build_part("in", "0", None)
        assert records(drain_to_end(part)) == expected
        part.close()


def test_source_fails_loudly_on_a_fetch_error(tmp_path: Path) -> None:
    with MockKafkaBroker.start(tmp_path / "broker.log") as broker:
        fill(broker, "fetch-denied", [5])
        broker.push_request_errors(FETCH, TOPIC_AUTHORIZATION_FAILED)  # the first fetch
        part = source(broker, "fetch-denied").build_part("in", "0", None)
        with pytest.raises(KafkaSourceError, match=r"fetch-denied\[0\].*offset 0.*uthoriz"):
            drain(part, 5)
        assert part.snapshot() == 0


def test_unknown_topic_is_a_clear_error(kafka_broker: MockKafkaBroker) -> None:
    src = KafkaBatchSource([kafka_broker.bootstrap], "no-such-topic", timeout_s=5)
    with pytest.raises(KafkaSourceError, match=r"no-such-topic.*topic not available") as info:
        src.list_parts()
    assert kafka_broker.bootstrap in str(info.value)


def test_unreachable_broker_is_a_clear_error() -> None:
    src = KafkaBatchSource(["127.0.0.1:1"], "sensors", timeout_s=1)
    with pytest.raises(KafkaSourceError, match=r"'sensors' at 127\.0\.0\.1:1: no metadata"):
        src.list_parts()
