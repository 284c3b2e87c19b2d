"""Warehouse temperature sensors: readings -> decode -> normalize -> detect -> alert -> sinks.

Run with ``python -m bytewax.run dataflows.sensors``. With no broker configured
the flow reads its own simulator in-process and writes alerts, dead letters
and a Rerun recording under ``vigil-out/``; with ``VIGIL_KAFKA_BROKERS`` set it
reads the ``sensors`` topic and writes the ``alerts`` and dead-letter topics.
Every setting is a ``VIGIL_*`` environment variable (see :class:`Config` and
the README).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from generators.sensors import SensorSimConfig
from generators.source import SimulatorSource
from operators import steps
from operators.alerting import AlertPolicy
from operators.config import Env, configure_logging
from operators.detectors import DENSE_ANOMALY_DETECTOR
from operators.events import RawBatch
from operators.flowkit import (
    BATCH_SIZE,
    KafkaConfig,
    Sinks,
    check_settings,
    default_sinks,
    detect_from_env,
    kafka_source,
    policy_from_env,
    wire,
)
from operators.normalize import NORMALIZERS, Normalizer, make_normalizer
from operators.serde import SENSORS
from operators.shards import DEFAULT_SHARDS
from operators.sinks.rerun import RerunConfig

#: This flow's value detector unless ``VIGIL_DETECTOR`` says otherwise. The
#: project default (``context``) is built for rare anomalies; the warehouse
#: simulator spikes 5 % of the time, which the robust z-score catches and a
#: calibrated tail probability cannot (README, "Detection quality").
FLOW_DETECTOR = DENSE_ANOMALY_DETECTOR
#: Detector options of this flow unless ``VIGIL_DETECTOR_OPTIONS`` is set: the
#: median and MAD refreshed every 4 readings score as well on the simulator
#: (README, "Alert quality") for a quarter of the sorting.
FLOW_OPTIONS: dict[str, dict[str, Any]] = {"robust-z": {"stats_every": 4}}

FLOW_NAME = "sensors"


def _kafka_defaults() -> KafkaConfig:
    return KafkaConfig(topic="sensors", alerts_topic="alerts", dlq_topic="sensors-dlq")


@dataclass(frozen=True)
class Config:
    """Everything the sensors flow can be told.

    Attributes:
        kafka: Broker settings; no brokers means the embedded simulator.
        sim: The embedded simulator's settings.
        sim_partitions: Source partitions of the embedded simulator.
        sim_rate: Events per second offered by the simulator (0: unpaced).
        batch_size: Messages per source micro-batch.
        shards: Keys the series are spread over (:mod:`operators.shards`).
        normalizer: ``fixed``, ``minmax`` or ``robust``.
        fixed_lo: Lower bound of the fixed normalizer.
        fixed_hi: Upper bound of the fixed normalizer.
        detect: Value detector and extra features.
        policy: The alert policy.
        out_dir: Directory of the embedded mode's files.
        rerun: Where the Rerun view goes.
        log_level: Level of the flow's log lines (progress, summaries).

    """

    kafka: KafkaConfig = field(default_factory=_kafka_defaults)
    sim: SensorSimConfig = field(default_factory=SensorSimConfig)
    sim_partitions: int = 4
    sim_rate: float = 0.0
    batch_size: int = BATCH_SIZE
    shards: int = DEFAULT_SHARDS
    normalizer: str = "fixed"
    fixed_lo: float = 21.0
    fixed_hi: float = 85.0
    detect: steps.DetectConfig = field(
        default_factory=lambda: steps.DetectConfig(
            FLOW_DETECTOR, options=tuple(sorted(FLOW_OPTIONS[FLOW_DETECTOR].items()))
        )
    )
    policy: AlertPolicy = field(default_factory=AlertPolicy)
    out_dir: Path = Path("vigil-out")
    rerun: RerunConfig = field(default_factory=lambda: RerunConfig(mode="rrd"))
    log_level: str = "INFO"

    @property
    def embedded(self) -> bool:
        """True when no broker is configured."""
        return not self.kafka.brokers

    def make_normalizer(self) -> Normalizer:
        """A fresh normalizer for one series."""
        if self.normalizer == "fixed":
            return make_normalizer("fixed", lo=self.fixed_lo, hi=self.fixed_hi)
        return make_normalizer(self.normalizer)

    @classmethod
    def from_env(cls, env: Env | None = None) -> Config:
        """Read ``VIGIL_*`` variables; see the README for the list.

        ``VIGIL_PRESET=original`` selects the original pipeline's choices
        (HalfSpaceTrees 5/3/30 on values scaled with 21/85, anomaly when the
        score exceeds 0.7, no extra features) and the original simulator
        (uniform 21-28 °C, spikes only); other settings still override it.

        Raises:
            ConfigError: naming the variable at fault.

        """
        env = env or Env()
        preset = env.choice("PRESET", "default", ["default", "original"])
        original = preset == "original"
        defaults = _kafka_defaults()
        kafka = KafkaConfig.from_env(
            env,
            topic=defaults.topic,
            alerts_topic=defaults.alerts_topic,
            dlq_topic=defaults.dlq_topic,
        )
        sim = SensorSimConfig.from_env(env, preset)
        detect = detect_from_env(
            env,
            "hst-original" if original else FLOW_DETECTOR,
            ["value"] if original else ["value", "stuck", "gap"],
            FLOW_OPTIONS,
        )
        base = AlertPolicy(0.7, 0.9, 1, 0.0) if original else AlertPolicy()
        policy = policy_from_env(env, base)
        out_dir = env.path("OUT_DIR", Path("vigil-out"))
        rerun = RerunConfig.from_env(env, default_path=out_dir / "sensors.rrd")
        cfg = cls(
            kafka=kafka,
            sim=sim,
            sim_partitions=env.integer("SIM_PARTITIONS", 4, min_value=1),
            sim_rate=env.number("SIM_RATE", 0.0),
            batch_size=env.integer("BATCH_SIZE", BATCH_SIZE, min_value=1),
            shards=env.integer("SHARDS", DEFAULT_SHARDS, min_value=1),
            normalizer=env.choice("NORMALIZER", "fixed", sorted(NORMALIZERS)),
            fixed_lo=env.number("FIXED_LO", 21.0),
            fixed_hi=env.number("FIXED_HI", 85.0),
            detect=detect,
            policy=policy,
            out_dir=out_dir,
            rerun=rerun,
            log_level=env.choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR"]),
        )
        check_settings(env, FLOW_NAME, cfg.fixed_lo, cfg.fixed_hi, cfg.sim_rate)
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
    """Wire the sensors dataflow. Opens no connection and reads no file.

    Args:
        cfg: The settings.
        source: Raw message batches (default: Kafka or the simulator).
        sinks: Outputs (default: Kafka topics or files, and Rerun).

    """
    flow = Dataflow(FLOW_NAME)
    wire(
        flow,
        source or default_source(cfg),
        sinks or default_sinks(cfg.kafka, cfg.out_dir, cfg.rerun),
        make_normalizer=cfg.make_normalizer,
        detect=cfg.detect,
        policy=cfg.policy,
        fmt=SENSORS,
        shards=cfg.shards,
    )
    return flow


_config = Config.from_env()
configure_logging(_config.log_level)
flow = build_flow(_config)
