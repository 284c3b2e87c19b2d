"""The sensors flow killed twice mid-stream and resumed from its recovery store loses nothing.

Readings (with malformed messages among them) are offered to a 4-partition
topic at a paced rate while ``python -m bytewax.run dataflows.sensors -r STORE``
follows it. The flow is SIGKILLed twice, at different points of the stream and
each time only after it has committed a snapshot of its own, and restarted on
the same store; after the feed ends, the last restart runs to the end of the
topic (``VIGIL_KAFKA_TAIL=false``). A separate run without recovery over the
same topic is the reference. After de-duplication by alert id (dead letters:
by partition, offset and step) the outputs must equal the reference's byte for
byte: no reading lost or scored twice into state, every detector, normalizer
and policy state restored. The killed runs tail the topic (a killed run never
reaches the end anyway); the feed holds back its last part until the second
kill, so both kills fall mid-stream on any machine.

The duplicates the kills cause are logged; to see them::

    .venv/bin/pytest tests/integration/test_recovery_kafka.py -o log_cli=true --log-cli-level=INFO
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from generators.sensors import SensorSimConfig
from tests.integration.flowproc import (
    Feeder,
    FlowRun,
    TopicWatch,
    alerts_by_id,
    dead_letters_by_origin,
    fill,
    init_recovery,
    sensor_messages,
    sensors_env,
    snapshot_committed,
)
from tests.integration.kafka_broker import MockKafkaBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

logger = logging.getLogger(__name__)

FLOW = "dataflows.sensors"
PARTITIONS = 4
SIM = SensorSimConfig(count=120_000, sensors=10, seed=23)
MALFORMED_EVERY = 997
#: Messages per second offered while the flow runs.
RATE = 12_000.0
#: Part of the messages offered before the second kill; the rest comes after it.
HELD_BACK = 0.15
#: How far into the stream's event time the alerts have come at each kill.
KILL_AT = (0.3, 0.7)
#: Seconds to wait for a flow to start, for a kill point, for a run to end.
START_S, KILL_WAIT_S, RUN_S = 90.0, 90.0, 120.0


def progress(values: list[bytes]) -> float:
    """How far the flow has come: the latest alert's event time, as a part of the stream's."""
    if not values:
        return 0.0
    span = SIM.count / SIM.sensors * SIM.interval_s
    latest = max(datetime.fromisoformat(orjson.loads(v)["ts"]) for v in values)
    return (latest - SIM.start).total_seconds() / span


def kill_point(at: float, store: Path) -> Callable[[list[bytes]], bool]:
    """Alerts have come ``at`` into the stream and the running flow has committed a snapshot."""
    return lambda values: progress(values) >= at and snapshot_committed(store)


def test_flow_killed_twice_gives_the_outputs_of_an_uninterrupted_run(
    kafka_broker: MockKafkaBroker, tmp_path: Path
) -> None:
    broker = kafka_broker
    topic, alerts, dlq = "recovery-sensors", "recovery-alerts", "recovery-dlq"
    broker.create_topic(topic, PARTITIONS)
    for name in (alerts, dlq, "recovery-ref-alerts", "recovery-ref-dlq"):
        broker.create_topic(name, 1)
    messages = sensor_messages(SIM, PARTITIONS, malformed_every=MALFORMED_EVERY)
    malformed = len(messages) - SIM.count
    cut = round(len(messages) * (1 - HELD_BACK))
    store = init_recovery(tmp_path / "recovery")

    def start(name: str, *, tail: bool) -> FlowRun:
        env = sensors_env(broker.bootstrap, topic, alerts, dlq, tail=tail)
        run = FlowRun.start(FLOW, env, tmp_path, name, recovery=store, snapshot_s=1)
        run.wait_reading(PARTITIONS, START_S)
        return run

    feeder = Feeder(broker.bootstrap, topic, messages[:cut], RATE)
    watch = TopicWatch(broker.bootstrap, alerts)
    runs: list[FlowRun] = []
    try:
        runs.append(start("run0", tail=True))
        feeder.start()
        for i, at in enumerate(KILL_AT):
            run = runs[-1]
            watch.wait_for(kill_point(at, store), KILL_WAIT_S, run, f"kill {i + 1} at {at:.0%}")
            run.kill()
            logger.info(
                "kill %d: alerts up to %.0f%% of the stream", i + 1, 100 * progress(watch.values)
            )
            if i + 1 < len(KILL_AT):
                runs.append(start(f"run{i + 1}", tail=True))
        feeder.finish(RUN_S)
        fill(broker.bootstrap, topic, messages[cut:])
        runs.append(start(f"run{len(KILL_AT)}", tail=False))
        runs[-1].wait(RUN_S)
    finally:
        feeder.stop()
        watch.close()
        for run in runs:
            run.kill()

    ref_env = sensors_env(
        broker.bootstrap, topic, "recovery-ref-alerts", "recovery-ref-dlq", tail=False
    )
    FlowRun.start(FLOW, ref_env, tmp_path, "reference").wait(RUN_S)

    # Each restart resumed from a snapshot its predecessor committed, not from the start.
    resumed = [sum(run.read_from().values()) for run in runs]
    assert resumed[0] == 0
    assert 0 < resumed[1] < resumed[2] < len(messages), resumed

    got_alerts, got_dead = broker.read_topic(alerts), broker.read_topic(dlq)
    ref_alerts = broker.read_topic("recovery-ref-alerts")
    ref_dead = broker.read_topic("recovery-ref-dlq")
    reference = alerts_by_id(ref_alerts)
    assert len(reference) == len(ref_alerts) > 300  # one record per alert without kills

    alerts_seen = alerts_by_id(got_alerts)
    assert alerts_seen.keys() == reference.keys()
    assert alerts_seen == reference  # same contents: the restored state scored alike

    dead_seen, dead_ref = dead_letters_by_origin(got_dead), dead_letters_by_origin(ref_dead)
    assert len(dead_ref) == len(ref_dead) == malformed
    assert dead_seen == dead_ref
    assert {step for _p, _o, step in dead_ref} == {"decode", "normalize"}

    logger.info(
        "%d kills: %d alerts (%d records, %d duplicates), %d dead letters (%d duplicates); "
        "restarts resumed at offsets %s",
        len(KILL_AT),
        len(reference),
        len(got_alerts),
        len(got_alerts) - len(alerts_seen),
        len(dead_ref),
        len(got_dead) - len(dead_seen),
        resumed,
    )
