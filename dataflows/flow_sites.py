"""Sewer flow sites: five-channel readings -> decode -> window model -> alert -> sinks.

Run with ``python -m bytewax.run dataflows.flow_sites``. Each site's readings
(velocity, flow, level, water temperature, rainfall, every 5 minutes) are scored
by a model trained in the project (:mod:`operators.models.train_flowsites`) over
the site's last 50 readings: the window classifier's probability
(``VIGIL_MODEL=classifier``, the default) or the autoencoder's reconstruction
error (``autoencoder``), calibrated per site as an upper-tail probability against
the site's own recent outputs (:class:`operators.windowmodel.ErrorCalibrator`),
then the project's alert policy. Gaps in the readings (dropouts) are scored too.

With no broker configured the flow reads its own simulator in-process
(:mod:`generators.flowsites`) and writes ``vigil-out/flow-sites-alerts.jsonl``,
``vigil-out/flow-sites-dead-letters.jsonl`` and ``vigil-out/flow_sites.rrd``;
with ``VIGIL_KAFKA_BROKERS`` set it reads the ``flow-sites`` topic and writes the
``flow-site-alerts`` and ``flow-sites-dlq`` topics. Every setting is a
``VIGIL_*`` environment variable (see :class:`Config` and the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from generators.flowsites import FlowSiteConfig
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
from operators.serde import WireFormat
from operators.sinks.rerun import RerunConfig, ViewLabels
from operators.sitereading import SITES, decode_site_reading
from operators.windowmodel import WindowModel

FLOW_NAME = "flow_sites"
APPLICATION_ID = "vigil-flow-sites"
VIEW = ViewLabels(entity="flow", quantity="Flow (L/s)", unit="L/s", noun="site")
FILE_PREFIX = "flow-sites-"
#: The shipped models, by ``VIGIL_MODEL`` name: (detector name, training record).
MODELS = {
    "classifier": ("flowsites-classifier", MODELS_DIR / "flowsites_classifier.json"),
    "autoencoder": ("flowsites-ae", MODELS_DIR / "flowsites_ae.json"),
}


def site_fields(
    key: bytes | None, value: bytes | None
) -> tuple[str, int, tuple[float, ...], str | None]:
    """``(site, ts_ms, channels, label)`` of one message (:func:`decode_site_reading`)."""
    r = decode_site_reading(key, value)
    return r.site_id, r.ts_ms, r.values, r.label


#: The wire format: five channels, flow (channel 1) stands for the reading.
FORMAT = WireFormat(SITES.series_field, "flow", channels=site_fields, primary=1)


def load_model(
    name: str = "classifier", record: Path | None = None, threads: int = 1
) -> WindowModel:
    """A shipped flow-site model by name (or another model's record under that name)."""
    detector, shipped = MODELS[name]
    return WindowModel.from_record(detector, record or shipped, threads=threads)


def _kafka_defaults() -> KafkaConfig:
    return KafkaConfig(
        topic="flow-sites", alerts_topic="flow-site-alerts", dlq_topic="flow-sites-dlq"
    )


def _rerun_defaults() -> RerunConfig:
    return RerunConfig.recording(Path("vigil-out/flow_sites.rrd"), APPLICATION_ID, VIEW)


@dataclass(frozen=True)
class Config:
    """Everything the flow-sites flow can be told.

    Attributes:
        kafka: Broker settings; no brokers means the embedded simulator.
        sim: The embedded simulator's settings.
        sim_partitions: Source partitions of the embedded simulator.
        sim_rate: Events per second offered by the simulator (0: unpaced).
        batch_size: Messages per source micro-batch.
        model: ``classifier`` or ``autoencoder`` (:data:`MODELS`).
        model_record: Another model's training record (its ``.onnx`` beside it).
        policy: The alert policy.
        out_dir: Directory of the embedded mode's files.
        rerun: Where the Rerun view goes.
        log_level: Level of the flow's log lines.

    """

    kafka: KafkaConfig = field(default_factory=_kafka_defaults)
    sim: FlowSiteConfig = field(default_factory=FlowSiteConfig)
    sim_partitions: int = 3  # crc32 puts every default site id in one partition of 2
    sim_rate: float = 0.0
    batch_size: int = 1000
    model: str = "classifier"
    model_record: Path | None = None
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
            >>> cfg = Config.from_env(Env({"VIGIL_MODEL": "autoencoder"}))
            >>> cfg.model, cfg.kafka.topic
            ('autoencoder', 'flow-sites')

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
            sim=FlowSiteConfig.from_env(env),
            sim_partitions=env.integer("SIM_PARTITIONS", defaults.sim_partitions, min_value=1),
            sim_rate=env.number("SIM_RATE", defaults.sim_rate),
            batch_size=env.integer("BATCH_SIZE", defaults.batch_size, min_value=1),
            model=env.choice("MODEL", defaults.model, sorted(MODELS)),
            model_record=None if (raw := env.raw("MODEL_RECORD")) is None else Path(raw),
            policy=policy_from_env(env, defaults.policy),
            out_dir=out_dir,
            rerun=RerunConfig.from_env(
                env, out_dir / "flow_sites.rrd", application_id=APPLICATION_ID, labels=VIEW
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
    """Wire the flow-sites dataflow. Loads the model's record; opens no connection.

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
        detect=WindowDetect(load_model(cfg.model, cfg.model_record)),
        policy=cfg.policy,
        fmt=FORMAT,
    )
    return flow


_config = Config.from_env()
configure_logging(_config.log_level)
flow = build_flow(_config)
