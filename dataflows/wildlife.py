"""Bear heart rate through hibernation: readings -> decode -> window model -> alert -> sinks.

Run with ``python -m bytewax.run dataflows.wildlife``. Each bear's heart rate
(4 readings a day) is scored by the LSTM autoencoder trained in the project
(:mod:`operators.models.train_bears`, shipped as ``operators/models/bears_lstm_ae.onnx``)
over its last 30 readings: the reconstruction error, calibrated per bear as an
upper-tail probability against the bear's own recent errors
(:class:`operators.windowmodel.ErrorCalibrator`), then the project's alert
policy. A gap in the readings (missing days) is scored too.

With no broker configured the flow reads its own simulator in-process
(:mod:`generators.bears`) and writes ``vigil-out/wildlife-alerts.jsonl``,
``vigil-out/wildlife-dead-letters.jsonl`` and ``vigil-out/wildlife.rrd``; with
``VIGIL_KAFKA_BROKERS`` set it reads the ``bears`` topic (``vigil-generate bears``) and
writes the ``bear-alerts`` and ``bears-dlq`` topics. Every setting is a ``VIGIL_*``
environment variable (see :class:`Config` and the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from generators.bears import BearSimConfig
from generators.source import SimulatorSource
from operators.alerting import AlertPolicy
from operators.config import Env, configure_logging
from operators.embedding import MODELS_DIR
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
from operators.serde import BEARS
from operators.sinks.rerun import RerunConfig, ViewLabels
from operators.windowmodel import WindowModel

FLOW_NAME = "wildlife"
APPLICATION_ID = "vigil-wildlife"
VIEW = ViewLabels(
    entity="heart_rate", quantity="Heart rate (bpm)", unit="bpm", noun="bear", cloud=False
)
FILE_PREFIX = "wildlife-"
MODEL_NAME = "bears-lstm-ae"
MODEL_RECORD = MODELS_DIR / "bears_lstm_ae.json"


def load_model(record: Path = MODEL_RECORD, threads: int = 1) -> WindowModel:
    """The shipped bear autoencoder (or another with the same record format)."""
    return WindowModel.from_record(MODEL_NAME, record, threads=threads)


def _kafka_defaults() -> KafkaConfig:
    return KafkaConfig(topic="bears", alerts_topic="bear-alerts", dlq_topic="bears-dlq")


def _rerun_defaults() -> RerunConfig:
    return RerunConfig.recording(Path("vigil-out/wildlife.rrd"), APPLICATION_ID, VIEW)


@dataclass(frozen=True)
class Config:
    """Everything the wildlife flow can be told.

    Attributes:
        kafka: Broker settings; no brokers means the embedded simulator.
        sim: The embedded simulator's settings.
        sim_partitions: Source partitions of the embedded simulator.
        sim_rate: Events per second offered by the simulator (0: unpaced).
        batch_size: Messages per source micro-batch.
        model_record: The window model's training record (its ``.onnx`` beside it).
        policy: The alert policy.
        out_dir: Directory of the embedded mode's files.
        rerun: Where the Rerun view goes.
        log_level: Level of the flow's log lines.

    """

    kafka: KafkaConfig = field(default_factory=_kafka_defaults)
    sim: BearSimConfig = field(default_factory=BearSimConfig)
    sim_partitions: int = 2
    sim_rate: float = 0.0
    batch_size: int = 1000
    model_record: Path = MODEL_RECORD
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    out_dir: Path = Path("vigil-out")
    rerun: RerunConfig = field(default_factory=_rerun_defaults)
    log_level: str = "INFO"

    @property
    def embedded(self) -> bool:
        """True when no broker is configured."""
        return not self.kafka.brokers

    @classmethod
    def from_env(cls, env: Env | None = None) -> Config:
        """Read ``VIGIL_*`` variables; see the README for the list.

        Raises:
            ConfigError: naming the variable at fault.

        Example:
            >>> cfg = Config.from_env(Env({"VIGIL_SIM_BEARS": "3"}))
            >>> cfg.sim.bears, cfg.kafka.topic, cfg.model_record.name
            (3, 'bears', 'bears_lstm_ae.json')

        """
        env = env or Env()
        defaults = cls()
        kafka = KafkaConfig.from_env(
            env,
            topic=defaults.kafka.topic,
            alerts_topic=defaults.kafka.alerts_topic,
            dlq_topic=defaults.kafka.dlq_topic,
        )
        out_dir = env.path("OUT_DIR", defaults.out_dir)
        cfg = cls(
            kafka=kafka,
            sim=BearSimConfig.from_env(env),
            sim_partitions=env.integer("SIM_PARTITIONS", defaults.sim_partitions, min_value=1),
            sim_rate=env.number("SIM_RATE", defaults.sim_rate),
            batch_size=env.integer("BATCH_SIZE", defaults.batch_size, min_value=1),
            model_record=env.path("MODEL_RECORD", defaults.model_record),
            policy=policy_from_env(env, defaults.policy),
            out_dir=out_dir,
            rerun=RerunConfig.from_env(
                env, out_dir / "wildlife.rrd", application_id=APPLICATION_ID, labels=VIEW
            ),
            log_level=env.choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR"]),
        )
        check_settings(env, FLOW_NAME, 0.0, 1.0, cfg.sim_rate)  # no fixed normalizer here
        return cfg


def default_source(cfg: Config) -> Source[RawBatch]:
    """Kafka when brokers are configured, else the in-process simulator."""
    if cfg.embedded:
        return SimulatorSource(
            cfg.sim, partitions=cfg.sim_partitions, batch_size=cfg.batch_size, rate=cfg.sim_rate
        )
    return kafka_source(cfg.kafka, cfg.batch_size)


def build_flow(
    cfg: Config, *, source: Source[RawBatch] | None = None, sinks: Sinks | None = None
) -> Dataflow:
    """Wire the wildlife dataflow. Loads the model's record; opens no connection.

    Args:
        cfg: The settings.
        source: Raw message batches (default: Kafka or the simulator).
        sinks: Outputs (default: Kafka topics or files, and Rerun).

    """
    flow = Dataflow(FLOW_NAME)
    wire(
        flow,
        source or default_source(cfg),
        sinks or default_sinks(cfg.kafka, cfg.out_dir, cfg.rerun, FILE_PREFIX),
        make_normalizer=lambda: make_normalizer("robust"),
        detect=WindowDetect(load_model(cfg.model_record)),
        policy=cfg.policy,
        fmt=BEARS,
    )
    return flow


_config = Config.from_env()
configure_logging(_config.log_level)
flow = build_flow(_config)
