"""Bear heart rate through hibernation: readings -> decode -> window model -> alert -> sinks.

Run with ``python -m bytewax.run dataflows.wildlife``. Each bear's heart rate
(4 readings a day) is scored by the LSTM autoencoder trained in the project
(:mod:`operators.models.train_bears`, shipped as ``operators/models/bears_lstm_ae.onnx``)
over its last 30 readings: the reconstruction error, calibrated per bear as an
upper-tail probability against the bear's own recent errors
(:class:`operators.errorcal.ErrorCalibrator`), then the project's alert
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
from operators.config import Env, configure_logging
from operators.embedding import MODELS_DIR
from operators.events import RawBatch
from operators.flowkit import Sinks
from operators.modelflow import CommonSettings, FlowIdentity, build_model_flow, default_source
from operators.serde import BEARS
from operators.sinks.rerun import ViewLabels
from operators.windowmodel import WindowModel

__all__ = ["IDENTITY", "MODEL_RECORD", "Config", "Sinks", "build_flow", "load_model"]

VIEW = ViewLabels(
    entity="heart_rate", quantity="Heart rate (bpm)", unit="bpm", noun="bear", cloud=False
)
IDENTITY = FlowIdentity(
    name="wildlife",
    application_id="vigil-wildlife",
    view=VIEW,
    file_prefix="wildlife-",
    topic="bears",
    alerts_topic="bear-alerts",
    dlq_topic="bears-dlq",
)
MODEL_NAME = "bears-lstm-ae"
MODEL_RECORD = MODELS_DIR / "bears_lstm_ae.json"


def load_model(record: Path = MODEL_RECORD, threads: int = 1) -> WindowModel:
    """The shipped bear autoencoder (or another with the same record format)."""
    return WindowModel.from_record(MODEL_NAME, record, threads=threads)


@dataclass(frozen=True)
class Config:
    """Everything the wildlife flow can be told.

    Attributes:
        common: Broker, source, policy, output and view settings (:class:`CommonSettings`).
        sim: The embedded simulator's settings.
        model_record: The window model's training record (its ``.onnx`` beside it).

    """

    common: CommonSettings = field(default_factory=lambda: CommonSettings.defaults(IDENTITY))
    sim: BearSimConfig = field(default_factory=BearSimConfig)
    model_record: Path = MODEL_RECORD

    @classmethod
    def from_env(cls, env: Env | None = None) -> Config:
        """Read ``VIGIL_*`` variables; see the README for the list.

        Raises:
            ConfigError: naming the variable at fault.

        Example:
            >>> cfg = Config.from_env(Env({"VIGIL_SIM_BEARS": "3"}))
            >>> cfg.sim.bears, cfg.common.kafka.topic, cfg.model_record.name
            (3, 'bears', 'bears_lstm_ae.json')

        """
        env = env or Env()
        return cls(
            common=CommonSettings.from_env(env, IDENTITY),
            sim=BearSimConfig.from_env(env),
            model_record=env.path("MODEL_RECORD", MODEL_RECORD),
        )


def build_flow(
    cfg: Config, *, source: Source[RawBatch] | None = None, sinks: Sinks | None = None
) -> Dataflow:
    """Wire the wildlife dataflow. Loads the model's record; opens no connection.

    Args:
        cfg: The settings.
        source: Raw message batches (default: Kafka or the simulator).
        sinks: Outputs (default: Kafka topics or files, and Rerun).

    """
    source = source or default_source(cfg.common, cfg.sim)
    model = load_model(cfg.model_record)
    return build_model_flow(IDENTITY, cfg.common, model, BEARS, source, sinks)


_config = Config.from_env()
configure_logging(_config.common.log_level)
flow = build_flow(_config)
