"""Write ``(key, value)`` messages to a Kafka topic.

Each worker opens one producer when the flow starts. ``write_batch`` hands every
message of the batch to librdkafka and returns only once all of them are
acknowledged by the broker, so what Bytewax counts as written is stored: after a
resume, messages may repeat (at least once) but none are lost. A message that
cannot be delivered fails the flow with the topic and the broker's reason.

Example:
    >>> sink = KafkaBytesSink(["localhost:9092"], "alerts")
    >>> sink.topic
    'alerts'

"""

from __future__ import annotations

import logging
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

logger = logging.getLogger(__name__)

KafkaMessage = tuple[bytes | None, bytes]

#: Tuning defaults; ``add_config`` overrides any of them.
DEFAULT_PRODUCER_CONFIG: dict[str, str] = {
    "compression.type": "lz4",
    # A short wait lets messages of one batch share a request.
    "linger.ms": "5",
    # No duplicates or reordering from the producer's own retries (implies acks=all).
    "enable.idempotence": "true",
    # The Java client's partitioner: a key lands on the partition other clients expect.
    "partitioner": "murmur2_random",
}

#: Only failed deliveries call back into Python; successes cost nothing there.
_REQUIRED_CONFIG: dict[str, Any] = {"delivery.report.only.error": True}

#: Seconds between "still waiting" warnings while a batch is being delivered.
FLUSH_WAIT_S = 10.0
#: Seconds ``close`` waits for the last messages.
CLOSE_TIMEOUT_S = 30.0
#: Seconds to serve delivery reports when librdkafka's queue is full.
_FULL_QUEUE_POLL_S = 0.05
#: Failures quoted in an error message.
_QUOTED = 3


class KafkaSinkError(RuntimeError):
    """Messages could not be delivered to Kafka."""


class _Reports:
    """Delivery failures and client errors, collected from librdkafka's callbacks."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.failed = 0
        self.reasons: list[str] = []
        self.fatal: KafkaError | None = None

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        self.failed += 1
        if len(self.reasons) < _QUOTED:
            self.reasons.append(f"partition {msg.partition()}: {err.str()}")

    def on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            logger.error("%s: fatal Kafka error: %s", self.where, err)
        else:
            logger.warning("%s: Kafka client error (librdkafka retries): %s", self.where, err)

    def raise_if_failed(self) -> None:
        """Fail on any undelivered message or fatal client error so far."""
        if self.fatal is not None:
            raise KafkaSinkError(f"{self.where}: fatal Kafka error: {self.fatal}")
        if self.failed:
            reasons = "; ".join(self.reasons)
            raise KafkaSinkError(f"{self.where}: {self.failed} messages not delivered: {reasons}")


class _KafkaSinkPartition(StatelessSinkPartition[KafkaMessage]):
    def __init__(self, producer: Producer, reports: _Reports, topic: str) -> None:
        self._producer = producer
        self._reports = reports
        self._topic = topic
        self._written = 0

    def write_batch(self, items: list[KafkaMessage]) -> None:
        """Produce every item and wait until the broker has acknowledged all of them.

        Raises:
            KafkaSinkError: naming the topic and the reason, when a message is refused
                or not delivered.

        """
        produce = self._producer.produce
        topic = self._topic
        for key, value in items:
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    # librdkafka's queue is full: let deliveries drain it, then retry.
                    self._producer.poll(_FULL_QUEUE_POLL_S)
                except KafkaException as exc:
                    msg = f"{self._reports.where}: message refused: {exc.args[0]}"
                    raise KafkaSinkError(msg) from exc
        self._flush()
        self._written += len(items)

    def _flush(self) -> None:
        # Each message ends delivered or failed within librdkafka's message.timeout.ms.
        while (left := self._producer.flush(FLUSH_WAIT_S)) > 0:
            self._reports.raise_if_failed()
            logger.warning("%s: still waiting for %d deliveries", self._reports.where, left)
        self._reports.raise_if_failed()

    def close(self) -> None:
        """Deliver what is left (waiting at most ``CLOSE_TIMEOUT_S``) and report.

        Raises:
            KafkaSinkError: when messages are left undelivered or failed.

        """
        left = self._producer.flush(CLOSE_TIMEOUT_S)
        where, failed = self._reports.where, self._reports.failed
        if left or failed:
            msg = f"{where}: closing with {left} messages undelivered and {failed} failed"
            raise KafkaSinkError(msg)
        logger.info("%s: wrote %d messages", where, self._written)


class KafkaBytesSink(DynamicSink[KafkaMessage]):
    """Produce ``(key, value)`` byte messages to one topic, at least once.

    Every worker writes through its own producer; keyed messages go to the
    partition of their key, unkeyed ones are spread.

    Args:
        brokers: Bootstrap ``host:port`` addresses.
        topic: The topic to write.
        add_config: Extra librdkafka settings (SASL, TLS, tuning) for the producer;
            they override :data:`DEFAULT_PRODUCER_CONFIG`.

    """

    def __init__(
        self, brokers: list[str], topic: str, *, add_config: dict[str, str] | None = None
    ) -> None:
        if not brokers:
            raise ValueError("kafka sink: expected at least one broker, got none")
        self.brokers = list(brokers)
        self.topic = topic
        self.add_config = dict(add_config or {})

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaSinkPartition:
        """Open this worker's producer."""
        reports = _Reports(f"kafka sink {step_id} -> {self.topic!r} (worker {worker_index})")
        config: dict[str, Any] = {
            "client.id": f"vigil-{step_id}-{worker_index}",
            **DEFAULT_PRODUCER_CONFIG,
            **self.add_config,
            **_REQUIRED_CONFIG,
            "bootstrap.servers": ",".join(self.brokers),
            "on_delivery": reports.on_delivery,
            "error_cb": reports.on_error,
            "logger": logger,
        }
        return _KafkaSinkPartition(Producer(config), reports, self.topic)
