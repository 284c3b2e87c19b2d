"""What the trained-model flows share: identity, common settings, source and wiring.

A model flow (``dataflows/wildlife.py``, ``dataflows/flow_sites.py``) is a
:class:`FlowIdentity` (name, topics, view), its simulator's settings, the model to
load, and :class:`CommonSettings` read from the same ``VIGIL_*`` variables as the
other flows. :func:`build_model_flow` wires it with :func:`operators.flowkit.wire`
and a :class:`~operators.flowkit.WindowDetect` step.

Example:
    >>> ident = FlowIdentity("demo", "vigil-demo", ViewLabels(), "demo-", "in", "out", "dlq")
    >>> common = CommonSettings.from_env(Env({"VIGIL_BATCH_SIZE": "50"}), ident)
    >>> common.batch_size, common.kafka.topic, common.embedded, common.rerun.path.name
    (50, 'in', True, 'demo.rrd')

"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from generators.source import SimulatorSource
from operators.alerting import AlertPolicy
from operators.config import Env
from operators.events import RawBatch
from operators.flowkit import (
    KafkaConfig,
    Sinks,
    WindowDetect,
    check_settings,
    default_sinks,
    kafka_source,
    policy_from_env,
    wire,
)
from operators.normalize import make_normalizer
from operators.serde import WireFormat
from operators.sinks.rerun import RerunConfig, ViewLabels
from operators.windowmodel import WindowModel

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


@dataclass(frozen=True)
class FlowIdentity:
    """A model flow's name, Rerun application and view, file prefix and default topics."""

    name: str
    application_id: str
    view: ViewLabels
    file_prefix: str
    topic: str
    alerts_topic: str
    dlq_topic: str

    @property
    def recording(self) -> str:
        """File name of the embedded mode's Rerun recording."""
        return f"{self.name}.rrd"


@dataclass(frozen=True)
class CommonSettings:
    """The settings every model flow reads the same way (see the README's configuration).

    Attributes:
        kafka: Broker settings; no brokers means the embedded simulator.
        sim_partitions: Source partitions of the embedded simulator.
        sim_rate: Events per second offered by the simulator (0: unpaced).
        batch_size: Messages per source micro-batch.
        policy: The alert policy.
        out_dir: Directory of the embedded mode's files.
        rerun: Where the Rerun view goes.
        log_level: Level of the flow's log lines.

    """

    kafka: KafkaConfig
    sim_partitions: int
    sim_rate: float
    batch_size: int
    policy: AlertPolicy
    out_dir: Path
    rerun: RerunConfig
    log_level: str

    @property
    def embedded(self) -> bool:
        """True when no broker is configured."""
        return not self.kafka.brokers

    @classmethod
    def defaults(cls, ident: FlowIdentity, sim_partitions: int = 2) -> CommonSettings:
        """The settings with no variable set."""
        return cls.from_env(Env({}), ident, sim_partitions)

    @classmethod
    def from_env(cls, env: Env, ident: FlowIdentity, sim_partitions: int = 2) -> CommonSettings:
        """Read the shared ``VIGIL_*`` variables (the flow's own ones are its business).

        Raises:
            ConfigError: naming the variable at fault.

        """
        out_dir = env.path("OUT_DIR", Path("vigil-out"))
        common = cls(
            kafka=KafkaConfig.from_env(
                env, topic=ident.topic, alerts_topic=ident.alerts_topic, dlq_topic=ident.dlq_topic
            ),
            sim_partitions=env.integer("SIM_PARTITIONS", sim_partitions, min_value=1),
            sim_rate=env.number("SIM_RATE", 0.0),
            batch_size=env.integer("BATCH_SIZE", 1000, min_value=1),
            policy=policy_from_env(env, AlertPolicy()),
            out_dir=out_dir,
            rerun=RerunConfig.from_env(
                env,
                out_dir / ident.recording,
                application_id=ident.application_id,
                labels=ident.view,
            ),
            log_level=env.choice("LOG_LEVEL", "INFO", LOG_LEVELS),
        )
        check_settings(env, ident.name, 0.0, 1.0, common.sim_rate)  # no fixed normalizer here
        return common


def default_source(common: CommonSettings, sim: Any) -> Source[RawBatch]:
    """Kafka when brokers are configured, else the simulator ``sim`` in-process."""
    if common.embedded:
        return SimulatorSource(
            sim,
            partitions=common.sim_partitions,
            batch_size=common.batch_size,
            rate=common.sim_rate,
        )
    return kafka_source(common.kafka, common.batch_size)


def build_model_flow(
    ident: FlowIdentity,
    common: CommonSettings,
    model: WindowModel,
    fmt: WireFormat,
    source: Source[RawBatch],
    sinks: Sinks | None = None,
) -> Dataflow:
    """Wire a model flow. Opens no connection.

    Args:
        ident: The flow's identity.
        common: The shared settings.
        model: The window model.
        fmt: The wire format (with ``channels`` for multi-channel readings).
        source: Raw message batches.
        sinks: Outputs (default: Kafka topics or files, and Rerun).

    """
    flow = Dataflow(ident.name)
    wire(
        flow,
        source,
        sinks or default_sinks(common.kafka, common.out_dir, common.rerun, ident.file_prefix),
        make_normalizer=lambda: make_normalizer("robust"),
        detect=WindowDetect(model),
        policy=common.policy,
        fmt=fmt,
    )
    return flow
