"""Warehouse temperature sensors: readings -> decode -> normalize -> detect -> alert -> sinks.

Run with ``python -m bytewax.run dataflows.sensors``. With no broker configured
the flow reads its own simulator in-process and writes alerts, dead letters
and a Rerun recording under ``vigil-out/``; with ``VIGIL_KAFKA_BROKERS`` set it
reads the ``sensors`` topic and writes the ``alerts`` and dead-letter topics.
Every setting is a ``VIGIL_*`` environment variable (see :class:`Config` and
the README).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from generators.sensors import SensorSimConfig
from generators.source import SimulatorSource
from operators import steps
from operators.alerting import AlertPolicy
from operators.config import ConfigError, Env, configure_logging
from operators.detectors import DEFAULT_DETECTOR, DETECTORS
from operators.events import DeadLetter, RawBatch, ScoredBatch
from operators.normalize import NORMALIZERS, Normalizer, make_normalizer
from operators.records import alert_message, dead_letter_message
from operators.sinks.files import JsonlSink
from operators.sinks.kafka import KafkaBytesSink
from operators.sinks.rerun import RerunConfig, RerunSink
from operators.sources.kafka import KafkaBatchSource

logger = logging.getLogger(__name__)

FLOW_NAME = "sensors"
Message = tuple[bytes | None, bytes]


@dataclass(frozen=True)
class KafkaConfig:
    """Where the flow reads and writes when a broker is configured.

    Attributes:
        brokers: ``host:port`` of the bootstrap brokers (empty: embedded mode).
        topic: Input topic.
        start: Where to start when there is no recovery state.
        tail: Keep waiting for new messages at the end of the topic.
        alerts_topic: Topic of alert records.
        dlq_topic: Topic of dead-letter records.
        extra: Extra librdkafka settings (SASL, TLS) for every client.

    """

    brokers: tuple[str, ...] = ()
    topic: str = "sensors"
    start: Literal["beginning", "end"] = "beginning"
    tail: bool = True
    alerts_topic: str = "alerts"
    dlq_topic: str = "sensors-dlq"
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """Everything the sensors flow can be told.

    Attributes:
        kafka: Broker settings; no brokers means the embedded simulator.
        sim: The embedded simulator's settings.
        sim_partitions: Source partitions of the embedded simulator.
        sim_rate: Events per second offered by the simulator (0: unpaced).
        batch_size: Messages per source micro-batch.
        normalizer: ``fixed``, ``minmax`` or ``robust``.
        fixed_lo: Lower bound of the fixed normalizer.
        fixed_hi: Upper bound of the fixed normalizer.
        detect: Value detector and extra features.
        policy: The alert policy.
        out_dir: Directory of the embedded mode's files.
        rerun: Where the Rerun view goes.
        log_level: Level of the flow's log lines (progress, summaries).

    """

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    sim: SensorSimConfig = field(default_factory=SensorSimConfig)
    sim_partitions: int = 4
    sim_rate: float = 0.0
    batch_size: int = 1000
    normalizer: str = "fixed"
    fixed_lo: float = 21.0
    fixed_hi: float = 85.0
    detect: steps.DetectConfig = field(default_factory=lambda: steps.DetectConfig(DEFAULT_DETECTOR))
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
        brokers = tuple(env.items("KAFKA_BROKERS", []))
        kafka = KafkaConfig(
            brokers=brokers,
            topic=env.text("KAFKA_TOPIC", "sensors"),
            start=env.choice("KAFKA_START", "beginning", ["beginning", "end"]),
            tail=env.flag("KAFKA_TAIL", True),
            alerts_topic=env.text("KAFKA_ALERTS_TOPIC", "alerts"),
            dlq_topic=env.text("KAFKA_DLQ_TOPIC", "sensors-dlq"),
            extra=env.json_object("KAFKA_CONFIG"),
        )
        sim = SensorSimConfig.from_env(env, preset)
        features = env.items("FEATURES", ["value"] if original else ["value", "stuck", "gap"])
        unknown = set(features) - {"value", "stuck", "gap"}
        if "value" not in features or unknown:
            msg = f"VIGIL_FEATURES: expected 'value' plus any of stuck, gap; got {features}"
            raise ConfigError(msg)
        detector = env.choice(
            "DETECTOR", "hst-original" if original else DEFAULT_DETECTOR, sorted(DETECTORS)
        )
        policy = AlertPolicy(
            threshold=env.number("THRESHOLD", 0.7 if original else 0.999),
            critical=env.number("CRITICAL", 0.9 if original else 0.999999),
            persistence=env.integer("PERSISTENCE", 1, min_value=1),
            cooldown_s=env.number("COOLDOWN_S", 0.0 if original else 10.0),
        )
        try:
            policy.validate()
        except ValueError as exc:
            raise ConfigError(f"VIGIL_THRESHOLD/CRITICAL/PERSISTENCE/COOLDOWN_S: {exc}") from None
        out_dir = env.path("OUT_DIR", Path("vigil-out"))
        rerun = RerunConfig.from_env(env, default_path=out_dir / "sensors.rrd")
        cfg = cls(
            kafka=kafka,
            sim=sim,
            sim_partitions=env.integer("SIM_PARTITIONS", 4, min_value=1),
            sim_rate=env.number("SIM_RATE", 0.0),
            batch_size=env.integer("BATCH_SIZE", 1000, min_value=1),
            normalizer=env.choice("NORMALIZER", "fixed", sorted(NORMALIZERS)),
            fixed_lo=env.number("FIXED_LO", 21.0),
            fixed_hi=env.number("FIXED_HI", 85.0),
            detect=steps.DetectConfig(detector, stuck="stuck" in features, gap="gap" in features),
            policy=policy,
            out_dir=out_dir,
            rerun=rerun,
            log_level=env.choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR"]),
        )
        if cfg.fixed_hi <= cfg.fixed_lo:
            msg = f"VIGIL_FIXED_HI: expected > VIGIL_FIXED_LO={cfg.fixed_lo}, got {cfg.fixed_hi}"
            raise ConfigError(msg)
        if cfg.sim_rate < 0:
            raise ConfigError(f"VIGIL_SIM_RATE: expected >= 0 events/s, got {cfg.sim_rate}")
        for name in env.unknown():
            logger.warning("ignoring %s: not a setting of the %s flow", name, FLOW_NAME)
        return cfg


@dataclass(frozen=True)
class Sinks:
    """Where the flow's three outputs go (tests swap them for ``TestingSink``)."""

    alerts: Sink[Message]
    dead_letters: Sink[Message]
    view: Sink[ScoredBatch] | None


