"""Read a Kafka topic as micro-batches of raw messages (:class:`~operators.events.RawBatch`).

Each Kafka partition is one Bytewax source partition, read by its own consumer
that is *assigned* that partition: there is no consumer group and nothing is
committed to Kafka. The position lives in Bytewax's recovery snapshot (the next
offset to read), so a resumed flow continues exactly where its last snapshot
left off.

One call of ``next_batch`` turns up to ``batch_size`` messages into one
:class:`RawBatch` of columns, so the runtime handles one item per batch rather
than one per message. librdkafka keeps fetching into a local queue in the
background; ``next_batch`` only drains that queue and never blocks the worker.
About once a second it also sets the partition's consumer lag
(``vigil_consumer_lag_messages``, :mod:`operators.metrics`) from the high
watermark librdkafka cached from its last fetch: no request to the broker.

When the broker is unreachable, librdkafka keeps reconnecting (each request
waits up to ``socket.timeout.ms``, 60 s by default; with no consumer group,
``session.timeout.ms`` does not apply) and the source simply has nothing to
read: the flow waits, and goes on from the same offsets when the broker is
back. The outage is logged as a WARNING when it begins, then at most every
10 s per partition, and when messages arrive again.

Example:
    >>> source = KafkaBatchSource(["localhost:9092"], "sensors", start="end")
    >>> source.topic, source.batch_size
    ('sensors', 1000)

"""

from __future__ import annotations

import bisect
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from operators.events import RawBatch
from operators.metrics import LagGauge
from operators.retry import OutageLog

logger = logging.getLogger(__name__)

#: Wait before asking again when the last batch was not full: long enough for
#: messages to gather into a useful batch, short enough to add little latency.
POLL_INTERVAL = timedelta(milliseconds=10)

#: Tuning defaults; ``add_config`` overrides any of them.
DEFAULT_CONSUMER_CONFIG: dict[str, str] = {
    # Without a group subscription the group id is never used, but the client wants one.
    "group.id": "vigil",
    # librdkafka's default of 1000 ms pauses a partition's fetcher whenever its local
    # queue is full, which caps draining a backlog at a few hundred thousand messages/s.
    "fetch.queue.backoff.ms": "5",
    # One consumer per partition: bound each one's prefetch queue (default 64 MiB).
    "queued.max.messages.kbytes": "32768",
    # How long the broker may hold a fetch when there is nothing new (latency when idle).
    "fetch.wait.max.ms": "100",
    # Where to go if a resumed offset no longer exists (retention removed it).
    "auto.offset.reset": "earliest",
}

#: Settings the source relies on; ``add_config`` cannot change them.
_REQUIRED_CONFIG: dict[str, str] = {
    "enable.partition.eof": "true",
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
}

_EOF = KafkaError._PARTITION_EOF
#: Client errors that mean the broker does not answer (librdkafka reconnects by itself).
_UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
    }
)


class KafkaSourceError(RuntimeError):
    """The Kafka source cannot go on (unknown topic, unreachable broker, fatal error)."""


def _consumer_config(brokers: list[str], add_config: dict[str, str]) -> dict[str, Any]:
    return {
        **DEFAULT_CONSUMER_CONFIG,
        **add_config,
        **_REQUIRED_CONFIG,
        "bootstrap.servers": ",".join(brokers),
        "logger": logger,
    }


