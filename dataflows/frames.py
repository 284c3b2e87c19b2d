"""Telescope frames: frames -> decode -> (warm up or) embed, search the bank, score -> alerts, view.

Run with ``python -m bytewax.run dataflows.frames``. With no broker configured
the flow reads its own telescope simulator in-process and writes
``vigil-out/frames-alerts.jsonl`` (anomalous frames with their boxes),
``vigil-out/frames-results.jsonl`` (every frame's decision, skipped frames
with their reason), ``vigil-out/frames-dead-letters.jsonl`` and a Rerun
recording ``vigil-out/frames.rrd``; the memory bank is the Milvus Lite file
``vigil-out/vigil-frames.db``. With ``VIGIL_KAFKA_BROKERS`` set it reads the
``frames`` topic and writes ``frame-alerts``, ``frame-results`` and
``frames-dlq``; ``VIGIL_MILVUS_URI=http://host:19530`` uses a Milvus server.

While a Milvus server does not answer, every request waits up to
``VIGIL_MILVUS_TIMEOUT_S`` and is tried again with back-off (rate-limited
WARNING lines with the attempt count); after ``VIGIL_MILVUS_GIVE_UP_S`` of
failures the flow stops with an error, so that recovery replays the frames not
yet written rather than losing them (:mod:`operators.framepipe`).

A target the bank does not know yet warms up on its first
``VIGIL_FRAMES_REFERENCES`` usable frames (see :mod:`operators.framesteps`);
one indexed with ``vigil-frames index`` is scored from its first frame.
Every setting is a ``VIGIL_*`` environment variable (see :class:`Config`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from generators.frame_source import FrameSimulatorSource
from generators.telescope import TelescopeSimConfig
from operators.config import ConfigError, Env, configure_logging
from operators.embedding import PatchEmbedder
from operators.events import DeadLetter, RawBatch
from operators.flowkit import KafkaConfig, Message, check_settings, kafka_source
from operators.frameimage import FrameLimits
from operators.framepipe import (
    MILVUS_GIVE_UP_S,
    MILVUS_RETRY,
    POOL,
    FramePipeline,
    PipelineConfig,
)
from operators.framequality import QualityRules
from operators.frames import ScoredFrame
from operators.framescore import FALSE_ALARM_RATE
from operators.framesteps import (
    SharedPipeline,
    alert_message,
    decode_frames,
    result_message,
    score_frames,
)
from operators.membank import BankConfig, MemoryBank, unavailable
from operators.records import dead_letter_message
from operators.retry import Retrying, RetryPolicy
from operators.sinks.files import JsonlSink
from operators.sinks.kafka import KafkaBytesSink
from operators.sinks.rerun import RerunConfig, ViewLabels
from operators.sinks.rerun_frames import FrameRerunSink, FrameViewConfig

logger = logging.getLogger(__name__)

FLOW_NAME = "frames"
APPLICATION_ID = "vigil-frames"
VIEW = ViewLabels(entity="frames", quantity="Frame score", unit="", noun="camera", cloud=False)


def _kafka_defaults() -> KafkaConfig:
    return KafkaConfig(topic="frames", alerts_topic="frame-alerts", dlq_topic="frames-dlq")


def _rerun_defaults() -> RerunConfig:
    return RerunConfig.recording(Path("vigil-out/frames.rrd"), APPLICATION_ID, VIEW)


@dataclass(frozen=True)
class Config:
    """Everything the frame flow can be told.

    Attributes:
        kafka: Broker settings; no brokers means the embedded simulator.
        results_topic: Topic of every frame's decision.
        sim: The embedded simulator's settings.
        sim_partitions: Source partitions of the embedded simulator.
        sim_fps: Frames per second offered by the simulator (0: unpaced).
        batch_size: Frames per source micro-batch.
        milvus_uri: The memory bank: a Milvus Lite file or a server URI.
        milvus_token: Token of a Milvus server.
        milvus_timeout_s: Seconds one Milvus request may take (``VIGIL_MILVUS_TIMEOUT_S``).
        milvus_give_up_s: Seconds of Milvus failing to answer after which the flow
            stops (``VIGIL_MILVUS_GIVE_UP_S``; 0: at the first failure). Until then,
            a frame's bank requests are tried again with exponential back-off.
        model: Patch-feature model: ``lite0``, ``random`` or an ONNX file.
        threads: onnxruntime threads per process.
        references: Usable frames an unknown target warms up on.
        false_alarm_rate: Per-frame false-alarm rate of the calibrated threshold.
        rules: The quality gate.
        conditions: Extra Milvus filter on the references searched.
        pool: Model cells pooled per patch side (2: a quarter of the patches to search).
        ref_roots: Folders that file-reference messages may point into.
        out_dir: Directory of the embedded mode's files (and the Lite bank).
        rerun: Where the Rerun view goes.
        view_every: Log the image of every n-th frame (alerts always).
        log_level: Level of the flow's log lines.

    """

    kafka: KafkaConfig = field(default_factory=_kafka_defaults)
    results_topic: str = "frame-results"
    sim: TelescopeSimConfig = field(default_factory=TelescopeSimConfig)
    sim_partitions: int = 1
    sim_fps: float = 0.0
    batch_size: int = 4
    milvus_uri: str = "vigil-out/vigil-frames.db"
    milvus_token: str = ""
    milvus_timeout_s: float = 60.0
    milvus_give_up_s: float = MILVUS_GIVE_UP_S
    model: str = "lite0"
    threads: int = 1
    references: int = 20
    false_alarm_rate: float = FALSE_ALARM_RATE
    rules: QualityRules = field(default_factory=QualityRules)
    conditions: str | None = None
    pool: int = POOL
    ref_roots: tuple[Path, ...] = ()
    out_dir: Path = Path("vigil-out")
    rerun: RerunConfig = field(default_factory=_rerun_defaults)
    view_every: int = 1
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
            >>> cfg = Config.from_env(Env({"VIGIL_FRAMES_REFERENCES": "8"}))
            >>> cfg.references, cfg.kafka.topic, cfg.milvus_uri
            (8, 'frames', 'vigil-out/vigil-frames.db')

        """
        env = env or Env()
        d = cls()
        kafka = KafkaConfig.from_env(
            env, topic=d.kafka.topic, alerts_topic=d.kafka.alerts_topic, dlq_topic=d.kafka.dlq_topic
        )
        out_dir = env.path("OUT_DIR", d.out_dir)
        rerun = RerunConfig.from_env(
            env, out_dir / "frames.rrd", application_id=APPLICATION_ID, labels=VIEW
        )
        far = env.number("FRAMES_FALSE_ALARM_RATE", d.false_alarm_rate)
        if not 0.0 < far < 1.0:
            raise ConfigError(f"VIGIL_FRAMES_FALSE_ALARM_RATE: expected 0 < rate < 1, got {far}")
        base = d.rules
        try:
            rules = QualityRules(
                min_weather=env.number("FRAMES_MIN_WEATHER", base.min_weather),
                min_altitude_deg=env.number("FRAMES_MIN_ALTITUDE", base.min_altitude_deg),
                focus_tolerance=env.number("FRAMES_FOCUS_TOLERANCE", base.focus_tolerance),
                min_signal=env.number("FRAMES_MIN_SIGNAL", base.min_signal),
                max_background=env.number("FRAMES_MAX_BACKGROUND", base.max_background),
            )
        except ValueError as exc:
            raise ConfigError(f"VIGIL_FRAMES_MIN_*/MAX_*/FOCUS_TOLERANCE: {exc}") from None
        conditions = env.text("FRAMES_CONDITIONS", "") or None
        milvus_timeout_s = env.number("MILVUS_TIMEOUT_S", d.milvus_timeout_s)
        milvus_give_up_s = env.number("MILVUS_GIVE_UP_S", d.milvus_give_up_s)
        if milvus_timeout_s <= 0 or milvus_give_up_s < 0:
            raise ConfigError(
                "VIGIL_MILVUS_TIMEOUT_S/GIVE_UP_S: expected a timeout > 0 and a give-up time "
                f">= 0, got {milvus_timeout_s} and {milvus_give_up_s}"
            )
        cfg = cls(
            kafka=kafka,
            results_topic=env.text("KAFKA_RESULTS_TOPIC", d.results_topic),
            sim=TelescopeSimConfig.from_env(env),
            sim_partitions=env.integer("SIM_PARTITIONS", d.sim_partitions, min_value=1),
            sim_fps=env.number("SIM_FPS", d.sim_fps),
            batch_size=env.integer("BATCH_SIZE", d.batch_size, min_value=1),
            milvus_uri=env.text("MILVUS_URI", str(out_dir / "vigil-frames.db")),
            milvus_token=env.text("MILVUS_TOKEN", d.milvus_token),
            milvus_timeout_s=milvus_timeout_s,
            milvus_give_up_s=milvus_give_up_s,
            model=env.text("FRAMES_MODEL", d.model),
            threads=env.integer("FRAMES_THREADS", d.threads, min_value=1),
            references=env.integer("FRAMES_REFERENCES", d.references, min_value=5),
            false_alarm_rate=far,
            rules=rules,
            conditions=conditions,
            pool=env.integer("FRAMES_POOL", d.pool, min_value=1),
            ref_roots=tuple(Path(p) for p in env.items("FRAMES_REF_ROOTS", [])),
            out_dir=out_dir,
            rerun=rerun,
            view_every=env.integer("RERUN_FRAME_EVERY", d.view_every, min_value=1),
            log_level=env.choice("LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR"]),
        )
        check_settings(env, FLOW_NAME, 0.0, 1.0, cfg.sim_fps)
        return cfg

    @property
    def milvus_retry(self) -> RetryPolicy:
        """Back-off and give-up time of the bank's requests while Milvus does not answer."""
        return dataclasses.replace(MILVUS_RETRY, give_up_s=self.milvus_give_up_s)

    def open_pipeline(self) -> FramePipeline:
        """Load the model and connect to the bank (when the flow starts, once per process).

        A Milvus server that does not answer yet is waited for like one that
        stops answering later; a Lite file that cannot be opened fails at once.
        """
        embedder = PatchEmbedder(self.model, threads=self.threads)
        bank_cfg = BankConfig(
            uri=self.milvus_uri,
            token=self.milvus_token,
            dim=embedder.dim + 2,
            timeout_s=self.milvus_timeout_s,
        )
        if bank_cfg.is_lite:
            Path(self.milvus_uri).parent.mkdir(parents=True, exist_ok=True)
            bank = MemoryBank(bank_cfg).open()
        else:
            connecting = Retrying(
                "milvus",
                self.milvus_retry,
                transient=unavailable,
                where=f"memory bank {bank_cfg.uri}",
            )
            bank = connecting.call("connect", MemoryBank(bank_cfg).open)
        logger.info(
            "frames: model %s (%d features), bank %s", self.model, embedder.dim, bank.cfg.uri
        )
        return FramePipeline(
            embedder,
            bank,
            PipelineConfig(
                rules=self.rules,
                false_alarm_rate=self.false_alarm_rate,
                conditions=self.conditions,
                pool=self.pool,
            ),
            retry=self.milvus_retry,
        )


