"""Sewer flow sites: five-channel readings -> decode -> window model -> alert -> sinks.

Run with ``python -m bytewax.run dataflows.flow_sites``. Each site's readings
(velocity, flow, level, water temperature, rainfall, every 5 minutes) are scored
by a model trained in the project (:mod:`operators.models.train_flowsites`) over
the site's last 50 readings: the window classifier's probability
(``VIGIL_MODEL=classifier``, the default) or the autoencoder's reconstruction
error (``autoencoder``), calibrated per site as an upper-tail probability against
the site's own recent outputs (:class:`operators.errorcal.ErrorCalibrator`),
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
from operators.config import Env, configure_logging
from operators.embedding import MODELS_DIR
from operators.events import RawBatch
from operators.flowkit import Sinks
from operators.modelflow import CommonSettings, FlowIdentity, build_model_flow, default_source
from operators.serde import WireFormat
from operators.sinks.rerun import ViewLabels
from operators.sitereading import SITES, decode_site_reading
from operators.windowmodel import WindowModel

__all__ = ["FORMAT", "IDENTITY", "MODELS", "Config", "Sinks", "build_flow", "load_model"]

VIEW = ViewLabels(entity="flow", quantity="Flow (L/s)", unit="L/s", noun="site", cloud=False)
IDENTITY = FlowIdentity(
    name="flow_sites",
    application_id="vigil-flow-sites",
    view=VIEW,
    file_prefix="flow-sites-",
    topic="flow-sites",
    alerts_topic="flow-site-alerts",
    dlq_topic="flow-sites-dlq",
)
#: The shipped models, by ``VIGIL_MODEL`` name: (detector name, training record).
MODELS = {
    "classifier": ("flowsites-classifier", MODELS_DIR / "flowsites_classifier.json"),
    "autoencoder": ("flowsites-ae", MODELS_DIR / "flowsites_ae.json"),
}
#: crc32 puts every default site id in the same one of 2 partitions: 3 spread them.
SIM_PARTITIONS = 3


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


@dataclass(frozen=True)
class Config:
    """Everything the flow-sites flow can be told.

    Attributes:
        common: Broker, source, policy, output and view settings (:class:`CommonSettings`).
        sim: The embedded simulator's settings.
        model: ``classifier`` or ``autoencoder`` (:data:`MODELS`).
        model_record: Another model's training record (its ``.onnx`` beside it).

    """

    common: CommonSettings = field(
        default_factory=lambda: CommonSettings.defaults(IDENTITY, SIM_PARTITIONS)
    )
    sim: FlowSiteConfig = field(default_factory=FlowSiteConfig)
    model: str = "classifier"
    model_record: Path | None = None

    @classmethod
    def from_env(cls, env: Env | None = None) -> Config:
        """Read ``VIGIL_*`` variables; see the README for the list.

        Raises:
            ConfigError: naming the variable at fault.

        Example:
            >>> cfg = Config.from_env(Env({"VIGIL_MODEL": "autoencoder"}))
            >>> cfg.model, cfg.common.kafka.topic, cfg.common.sim_partitions
            ('autoencoder', 'flow-sites', 3)

        """
        env = env or Env()
        record = env.raw("MODEL_RECORD")
        return cls(
            common=CommonSettings.from_env(env, IDENTITY, SIM_PARTITIONS),
            sim=FlowSiteConfig.from_env(env),
            model=env.choice("MODEL", "classifier", sorted(MODELS)),
            model_record=None if record is None else Path(record),
        )


def build_flow(
    cfg: Config, *, source: Source[RawBatch] | None = None, sinks: Sinks | None = None
) -> Dataflow:
    """Wire the flow-sites dataflow. Loads the model's record; opens no connection.

    Args:
        cfg: The settings.
        source: Raw message batches (default: Kafka or the simulator).
        sinks: Outputs (default: Kafka topics or files, and Rerun).

    """
    source = source or default_source(cfg.common, cfg.sim)
    model = load_model(cfg.model, cfg.model_record)
    return build_model_flow(IDENTITY, cfg.common, model, FORMAT, source, sinks)


_config = Config.from_env()
configure_logging(_config.common.log_level)
flow = build_flow(_config)
