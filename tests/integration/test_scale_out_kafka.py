"""The sensors flow spread over processes or workers gives exactly the outputs of one process.

One 4-partition topic of readings (with malformed messages among them) is read
by ``python -m bytewax.run dataflows.sensors`` as one process of one worker, as
two processes (``-i 0|1 -a "addr0;addr1"``) and as one process of two workers
(``-w 2``). Every run must write the same alerts and dead letters, byte for
byte, each exactly once: a series' state lives with one worker whichever
worker reads its partition. A flow that stopped as one process and resumes
from its recovery store as two (stop-start rescaling) must continue exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from generators.sensors import SensorSimConfig
from tests.integration.flowproc import (
    FlowRun,
    Message,
    Origin,
    alerts_by_id,
    dead_letters_by_origin,
    fill,
    init_recovery,
    sensor_messages,
    sensors_env,
)
from tests.integration.kafka_broker import MockKafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

FLOW = "dataflows.sensors"
TOPIC = "scale-sensors"
PARTITIONS = 4
SIM = SensorSimConfig(count=100_000, sensors=10, seed=31)
MALFORMED_EVERY = 499
RUN_S = 120.0


@dataclass(frozen=True)
class Outputs:
    """What one run wrote, and which partitions each of its processes read."""

    alerts: dict[bytes, bytes]
    dead: dict[Origin, bytes]
    read_by: list[set[int]]


def run_flow(
    broker: MockKafkaBroker,
    work: Path,
    name: str,
    *,
    topic: str = TOPIC,
    out: str | None = None,
    processes: int = 1,
    workers: int = 1,
    recovery: Path | None = None,
) -> FlowRun:
    """Run the flow to the end of ``topic``, writing ``<out>-alerts`` and ``<out>-dlq``.

    ``out`` defaults to ``name``, which names the log files.
    """
    out = out or name
    env = sensors_env(broker.bootstrap, topic, f"{out}-alerts", f"{out}-dlq", tail=False)
    run = FlowRun.start(
        FLOW, env, work, name, processes=processes, workers=workers, recovery=recovery
    )
    run.wait(RUN_S)
    return run


def create_outputs(broker: MockKafkaBroker, name: str) -> None:
    """The alerts and dead-letter topics of the runs named ``name``."""
    broker.create_topic(f"{name}-alerts", 1)
    broker.create_topic(f"{name}-dlq", 1)


def outputs(broker: MockKafkaBroker, name: str, run: FlowRun) -> Outputs:
    """What the runs named ``name`` wrote (each record must be there once) and who read what."""
    alert_records = broker.read_topic(f"{name}-alerts")
    dead_records = broker.read_topic(f"{name}-dlq")
    out = Outputs(
        alerts_by_id(alert_records),
        dead_letters_by_origin(dead_records),
        [set(run.read_from(i)) for i in range(len(run.procs))],
    )
    assert len(out.alerts) == len(alert_records)
    assert len(out.dead) == len(dead_records)
    return out


def without_origin(dead: dict[Origin, bytes]) -> dict[Origin, dict[str, object]]:
    """Dead letters without the name of the topic they came from."""
    return {k: {**orjson.loads(v), "origin": None} for k, v in dead.items()}


@pytest.fixture(scope="module")
def messages() -> list[Message]:
    """The input: readings of 10 sensors with malformed messages among them."""
    return sensor_messages(SIM, PARTITIONS, malformed_every=MALFORMED_EVERY)


@pytest.fixture(scope="module")
def one_process(
    kafka_broker: MockKafkaBroker,
    tmp_path_factory: pytest.TempPathFactory,
    messages: list[Message],
) -> Outputs:
    """Fill the topic, then run the flow as one process of one worker."""
    kafka_broker.create_topic(TOPIC, PARTITIONS)
    fill(kafka_broker.bootstrap, TOPIC, messages)
    create_outputs(kafka_broker, "scale-one")
    run = run_flow(kafka_broker, tmp_path_factory.mktemp("scale-one"), "scale-one")
    out = outputs(kafka_broker, "scale-one", run)
    assert len(out.alerts) > 300
    assert len(out.dead) == len(messages) - SIM.count
    return out


def test_two_processes_give_the_outputs_of_one(
    one_process: Outputs, kafka_broker: MockKafkaBroker, tmp_path: Path
) -> None:
    create_outputs(kafka_broker, "scale-two")
    run = run_flow(kafka_broker, tmp_path, "scale-two", processes=2)
    two = outputs(kafka_broker, "scale-two", run)
    # Each process read two of the partitions, none read twice.
    assert [len(parts) for parts in two.read_by] == [2, 2]
    assert two.read_by[0] | two.read_by[1] == set(range(PARTITIONS))
    assert two.alerts == one_process.alerts
    assert two.dead == one_process.dead


def test_two_workers_give_the_outputs_of_one(
    one_process: Outputs, kafka_broker: MockKafkaBroker, tmp_path: Path
) -> None:
    create_outputs(kafka_broker, "scale-workers")
    run = run_flow(kafka_broker, tmp_path, "scale-workers", workers=2)
    two = outputs(kafka_broker, "scale-workers", run)
    assert two.read_by == [set(range(PARTITIONS))]
    assert two.alerts == one_process.alerts
    assert two.dead == one_process.dead


def test_one_process_resumed_as_two_continues_where_it_stopped(
    one_process: Outputs, kafka_broker: MockKafkaBroker, tmp_path: Path, messages: list[Message]
) -> None:
    """The first half of the topic read by one process, the rest by two, on one store."""
    topic, name = "rescale-sensors", "rescale"
    kafka_broker.create_topic(topic, PARTITIONS)
    create_outputs(kafka_broker, name)
    store = init_recovery(tmp_path / "recovery", 2)
    half = len(messages) // 2
    fill(kafka_broker.bootstrap, topic, messages[:half])
    first = run_flow(kafka_broker, tmp_path, "first", topic=topic, out=name, recovery=store)
    fill(kafka_broker.bootstrap, topic, messages[half:])
    second = run_flow(
        kafka_broker, tmp_path, "second", topic=topic, out=name, processes=2, recovery=store
    )

    assert set(first.read_from().values()) == {0}
    resumed = second.read_from()
    assert sorted(resumed) == list(range(PARTITIONS))
    assert sum(resumed.values()) == half  # each partition resumed at its end in the first run
    out = outputs(kafka_broker, name, second)
    assert out.alerts == one_process.alerts
    assert without_origin(out.dead) == without_origin(one_process.dead)