@dataclass(frozen=True)
class FrameSinks:
    """Where the frame flow's outputs go (tests swap them for ``TestingSink``)."""

    alerts: Sink[Message]
    results: Sink[Message]
    dead_letters: Sink[Message]
    view: Sink[ScoredFrame] | None


def default_source(cfg: Config) -> Source[RawBatch]:
    """Kafka when brokers are configured, else the in-process simulator."""
    if cfg.embedded:
        return FrameSimulatorSource(
            cfg.sim, partitions=cfg.sim_partitions, batch_size=cfg.batch_size, fps=cfg.sim_fps
        )
    return kafka_source(cfg.kafka, cfg.batch_size)


def default_sinks(cfg: Config) -> FrameSinks:
    """Kafka topics (or JSONL files under ``out_dir``) and the Rerun view."""
    view = None
    if cfg.rerun.mode != "off":
        view = FrameRerunSink(FrameViewConfig(cfg.rerun, every=cfg.view_every))
    if cfg.embedded:
        return FrameSinks(
            alerts=JsonlSink(cfg.out_dir / "frames-alerts.jsonl"),
            results=JsonlSink(cfg.out_dir / "frames-results.jsonl"),
            dead_letters=JsonlSink(cfg.out_dir / "frames-dead-letters.jsonl"),
            view=view,
        )
    brokers, extra = list(cfg.kafka.brokers), cfg.kafka.extra
    return FrameSinks(
        alerts=KafkaBytesSink(brokers, cfg.kafka.alerts_topic, add_config=extra),
        results=KafkaBytesSink(brokers, cfg.results_topic, add_config=extra),
        dead_letters=KafkaBytesSink(brokers, cfg.kafka.dlq_topic, add_config=extra),
        view=view,
    )


