"""The project's Prometheus metrics, read back as a scraper sees them (``generate_latest``).

Each test uses its own flow or topic label, so the shared default registry
cannot mix their numbers.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from operators.metrics import (
    STEP_SECONDS_BUCKETS,
    LagGauge,
    StepMetrics,
    count_dead_letter,
    observe_step,
    step_metrics,
)
from operators.sources.kafka import _ClientErrors, _KafkaPartition

pytestmark = pytest.mark.timeout(30)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape() -> Samples:
    """Every sample of the default registry, by name and labels, as the exposition text says."""
    text = generate_latest(REGISTRY).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_observe_step_counts_in_out_and_latency() -> None:
    observe_step("t-observe", "detect", 1000, 7, 0.003)
    observe_step("t-observe", "detect", 500, 0, 0.0004)
    s = scrape()
    labels = {"flow": "t-observe", "step": "detect"}
    assert sample(s, "vigil_events_total", **labels) == 1500
    assert sample(s, "vigil_events_out_total", **labels) == 7
    assert sample(s, "vigil_step_seconds_count", **labels) == 2
    assert sample(s, "vigil_step_seconds_sum", **labels) == pytest.approx(0.0034)
    assert sample(s, "vigil_step_seconds_bucket", **labels, le="0.0005") == 1
    assert sample(s, "vigil_step_seconds_bucket", **labels, le="0.0025") == 1
    assert sample(s, "vigil_step_seconds_bucket", **labels, le="0.005") == 2
    assert sample(s, "vigil_step_seconds_bucket", **labels, le="+Inf") == 2


def test_a_step_without_timing_counts_only() -> None:
    step_metrics("t-untimed", "decode").observe(10, 9)
    s = scrape()
    labels = {"flow": "t-untimed", "step": "decode"}
    assert sample(s, "vigil_events_total", **labels) == 10
    assert sample(s, "vigil_events_out_total", **labels) == 9
    assert sample(s, "vigil_step_seconds_count", **labels) == 0


def test_buckets_cover_a_sensor_batch_to_a_frame_batch() -> None:
    assert list(STEP_SECONDS_BUCKETS) == sorted(STEP_SECONDS_BUCKETS)
    assert STEP_SECONDS_BUCKETS[0] <= 0.0001
    assert STEP_SECONDS_BUCKETS[-1] >= 10.0


def test_bound_metrics_are_shared_and_pickle_to_the_same_series() -> None:
    m = step_metrics("t-pickle", "alert")
    assert step_metrics("t-pickle", "alert") is m
    copy = pickle.loads(pickle.dumps(m))
    assert isinstance(copy, StepMetrics)
    copy.observe(3, 1, 0.01)
    m.observe(2, 1, 0.01)
    s = scrape()
    assert sample(s, "vigil_events_total", flow="t-pickle", step="alert") == 5
    assert sample(s, "vigil_step_seconds_count", flow="t-pickle", step="alert") == 2


def test_a_negative_count_is_a_bug_and_fails() -> None:
    with pytest.raises(ValueError, match="negative"):
        observe_step("t-negative", "detect", -1, 0)


def test_dead_letters_are_counted_by_the_field_at_fault() -> None:
    count_dead_letter("t-dlq", "decode", "field 'temp': expected a number, got str 'hot'")
    count_dead_letter("t-dlq", "decode", "payload: expected JSON, got invalid JSON")
    count_dead_letter("t-dlq", "decode", "field 'temp': expected a number, got NaN")
    s = scrape()
    labels = {"flow": "t-dlq", "step": "decode"}
    assert sample(s, "vigil_dead_letters_total", **labels, field="temp") == 2
    assert sample(s, "vigil_dead_letters_total", **labels, field="payload") == 1


def test_lag_gauge_is_set_at_most_once_per_interval() -> None:
    slow = LagGauge("t-lag-slow", 0, interval_s=3600.0)
    assert [slow.due() for _ in range(3)] == [True, False, False]
    fast = LagGauge("t-lag-fast", 1, interval_s=0.0)
    assert [fast.due() for _ in range(3)] == [True, True, True]
    fast.set(17)
    assert sample(scrape(), "vigil_consumer_lag_messages", topic="t-lag-fast", partition="1") == 17


class FakeConsumer:
    """A consumer with nothing new to read and a given cached high watermark."""

    def __init__(self, high: int) -> None:
        self.high = high
        self.watermark_calls: list[dict[str, Any]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return []

    def get_watermark_offsets(self, tp: TopicPartition, **kwargs: Any) -> tuple[int, int]:
        self.watermark_calls.append({"partition": tp.partition, **kwargs})
        if self.high == -1:
            raise KafkaException("unknown partition")
        return (0, self.high) if self.high >= 0 else (-1001, -1001)


def partition(
    consumer: FakeConsumer, topic: str, next_offset: int, lag: LagGauge
) -> _KafkaPartition:
    errors = _ClientErrors(topic)
    return _KafkaPartition(consumer, errors, topic, 3, next_offset, None, 10, lag)  # type: ignore[arg-type]


def test_the_kafka_source_sets_lag_from_cached_watermarks_only() -> None:
    consumer = FakeConsumer(high=100)
    part = partition(consumer, "t-lag-src", 40, LagGauge("t-lag-src", 3, interval_s=0.0))
    assert part.next_batch() == []
    assert sample(scrape(), "vigil_consumer_lag_messages", topic="t-lag-src", partition="3") == 60
    # Never a request to the broker: only the watermarks librdkafka already holds.
    assert consumer.watermark_calls == [{"partition": 3, "cached": True}]


def test_the_kafka_source_asks_for_watermarks_at_most_once_per_interval() -> None:
    consumer = FakeConsumer(high=100)
    part = partition(consumer, "t-lag-rate", 0, LagGauge("t-lag-rate", 3, interval_s=3600.0))
    for _ in range(50):
        part.next_batch()
    assert len(consumer.watermark_calls) == 1


@pytest.mark.parametrize(("high", "topic"), [(-1001, "t-lag-unknown"), (-1, "t-lag-error")])
def test_unknown_watermarks_leave_the_lag_as_it_was(high: int, topic: str) -> None:
    lag = LagGauge(topic, 3, interval_s=0.0)
    lag.set(7)
    part = partition(FakeConsumer(high=high), topic, 5, lag)
    assert part.next_batch() == []
    assert sample(scrape(), "vigil_consumer_lag_messages", topic=topic, partition="3") == 7


def test_a_full_step_id_counts_under_the_steps_own_name() -> None:
    observe_step("t-nested", "t-nested.score_shards.detect", 4, 4, 0.001)
    s = scrape()
    assert sample(s, "vigil_events_total", flow="t-nested", step="detect") == 4
    assert (
        sample(s, "vigil_events_total", flow="t-nested", step="t-nested.score_shards.detect")
        is None
    )