class _ClientErrors:
    """Collects client-level errors reported by librdkafka's error callback.

    Most are transient (a broker restarts, a connection drops) and librdkafka
    recovers by itself, so they are logged, an unreachable broker at a limited
    rate. A fatal error ends the client: it is kept and raised by the partition
    on its next call.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.fatal: KafkaError | None = None
        self.outage = OutageLog(logger, where, "broker")

    def __call__(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            logger.error("%s: fatal Kafka error: %s", self.where, err)
        elif err.code() in _UNREACHABLE:
            self.outage.failed(err.str(), "librdkafka reconnects, the flow waits")
        else:
            logger.warning("%s: Kafka client error (librdkafka retries): %s", self.where, err)


class _KafkaPartition(StatefulSourcePartition[RawBatch, int | None]):
    """One Kafka partition read by one assigned consumer.

    Args:
        consumer: A consumer already assigned to the partition.
        errors: The consumer's error callback.
        topic: The topic.
        partition: The partition number.
        next_offset: The next offset to read.
        stop_at: End offset at which the partition ends (``None``: tail forever).
        batch_size: Most messages per batch.
        lag: Where the partition's consumer lag goes (default: a :class:`LagGauge`).

    """

    def __init__(
        self,
        consumer: Consumer,
        errors: _ClientErrors,
        topic: str,
        partition: int,
        next_offset: int,
        stop_at: int | None,
        batch_size: int,
        lag: LagGauge | None = None,
    ) -> None:
        self._consumer = consumer
        self._errors = errors
        self._topic = topic
        self._partition = partition
        self._next_offset = next_offset
        self._stop_at = stop_at
        self._batch_size = batch_size
        self._awake: datetime | None = None
        self._done = stop_at is not None and next_offset >= stop_at
        self._tp = TopicPartition(topic, partition)
        self._lag = lag or LagGauge(topic, partition)

    def next_batch(self) -> list[RawBatch]:
        """Drain up to ``batch_size`` messages already fetched; never blocks.

        Raises:
            StopIteration: once the end offset is reached when not tailing.
            KafkaSourceError: on a fatal or non-retriable Kafka error.

        """
        batches = self._drain()
        if self._lag.due():
            self._report_lag()
        return batches

    def _report_lag(self) -> None:
        """Set the lag from the cached high watermark (unknown before the first fetch)."""
        try:
            _low, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        except KafkaException as exc:  # a metric is not worth stopping the flow for
            logger.debug("%s: no cached watermarks: %s", self._where(), exc)
            return
        if high >= 0:  # librdkafka answers OFFSET_INVALID (-1001) until it knows
            self._lag.set(max(0, high - self._next_offset))

    def _drain(self) -> list[RawBatch]:
        if self._done:
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size, 0)
        if self._errors.fatal is not None:
            raise KafkaSourceError(f"{self._where()}: fatal Kafka error: {self._errors.fatal}")
        full = len(msgs) >= self._batch_size
        # KafkaError objects are truthy: this finds the (rare) error events in C.
        if any(map(Message.error, msgs)):
            msgs = self._without_errors(msgs)
        offsets = cast("tuple[int, ...]", tuple(map(Message.offset, msgs)))
        if self._stop_at is not None and offsets and offsets[-1] >= self._stop_at:
            end = bisect.bisect_left(offsets, self._stop_at)
            msgs, offsets = msgs[:end], offsets[:end]
            self._done = True
        self._awake = None if full or self._done else datetime.now(UTC) + POLL_INTERVAL
        if not msgs:
            return []
        if self._errors.outage.active:
            self._errors.outage.recovered()
        self._next_offset = max(self._next_offset, offsets[-1] + 1)
        keys = tuple(map(Message.key, msgs))
        values = tuple(map(Message.value, msgs))
        return [RawBatch(self._topic, self._partition, keys, values, offsets)]

    def _without_errors(self, msgs: list[Message]) -> list[Message]:
        """Act on the error events among ``msgs`` and return the messages proper."""
        kept = []
        for m in msgs:
            err = m.error()
            if err is None:
                kept.append(m)
            elif err.code() == _EOF:
                self._at_end(m.offset())
            elif err.code() in _UNREACHABLE:
                self._errors.outage.failed(err.str(), "librdkafka reconnects, the flow waits")
            elif err.retriable() and not err.fatal():
                logger.warning("%s: retriable Kafka error: %s", self._where(), err)
            else:
                msg = f"{self._where()}: Kafka error at offset {m.offset()}: {err}"
                raise KafkaSourceError(msg)
        return kept

    def _at_end(self, end: int | None) -> None:
        """The consumer reached ``end``, the partition's end offset when it fetched."""
        if end is None:
            return
        if self._stop_at is not None:
            self._done = True
            # Messages from ``stop_at`` on are left for a later run.
            end = min(end, self._stop_at)
        # Offsets up to the end that carried no message (transaction markers) are read.
        self._next_offset = max(self._next_offset, end)

    def next_awake(self) -> datetime | None:
        """Come back soon when the last batch was not full, else at once."""
        return self._awake

    def snapshot(self) -> int | None:
        """The next offset to read."""
        return self._next_offset

    def close(self) -> None:
        """Close the consumer (nothing to commit: the position is in the snapshot)."""
        self._consumer.close()

    def _where(self) -> str:
        return f"kafka source {self._topic}[{self._partition}]"