def build_flow(
    cfg: Config,
    *,
    source: Source[RawBatch] | None = None,
    sinks: FrameSinks | None = None,
    pipeline: SharedPipeline | None = None,
) -> Dataflow:
    """Wire the frame dataflow. Opens no connection and reads no file.

    Args:
        cfg: The settings.
        source: Raw message batches (default: Kafka or the simulator).
        sinks: Outputs (default: Kafka topics or files, and Rerun).
        pipeline: The process's pipeline (default: opened from ``cfg`` when the flow runs).

    """
    sinks = sinks or default_sinks(cfg)
    flow = Dataflow(FLOW_NAME)
    raw = op.input("input", flow, source or default_source(cfg))
    decoded = decode_frames("decode", raw, FLOW_NAME, FrameLimits(ref_roots=cfg.ref_roots))
    shared = pipeline or SharedPipeline(cfg.open_pipeline)
    scored = score_frames("score", decoded.oks, shared, cfg.references)
    anomalous = op.filter("anomalous", scored, lambda s: s.is_anomaly)
    op.output("alerts_out", op.map("alert_message", anomalous, alert_message), sinks.alerts)
    op.output("results_out", op.map("result_message", scored, result_message), sinks.results)
    dead: Stream[DeadLetter] = decoded.errs
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
