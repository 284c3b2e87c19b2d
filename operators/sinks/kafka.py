"""Write ``(key, value)`` messages to a Kafka topic.

Each worker opens one producer when the flow starts. ``write_batch`` hands every
message of the batch to librdkafka and returns only once all of them are
acknowledged by the broker, so what Bytewax counts as written is stored: after a
resume, messages may repeat (at least once) but none are lost.

When the broker is unreachable (stopped, partitioned, restarting), librdkafka
keeps each message for ``message.timeout.ms`` (default 300 s) and then reports
it undelivered. Such a message may still have been stored (the broker may have
read the request and not answered), but it may as well not: the sink produces
it again, after a short back-off, as often as needed, and ``write_batch`` waits
(at least once: a message may arrive twice, which the records' stable ids make
harmless; after an outage, a message produced again may follow messages of its
batch that were produced after it). The outage is logged as a WARNING when it
begins, then at most every 10 s, and when the broker answers again. Any other
delivery failure (a message too large, a topic that does not exist, a refused
authorisation) or a fatal producer error fails the flow at once with the topic
and the broker's reason, logged at ERROR before it is raised.

Example:
    >>> sink = KafkaBytesSink(["localhost:9092"], "alerts")
    >>> sink.topic
    'alerts'

"""

from __future__ import annotations

import logging
import time
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from operators.retry import RETRIES, OutageLog, RetryPolicy

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
#: Waits before producing undelivered messages again: never giving up, since
#: librdkafka's message.timeout.ms already spaces the rounds during an outage.
REDELIVERY = RetryPolicy(first_s=0.5, factor=2.0, max_s=5.0, give_up_s=None, jitter=0.0)
#: Seconds to serve delivery reports when librdkafka's queue is full.
_FULL_QUEUE_POLL_S = 0.05
#: Failures quoted in an error message.
_QUOTED = 3

#: Client errors that mean the broker does not answer (librdkafka reconnects by itself).
_UNREACHABLE = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
    }
)
#: Delivery failures after which a message is produced again: the broker did not
#: answer in time, or its partition had no leader or too few replicas until then.
_REDELIVER = _UNREACHABLE | {
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError.NETWORK_EXCEPTION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.NOT_ENOUGH_REPLICAS,
    KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
}


class KafkaSinkError(RuntimeError):
    """Messages could not be delivered to Kafka."""


class _Reports:
    """Delivery failures and client errors, collected from librdkafka's callbacks."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.outage = OutageLog(logger, where, "broker")
        #: Messages to produce again: undelivered because the broker did not answer.
        self.again: list[KafkaMessage] = []
        self.again_reason = ""
        self.failed = 0
        self.reasons: list[str] = []
        self.fatal: KafkaError | None = None

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        if err.code() in _REDELIVER and not err.fatal():
            self.again.append((msg.key(), msg.value() or b""))
            self.again_reason = err.str()
            return
        self.failed += 1
        if len(self.reasons) < _QUOTED:
            self.reasons.append(f"partition {msg.partition()}: {err.str()}")

    def on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err
            logger.error("%s: fatal Kafka error: %s", self.where, err)
        elif err.code() in _UNREACHABLE:
            self.outage.failed(err.str(), "librdkafka reconnects, the flow waits")
        else:
            logger.warning("%s: Kafka client error (librdkafka retries): %s", self.where, err)

    def take_again(self) -> tuple[list[KafkaMessage], str]:
        """The messages to produce again (forgotten here), and the last reason."""
        again, self.again = self.again, []
        return again, self.again_reason

    def raise_if_failed(self) -> None:
        """Fail on any undeliverable message or fatal client error so far, logging it first."""
        msg = ""
        if self.fatal is not None:
            msg = f"{self.where}: fatal Kafka error: {self.fatal}"
        elif self.failed:
            reasons = "; ".join(self.reasons)
            msg = f"{self.where}: {self.failed} messages not delivered: {reasons}"
        if msg:
            # Logged as well: the runtime may abort before it prints the exception.
            logger.error("%s", msg)
            raise KafkaSinkError(msg)


class _KafkaSinkPartition(StatelessSinkPartition[KafkaMessage]):
    def __init__(self, producer: Producer, reports: _Reports, topic: str) -> None:
        self._producer = producer
        self._reports = reports
        self._topic = topic
        self._written = 0
        self._broken = False

    def write_batch(self, items: list[KafkaMessage]) -> None:
        """Produce every item and wait until the broker has acknowledged all of them.

        Messages the broker did not acknowledge in time are produced again (see
        the module docstring): during an outage this waits for the broker.

        Raises:
            KafkaSinkError: naming the topic and the reason, when a message is refused
                or cannot be delivered, or the producer failed fatally.

        """
        reports = self._reports
        pending = items
        rounds = 0
        try:
            while True:
                self._produce(pending)
                self._flush()
                pending, reason = reports.take_again()
                if not pending:
                    break
                rounds += 1
                RETRIES.labels(service="kafka", call=f"produce {self._topic}").inc()
                wait = REDELIVERY.delay(rounds)
                reports.outage.failed(
                    f"{len(pending)} messages not acknowledged: {reason}",
                    f"producing them again in {wait:.1f} s (round {rounds + 1})",
                )
                time.sleep(wait)
        except KafkaSinkError:
            self._broken = True
            raise
        if reports.outage.active:
            reports.outage.recovered()
        self._written += len(items)

    def _produce(self, items: list[KafkaMessage]) -> None:
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
                    logger.error("%s", msg)
                    raise KafkaSinkError(msg) from exc

    def _flush(self) -> None:
        # Each message ends delivered or failed within librdkafka's message.timeout.ms.
        while (left := self._producer.flush(FLUSH_WAIT_S)) > 0:
            self._reports.raise_if_failed()
            logger.warning("%s: still waiting for %d deliveries", self._reports.where, left)
        self._reports.raise_if_failed()

    def close(self) -> None:
        """Deliver what is left (waiting at most ``CLOSE_TIMEOUT_S``) and report.

        After a failed ``write_batch`` this only logs: raising again while the
        runtime unwinds from the first failure would abort the process.

        Raises:
            KafkaSinkError: when messages are left undelivered or failed.

        """
        left = self._producer.flush(CLOSE_TIMEOUT_S)
        reports = self._reports
        where, failed = reports.where, reports.failed + len(reports.again)
        if left or failed:
            msg = f"{where}: closing with {left} messages undelivered and {failed} failed"
            logger.error("%s", msg)
            if not self._broken:
                raise KafkaSinkError(msg)
            return
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