class KafkaBatchSource(FixedPartitionedSource[RawBatch, int | None]):
    """Read a topic, one Bytewax partition per Kafka partition, in micro-batches.

    Connects only when the flow starts (``list_parts``/``build_part``).

    Args:
        brokers: Bootstrap ``host:port`` addresses.
        topic: The topic to read.
        start: Where to start a partition that has no recovery snapshot:
            ``"beginning"`` (the oldest kept message) or ``"end"`` (only messages
            produced after the flow starts).
        tail: Keep waiting for new messages. ``False`` ends each partition at the
            end offset observed when it starts, so a flow over a finite topic ends.
        batch_size: Most messages in one :class:`RawBatch`.
        add_config: Extra librdkafka settings (SASL, TLS, tuning) for every client;
            they override :data:`DEFAULT_CONSUMER_CONFIG`.
        timeout_s: Seconds to wait for the cluster's metadata and offsets.

    """

    def __init__(
        self,
        brokers: list[str],
        topic: str,
        *,
        start: Literal["beginning", "end"] = "beginning",
        tail: bool = True,
        batch_size: int = 1000,
        add_config: dict[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        if not brokers:
            raise ValueError("kafka source: expected at least one broker, got none")
        if start not in ("beginning", "end"):
            raise ValueError(f"kafka source: start: expected 'beginning' or 'end', got {start!r}")
        if batch_size < 1:
            raise ValueError(f"kafka source: batch_size: expected >= 1, got {batch_size}")
        self.brokers = list(brokers)
        self.topic = topic
        self.start = start
        self.tail = tail
        self.batch_size = batch_size
        self.add_config = dict(add_config or {})
        self.timeout_s = timeout_s

    def _consumer(self, where: str) -> tuple[Consumer, _ClientErrors]:
        errors = _ClientErrors(where)
        config = _consumer_config(self.brokers, self.add_config)
        config["error_cb"] = errors
        return Consumer(config), errors

    def _fail(self, what: str, cause: object) -> KafkaSourceError:
        brokers = ",".join(self.brokers)
        return KafkaSourceError(f"kafka source {self.topic!r} at {brokers}: {what}: {cause}")

    def list_parts(self) -> list[str]:
        """The topic's partitions, as strings.

        Raises:
            KafkaSourceError: naming the topic and brokers, when the topic does not
                exist or the brokers do not answer within ``timeout_s``.

        """
        consumer, _errors = self._consumer(f"kafka source {self.topic}")
        try:
            meta = consumer.list_topics(self.topic, timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._fail(f"no metadata within {self.timeout_s} s", exc.args[0]) from exc
        finally:
            consumer.close()
        topic = meta.topics.get(self.topic)
        if topic is None or topic.error is not None:
            cause = "missing from the metadata" if topic is None else topic.error
            raise self._fail("topic not available", cause)
        return [str(p) for p in sorted(topic.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        """Open a consumer assigned to partition ``for_part``.

        Resumes at ``resume_state`` (the next offset to read) when there is one,
        else at the beginning or the end of the partition.

        Raises:
            KafkaSourceError: when the partition's offsets cannot be read.

        """
        partition = int(for_part)
        where = f"kafka source {self.topic}[{partition}]"
        consumer, errors = self._consumer(where)
        try:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=self.timeout_s
            )
        except KafkaException as exc:
            consumer.close()
            raise self._fail(f"partition {partition}: no offsets", exc.args[0]) from exc
        if resume_state is not None:
            offset = resume_state
        else:
            # A concrete offset rather than librdkafka's logical BEGINNING/END makes
            # the very first snapshot exact.
            offset = low if self.start == "beginning" else high
        consumer.assign([TopicPartition(self.topic, partition, offset)])
        logger.info(
            "%s: step %s reads from offset %d (partition holds %d..%d)%s",
            where,
            step_id,
            offset,
            low,
            high,
            "" if self.tail else f", ends at {high}",
        )
        stop_at = None if self.tail else high
        return _KafkaPartition(
            consumer, errors, self.topic, partition, offset, stop_at, self.batch_size
        )