def default_source(cfg: Config) -> Source[RawBatch]:
    """Kafka when brokers are configured, else the in-process simulator."""
    if cfg.embedded:
        return SimulatorSource(
            cfg.sim, partitions=cfg.sim_partitions, batch_size=cfg.batch_size, rate=cfg.sim_rate
        )
    return KafkaBatchSource(
        list(cfg.kafka.brokers),
        cfg.kafka.topic,
        start=cfg.kafka.start,
        tail=cfg.kafka.tail,
        batch_size=cfg.batch_size,
        add_config=cfg.kafka.extra,
    )


def default_sinks(cfg: Config) -> Sinks:
    """Kafka topics (or JSONL files in embedded mode) and the Rerun view."""
    view = None if cfg.rerun.mode == "off" else RerunSink(cfg.rerun)
    if cfg.embedded:
        return Sinks(
            alerts=JsonlSink(cfg.out_dir / "alerts.jsonl"),
            dead_letters=JsonlSink(cfg.out_dir / "dead-letters.jsonl"),
            view=view,
        )
    kafka: Callable[[str], KafkaBytesSink] = partial(
        KafkaBytesSink, list(cfg.kafka.brokers), add_config=cfg.kafka.extra
    )
    return Sinks(
        alerts=kafka(cfg.kafka.alerts_topic),
        dead_letters=kafka(cfg.kafka.dlq_topic),
        view=view,
    )


def build_flow(
    cfg: Config, *, source: Source[RawBatch] | None = None, sinks: Sinks | None = None
) -> Dataflow:
    """Wire the sensors dataflow. Opens no connection and reads no file.

    Args:
        cfg: The settings.
        source: Raw message batches (default: Kafka or the simulator).
        sinks: Outputs (default: Kafka topics or files, and Rerun).

    """
    sinks = sinks or default_sinks(cfg)
    flow = Dataflow(FLOW_NAME)
    raw = op.input("input", flow, source or default_source(cfg))
    decoded = steps.decode("decode", raw, FLOW_NAME)
    normalized = steps.normalize("normalize", decoded.oks, cfg.make_normalizer, FLOW_NAME)
    detected = steps.detect("detect", normalized.oks, cfg.detect)
    scored = steps.alert("alert", detected, cfg.policy, FLOW_NAME)

    alerts = steps.alerts_of("alerts", scored)
    op.output("alerts_out", op.map("alert_message", alerts, alert_message), sinks.alerts)
    dead: Stream[DeadLetter] = op.merge("dead_letters", decoded.errs, normalized.errs)
    op.output(
        "dead_letters_out",
        op.map("dead_letter_message", dead, dead_letter_message),
        sinks.dead_letters,
    )
    if sinks.view is not None:
        op.output("view", scored, sinks.view)
    return flow


_config = Config.from_env()
configure_logging(_config.log_level)
flow = build_flow(_config)
