"""Fixtures that start real components for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.kafka_broker import MockKafkaBroker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockKafkaBroker]:
    """A Kafka-protocol broker (librdkafka's mock cluster) in its own process.

    Offers ``.bootstrap``, ``.create_topic(name, partitions)``,
    ``.produce(topic, [(key, value), ...], partition=None)`` and
    ``.read_topic(topic)``. Topics outlive a test: give each test its own.
    """
    log = tmp_path_factory.mktemp("kafka-broker") / "broker.log"
    with MockKafkaBroker.start(log) as broker:
        yield broker
