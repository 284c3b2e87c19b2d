"""Wiring every Vigil flow shares: Kafka settings, sinks, policy and detector settings, the steps.

A flow module (``dataflows/<use_case>.py``) keeps its own :class:`Config`
and defaults, and builds its dataflow with :func:`wire`::

    input -> decode -> normalize -> detect -> alert policy -> alerts, dead letters, view

Nothing here opens a connection or a file: sources and sinks connect when the
flow starts.

Example:
    >>> from operators.config import Env
    >>> kafka = KafkaConfig.from_env(Env({}), topic="raw-data", alerts_topic="anomalies",
    ...                              dlq_topic="raw-data-dlq")
    >>> kafka.topic, kafka.brokers, kafka.tail
    ('raw-data', (), True)
    >>> policy_from_env(Env({"VIGIL_PERSISTENCE": "2"}), AlertPolicy()).persistence
    2

"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from operators import steps
from operators.alerting import AlertPolicy
from operators.config import ConfigError, Env
from operators.detectors import DETECTORS, make_detector
from operators.errorcal import ErrorCalibrator
from operators.events import DeadLetter, RawBatch, Scored
from operators.normalize import Normalizer
from operators.records import alert_message, dead_letter_message
from operators.serde import WireFormat
from operators.shards import DEFAULT_SHARDS, Scorer, decode_to_shards, score_shards
from operators.sinks.files import JsonlSink
from operators.sinks.kafka import KafkaBytesSink
from operators.sinks.rerun import RerunConfig, RerunSink
from operators.sources.kafka import KafkaBatchSource
from operators.windowmodel import WindowModel, detect_windows

logger = logging.getLogger(__name__)

Message = tuple[bytes | None, bytes]
FEATURES = ("value", "stuck", "gap")
#: Messages per source micro-batch unless ``VIGIL_BATCH_SIZE`` says otherwise. A
#: source hands over what it has fetched, so batches are this long only while
#: a backlog drains; then the score step's fixed costs per batch and per round
#: of many series (:mod:`operators.columns`) are shared by thousands of readings.
BATCH_SIZE = 8000


@dataclass(frozen=True)
class KafkaConfig:
    """Where a flow reads and writes when a broker is configured.

    Attributes:
        topic: Input topic.
        alerts_topic: Topic of alert records.
        dlq_topic: Topic of dead-letter records.
        brokers: ``host:port`` of the bootstrap brokers (empty: embedded mode).
        start: Where to start when there is no recovery state.
        tail: Keep waiting for new messages at the end of the topic.
        extra: Extra librdkafka settings (SASL, TLS) for every client.

    """

    topic: str
    alerts_topic: str
    dlq_topic: str
    brokers: tuple[str, ...] = ()
    start: Literal["beginning", "end"] = "beginning"
    tail: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Env, *, topic: str, alerts_topic: str, dlq_topic: str) -> KafkaConfig:
        """Read the ``VIGIL_KAFKA_*`` variables; the topics given are the flow's defaults.

        Raises:
            ConfigError: naming the variable at fault.

        """
        return cls(
            topic=env.text("KAFKA_TOPIC", topic),
            alerts_topic=env.text("KAFKA_ALERTS_TOPIC", alerts_topic),
            dlq_topic=env.text("KAFKA_DLQ_TOPIC", dlq_topic),
            brokers=tuple(env.items("KAFKA_BROKERS", [])),
            start=env.choice("KAFKA_START", "beginning", ["beginning", "end"]),
            tail=env.flag("KAFKA_TAIL", True),
            extra=env.json_object("KAFKA_CONFIG"),
        )


@dataclass(frozen=True)
class WindowDetect:
    """The detect step of a flow scored by a trained window model (:mod:`operators.windowmodel`).

    Attributes:
        model: The model.
        calibrator: Calibration settings (``None``: the model's reference, defaults).

    """

    model: WindowModel
    calibrator: ErrorCalibrator | None = None


@dataclass(frozen=True)
class Sinks:
    """Where a flow's three outputs go (tests swap them for ``TestingSink``)."""

    alerts: Sink[Message]
    dead_letters: Sink[Message]
    view: Sink[Scored] | None


def policy_from_env(env: Env, base: AlertPolicy) -> AlertPolicy:
    """The alert policy from ``VIGIL_THRESHOLD``, ``CRITICAL``, ``PERSISTENCE`` and ``COOLDOWN_S``.

    Args:
        env: The environment.
        base: The flow's defaults for unset variables.

    Raises:
        ConfigError: naming the variables at fault.

    """
    policy = AlertPolicy(
        threshold=env.number("THRESHOLD", base.threshold),
        critical=env.number("CRITICAL", base.critical),
        persistence=env.integer("PERSISTENCE", base.persistence, min_value=1),
        cooldown_s=env.number("COOLDOWN_S", base.cooldown_s),
    )
    try:
        policy.validate()
    except ValueError as exc:
        raise ConfigError(f"VIGIL_THRESHOLD/CRITICAL/PERSISTENCE/COOLDOWN_S: {exc}") from None
    return policy


def detect_from_env(
    env: Env,
    detector: str,
    features: list[str],
    flow_options: dict[str, dict[str, Any]] | None = None,
) -> steps.DetectConfig:
    """The detect step's settings from ``VIGIL_DETECTOR[_OPTIONS]`` and ``VIGIL_FEATURES``.

    ``VIGIL_DETECTOR_OPTIONS`` is a JSON object of the detector's constructor
    options, e.g. ``{"flagged": "clip"}`` for the ``context`` detector.

    Args:
        env: The environment.
        detector: The flow's default value detector.
        features: The flow's default features (``value`` plus any of ``stuck``, ``gap``).
        flow_options: The flow's own options per detector name, used when
            ``VIGIL_DETECTOR_OPTIONS`` is not set.

    Raises:
        ConfigError: naming the variable at fault.

    Example:
        >>> detect_from_env(Env({"VIGIL_FEATURES": "value,gap"}), "iforest", ["value"])
        DetectConfig(detector='iforest', stuck=False, gap=True, options=())

    """
    chosen = env.items("FEATURES", features)
    unknown = set(chosen) - set(FEATURES)
    if "value" not in chosen or unknown:
        msg = f"VIGIL_FEATURES: expected 'value' plus any of stuck, gap; got {chosen}"
        raise ConfigError(msg)
    name = env.choice("DETECTOR", detector, sorted(DETECTORS))
    options = env.json_settings("DETECTOR_OPTIONS")
    if env.raw("DETECTOR_OPTIONS") is None:
        options = dict((flow_options or {}).get(name, {}))
    try:
        make_detector(name, options)
    except ValueError as exc:
        raise ConfigError(f"VIGIL_DETECTOR_OPTIONS: {exc}") from None
    return steps.DetectConfig(
        name,
        stuck="stuck" in chosen,
        gap="gap" in chosen,
        options=tuple(sorted(options.items())),
    )


def check_settings(
    env: Env, flow_name: str, fixed_lo: float, fixed_hi: float, sim_rate: float
) -> None:
    """The checks every flow's settings share; warns of ``VIGIL_*`` variables no setting read.

    Raises:
        ConfigError: naming the variable at fault.

    Example:
        >>> check_settings(Env({}), "sensors", 21.0, 20.0, 0.0)
        Traceback (most recent call last):
        ...
        operators.config.ConfigError: VIGIL_FIXED_HI: expected > VIGIL_FIXED_LO=21.0, got 20.0

    """
    if fixed_hi <= fixed_lo:
        msg = f"VIGIL_FIXED_HI: expected > VIGIL_FIXED_LO={fixed_lo}, got {fixed_hi}"
        raise ConfigError(msg)
    if sim_rate < 0:
        raise ConfigError(f"VIGIL_SIM_RATE: expected >= 0 events/s, got {sim_rate}")
    for name in env.unknown():
        logger.warning("ignoring %s: not a setting of the %s flow", name, flow_name)


def kafka_source(kafka: KafkaConfig, batch_size: int) -> KafkaBatchSource:
    """The input topic as a source of raw batches."""
    return KafkaBatchSource(
        list(kafka.brokers),
        kafka.topic,
        start=kafka.start,
        tail=kafka.tail,
        batch_size=batch_size,
        add_config=kafka.extra,
    )


def default_sinks(kafka: KafkaConfig, out_dir: Path, rerun: RerunConfig, prefix: str = "") -> Sinks:
    """Kafka topics (or, with no brokers, JSONL files under ``out_dir``) and the Rerun view.

    Args:
        kafka: Broker settings; no brokers means files.
        out_dir: Directory of the files.
        rerun: Where the view goes (``off``: no view).
        prefix: Start of the file names (``<prefix>alerts.jsonl``, ``<prefix>dead-letters.jsonl``).

    """
    view = None if rerun.mode == "off" else RerunSink(rerun)
    if not kafka.brokers:
        return Sinks(
            alerts=JsonlSink(out_dir / f"{prefix}alerts.jsonl"),
            dead_letters=JsonlSink(out_dir / f"{prefix}dead-letters.jsonl"),
            view=view,
        )
    to_topic: Callable[[str], KafkaBytesSink] = partial(
        KafkaBytesSink, list(kafka.brokers), add_config=kafka.extra
    )
    return Sinks(
        alerts=to_topic(kafka.alerts_topic),
        dead_letters=to_topic(kafka.dlq_topic),
        view=view,
    )


def wire(
    flow: Dataflow,
    source: Source[RawBatch],
    sinks: Sinks,
    *,
    make_normalizer: Callable[[], Normalizer],
    detect: steps.DetectConfig | WindowDetect,
    policy: AlertPolicy,
    fmt: WireFormat,
    shards: int = DEFAULT_SHARDS,
) -> None:
    """Add the steps of a Vigil flow to ``flow`` (its name names the metrics).

    Args:
        flow: An empty dataflow.
        source: Raw message batches.
        sinks: The outputs.
        make_normalizer: A zero-argument callable building one series' normalizer.
        detect: Value detector and extra features, or a trained window model.
        policy: The alert policy.
        fmt: Field names of the wire format.
        shards: Keys the series of a value-detector flow are spread over
            (:mod:`operators.shards`); a window-model flow keys by series.

    """
    name = flow.flow_id
    raw = op.input("input", flow, source)
    scored: Stream[Scored]
    if isinstance(detect, WindowDetect):
        decoded = steps.decode("decode", raw, name, fmt)
        normalized = steps.normalize("normalize", decoded.oks, make_normalizer, name)
        detected = detect_windows("detect", normalized.oks, detect.model, detect.calibrator)
        scored = steps.alert("alert", detected, policy, name)
        dead: Stream[DeadLetter] = op.merge("dead_letters", decoded.errs, normalized.errs)
    else:
        sharded = decode_to_shards("decode", raw, name, fmt, shards)
        scorer = Scorer(make_normalizer, detect, policy, name, shards)
        out = score_shards("score", sharded.oks, scorer)
        scored = out.scored
        dead = op.merge("dead_letters", sharded.errs, out.errs)

    alerts = steps.alerts_of("alerts", scored)
    op.output("alerts_out", op.map("alert_message", alerts, alert_message), sinks.alerts)
    op.output(
        "dead_letters_out",
        op.map("dead_letter_message", dead, dead_letter_message),
        sinks.dead_letters,
    )
    if sinks.view is not None:
        op.output("view", scored, sinks.view)
