"""The Rerun view of scored readings: a Bytewax sink that logs in columns.

Every ``rerun`` call of Vigil lives here. Each worker owns an explicit
:class:`rerun.RecordingStream` (never the global one); all workers share one
application id and one recording id, so the viewer merges what they send
into a single recording. Per ``write_batch``, the batches of one series are
concatenated and logged with one ``send_columns`` per entity, so the cost per
reading is a few array copies rather than a Python call.

Entities, on the ``event_time`` timestamp timeline (event time of the data):

* ``temperature/<series>``: the readings, a line per series;
* ``temperature/<series>/alert``: alerted readings, large red points;
* ``temperature/<series>/labelled``: readings a generator labelled anomalous,
  small grey crosses (a cross without a red point is a missed anomaly, a red
  point without a cross a false alarm);
* ``score/<series>``: two scalars per reading, the calibrated score in [0, 1]
  and the alert threshold it was held to (a line each);
* ``cloud/data/<series>`` and ``cloud/alert/<series>``: a 3D cloud of
  (minutes since 00:00 UTC of the first reading a worker saw, temperature,
  10 x sensor index), alerts larger and red.

Modes (``VIGIL_RERUN_MODE``): ``off``; ``rrd`` writes a file (one per worker
with several workers: ``sensors-w<i>.rrd``; open them together with
``rerun vigil-out/sensors*.rrd``; the file is rewritten at each start);
``spawn`` starts a native viewer, ``serve`` a gRPC server plus web viewer
(both the ``rerun`` executable of the rerun-sdk wheel, started by worker 0,
bound to ``VIGIL_RERUN_BIND``, left running after the flow ends; a server
already listening on the port is reused); ``connect`` streams to a running
viewer or server at ``VIGIL_RERUN_URL``.

Example:
    >>> from operators.config import Env
    >>> cfg = RerunConfig.from_env(Env({"VIGIL_RERUN_MODE": "serve"}), Path("out/s.rrd"))
    >>> cfg.mode, cfg.bind, cfg.grpc_port, cfg.web_port
    ('serve', '127.0.0.1', 9876, 9090)

"""

from __future__ import annotations

import hashlib
import importlib.util
import ipaddress
import logging
import re
import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

import numpy as np
import numpy.typing as npt
import rerun as rr
import rerun.blueprint as rrb
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.config import ConfigError, Env
from operators.events import BoolArray, FloatArray, IntArray, ScoredBatch
from operators.sinks.files import worker_path

logger = logging.getLogger(__name__)

Mode = Literal["off", "rrd", "spawn", "connect", "serve"]
MODES: tuple[Mode, ...] = ("off", "rrd", "spawn", "connect", "serve")
TIMELINE = "event_time"
APPLICATION_ID = "vigil-sensors"
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(%|[KMGT]i?B|B)$")
_URL_SCHEMES = ("rerun", "rerun+http", "rerun+https")
_STARTUP_S = 20.0
_FLUSH_S = 30.0
_RED = (220, 30, 30)
_PALETTE = (
    (31, 119, 180),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (23, 190, 207),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
)
_CLOUD_SENSOR_SPACING = 10.0
_MS_PER_DAY = 86_400_000
# Viewers and servers started here, detached; held so that Python does not warn about them.
_STARTED: list[subprocess.Popen[bytes]] = []
_SCALARS = rr.Scalars.descriptor_scalars()
_POSITIONS = rr.Points3D.descriptor_positions()
DEFAULT_URL = "rerun+http://127.0.0.1:9876/proxy"
DEFAULT_BIND = "127.0.0.1"
DEFAULT_GRPC_PORT = 9876
DEFAULT_WEB_PORT = 9090
DEFAULT_MEMORY_LIMIT = "1GiB"


def default_recording_id(application_id: str) -> str:
    """A recording id fixed by the application id, so all workers and processes share it.

    Example:
        >>> default_recording_id("vigil-sensors") == default_recording_id("vigil-sensors")
        True

    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vigil:{application_id}"))


@dataclass(frozen=True, slots=True)
class RerunConfig:
    """Where the Rerun view goes.

    Attributes:
        mode: ``off``, ``rrd``, ``spawn``, ``connect`` or ``serve``.
        path: The recording file (``rrd``).
        url: gRPC URL of a running viewer or server (``connect``).
        bind: Address the started viewer or server listens on (``spawn``, ``serve``).
        grpc_port: gRPC port of the started viewer or server.
        web_port: HTTP port of the web viewer (``serve``).
        application_id: Rerun application id (the blueprint is stored per application).
        recording_id: Shared by every worker so the viewer merges them into one recording.
        memory_limit: Memory the started viewer (``spawn``) or server (``serve``) may use
            before it drops the oldest data, for example ``1GiB`` or ``25%``.

    """

    mode: Mode = "rrd"
    path: Path = Path("vigil-out/sensors.rrd")
    url: str = DEFAULT_URL
    bind: str = DEFAULT_BIND
    grpc_port: int = DEFAULT_GRPC_PORT
    web_port: int = DEFAULT_WEB_PORT
    application_id: str = APPLICATION_ID
    recording_id: str = field(default_factory=lambda: default_recording_id(APPLICATION_ID))
    memory_limit: str = DEFAULT_MEMORY_LIMIT

    @classmethod
    def from_env(cls, env: Env, default_path: Path) -> RerunConfig:
        """Read the ``VIGIL_RERUN_*`` variables.

        Args:
            env: The environment.
            default_path: The recording file when ``VIGIL_RERUN_PATH`` is unset.

        Raises:
            ConfigError: naming the variable at fault.

        """
        application_id = env.text("RERUN_APPLICATION_ID", APPLICATION_ID)
        cfg = cls(
            mode=env.choice("RERUN_MODE", "rrd", MODES),
            path=env.path("RERUN_PATH", default_path),
            url=env.text("RERUN_URL", DEFAULT_URL),
            bind=env.text("RERUN_BIND", DEFAULT_BIND),
            grpc_port=env.integer("RERUN_GRPC_PORT", DEFAULT_GRPC_PORT, min_value=1),
            web_port=env.integer("RERUN_WEB_PORT", DEFAULT_WEB_PORT, min_value=1),
            application_id=application_id,
            recording_id=env.text("RERUN_RECORDING_ID", default_recording_id(application_id)),
            memory_limit=env.text("RERUN_MEMORY_LIMIT", DEFAULT_MEMORY_LIMIT),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Check the values; errors name the ``VIGIL_RERUN_*`` variable.

        Raises:
            ConfigError: on the first bad value.

        """
        url = urlsplit(self.url)
        if url.scheme not in _URL_SCHEMES or not url.hostname or url.path != "/proxy":
            msg = (
                "VIGIL_RERUN_URL: expected rerun+http://<host>:<port>/proxy (or rerun://, "
                f"rerun+https://), got {self.url!r}"
            )
            raise ConfigError(msg)
        try:
            ipaddress.ip_address(self.bind)
        except ValueError:
            msg = f"VIGIL_RERUN_BIND: expected an IP address such as 127.0.0.1, got {self.bind!r}"
            raise ConfigError(msg) from None
        for name, port in (("GRPC_PORT", self.grpc_port), ("WEB_PORT", self.web_port)):
            if not 1 <= port <= 65535:
                raise ConfigError(f"VIGIL_RERUN_{name}: expected a port 1..65535, got {port}")
        if self.mode == "serve" and self.grpc_port == self.web_port:
            msg = f"VIGIL_RERUN_WEB_PORT: expected a port other than the gRPC port {self.grpc_port}"
            raise ConfigError(msg)
        if not _MEMORY.match(self.memory_limit):
            msg = (
                "VIGIL_RERUN_MEMORY_LIMIT: expected a size such as 1GiB or 25%, "
                f"got {self.memory_limit!r}"
            )
            raise ConfigError(msg)
        if not self.application_id or not self.recording_id:
            raise ConfigError("VIGIL_RERUN_APPLICATION_ID/RECORDING_ID: expected non-empty ids")

    @property
    def grpc_url(self) -> str:
        """The URL that reaches the viewer or server this config starts (or ``url``)."""
        if self.mode == "connect":
            return self.url
        return f"rerun+http://{_connect_host(self.bind)}:{self.grpc_port}/proxy"

    @property
    def web_url(self) -> str:
        """The web viewer's address, already pointed at the gRPC server (``serve``)."""
        host = _connect_host(self.bind)
        return f"http://{host}:{self.web_port}/?url={quote(self.grpc_url, safe='')}"


def _connect_host(bind: str) -> str:
    if bind == "0.0.0.0":  # a wildcard bind is reached through loopback
        return "127.0.0.1"
    if bind == "::":
        return "[::1]"
    return f"[{bind}]" if ":" in bind else bind


def sensor_index(series: str) -> int:
    """The sensor's position on the 3D cloud's depth axis: its number, else a stable hash.

    Example:
        >>> sensor_index("3"), sensor_index("dock-a") == sensor_index("dock-a")
        (3, True)

    """
    if series.isdecimal() and len(series) <= 6:
        return int(series)
    return int.from_bytes(hashlib.blake2b(series.encode(), digest_size=4).digest(), "big") % 1000


def sensors_blueprint() -> rrb.Blueprint:
    """Readings with alerts, scores with thresholds, and the 3D cloud up to the time cursor."""
    everything = rr.TimeRange(
        start=rrb.TimeRangeBoundary.infinite(), end=rrb.TimeRangeBoundary.infinite()
    )
    return rrb.Blueprint(
        rrb.Vertical(
            rrb.TimeSeriesView(
                origin="/temperature",
                name="Temperature (°C) and alerts",
                axis_x=rrb.TimeAxis(view_range=everything),
                plot_legend=rrb.PlotLegend(corner="LeftTop"),
            ),
            rrb.Horizontal(
                rrb.TimeSeriesView(
                    origin="/score",
                    name="Calibrated score and threshold",
                    axis_x=rrb.TimeAxis(view_range=everything),
                    plot_legend=rrb.PlotLegend(visible=False),
                ),
                rrb.Spatial3DView(
                    origin="/cloud",
                    name="Readings in 3D: (minutes, °C, 10 × sensor)",
                    time_ranges=rrb.VisibleTimeRange(
                        TIMELINE,
                        start=rrb.TimeRangeBoundary.infinite(),
                        end=rrb.TimeRangeBoundary.cursor_relative(),
                    ),
                ),
            ),
            row_shares=[1, 1],
        ),
        collapse_panels=True,
    )


class RerunSink(DynamicSink[ScoredBatch]):
    """Log scored batches to Rerun, one recording shared by all workers.

    Args:
        cfg: Where to send the view; ``mode`` must not be ``off``.

    Raises:
        ValueError: for ``mode="off"`` (leave the view output out instead).

    """

    def __init__(self, cfg: RerunConfig) -> None:
        if cfg.mode == "off":
            raise ValueError("RerunSink: mode 'off' logs nothing; leave the view output out")
        self.cfg = cfg

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RerunPartition:
        """Open this worker's recording stream and point it at the configured sink."""
        return _RerunPartition(self.cfg, step_id, worker_index, worker_count)


@dataclass(frozen=True, slots=True)
class _Paths:
    temp: str
    alert: str
    labelled: str
    score: str
    cloud: str
    cloud_alert: str
    depth: float


class _RerunPartition(StatelessSinkPartition[ScoredBatch]):
    def __init__(
        self, cfg: RerunConfig, step_id: str, worker_index: int, worker_count: int
    ) -> None:
        self._cfg = cfg
        self._rec = rr.RecordingStream(cfg.application_id, recording_id=cfg.recording_id)
        self._dest = self._attach(worker_index, worker_count)
        if worker_index == 0:
            self._rec.send_blueprint(sensors_blueprint(), make_active=True, make_default=True)
        # Temperature is up in the 3D cloud.
        self._rec.log("cloud", rr.ViewCoordinates.RIGHT_HAND_Y_UP, static=True, strict=True)
        self._paths: dict[str, _Paths] = {}
        self._origin_ms: int | None = None
        self._readings = 0
        self._alerts = 0
        logger.info("%s: worker %d logs to %s", step_id, worker_index, self._dest)

    def _attach(self, worker_index: int, worker_count: int) -> str:
        cfg = self._cfg
        if cfg.mode == "rrd":
            path = worker_path(cfg.path, worker_index, worker_count)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._rec.save(path)
            return str(path)
        if cfg.mode in ("spawn", "serve"):
            _ensure_viewer(cfg, start=worker_index == 0)
        self._rec.connect_grpc(cfg.grpc_url)
        return cfg.web_url if cfg.mode == "serve" else cfg.grpc_url

    def write_batch(self, items: list[ScoredBatch]) -> None:
        groups: dict[str, list[ScoredBatch]] = {}
        for batch in items:
            if len(batch):
                groups.setdefault(batch.series, []).append(batch)
        for series, batches in groups.items():
            self._write_series(self._paths_of(series), batches)

    def _paths_of(self, series: str) -> _Paths:
        paths = self._paths.get(series)
        if paths is not None:
            return paths
        part = rr.escape_entity_path_part(series)
        index = sensor_index(series)
        paths = _Paths(
            temp=f"temperature/{part}",
            alert=f"temperature/{part}/alert",
            labelled=f"temperature/{part}/labelled",
            score=f"score/{part}",
            cloud=f"cloud/data/{part}",
            cloud_alert=f"cloud/alert/{part}",
            depth=_CLOUD_SENSOR_SPACING * index,
        )
        colour = _PALETTE[index % len(_PALETTE)]
        styles: list[tuple[str, rr.AsComponents]] = [
            (paths.temp, rr.SeriesLines(colors=colour, names=f"sensor {series}", widths=1.5)),
            (
                paths.alert,
                rr.SeriesPoints(
                    colors=_RED, names=f"alert {series}", markers="circle", marker_sizes=4.0
                ),
            ),
            (
                paths.labelled,
                rr.SeriesPoints(
                    colors=(90, 90, 90), names=f"labelled {series}", markers="cross", marker_sizes=3
                ),
            ),
            (
                paths.score,
                rr.SeriesLines(
                    colors=[colour, _RED], names=[f"score {series}", "threshold"], widths=[1.5, 1]
                ),
            ),
            (paths.cloud, rr.Points3D.from_fields(colors=colour, radii=rr.Radius.ui_points(1.5))),
            (paths.cloud_alert, rr.Points3D.from_fields(colors=_RED, radii=rr.Radius.ui_points(5))),
        ]
        for path, style in styles:
            self._rec.log(path, style, static=True, strict=True)
        self._paths[series] = paths
        return paths

    def _write_series(self, paths: _Paths, batches: list[ScoredBatch]) -> None:
        ts = np.concatenate([b.ts_ms for b in batches])
        values = np.concatenate([b.values for b in batches])
        scores = np.concatenate([b.scores for b in batches])
        alerted = np.concatenate([b.alerted for b in batches])
        if self._origin_ms is None:
            self._origin_ms = int(ts.min()) // _MS_PER_DAY * _MS_PER_DAY
            logger.info("3D cloud: x is minutes since %s", np.datetime64(self._origin_ms, "ms"))
        times = [_timestamps(ts)]
        self._send(paths.temp, times, _scalars(values))
        # Score and threshold share a row: one call, and the threshold line follows any change.
        thresholds = np.repeat([b.threshold for b in batches], [len(b) for b in batches])
        self._send(paths.score, times, _scalars(np.column_stack((scores, thresholds))))
        cloud = np.empty((len(ts), 3), dtype=np.float32)
        cloud[:, 0] = (ts - self._origin_ms) / 60_000.0
        cloud[:, 1] = values
        cloud[:, 2] = paths.depth
        self._send(paths.cloud, times, _positions(cloud))
        if alerted.any():
            alert_times = [_timestamps(ts[alerted])]
            self._send(paths.alert, alert_times, _scalars(values[alerted]))
            self._send(paths.cloud_alert, alert_times, _positions(cloud[alerted]))
        labelled = _labelled(batches)
        if labelled is not None and labelled.any():
            self._send(paths.labelled, [_timestamps(ts[labelled])], _scalars(values[labelled]))
        self._readings += len(ts)
        self._alerts += int(alerted.sum())

    def _send(self, path: str, times: list[rr.TimeColumn], column: rr.ComponentColumn) -> None:
        rr.send_columns(path, indexes=times, columns=[column], recording=self._rec, strict=True)

    def close(self) -> None:
        try:
            self._rec.flush(timeout_sec=_FLUSH_S)
        except Exception:  # an unreachable viewer must not fail the flow's shutdown
            logger.exception("could not flush the Rerun view to %s", self._dest)
        self._rec.disconnect()
        logger.info(
            "logged %d readings (%d alerted) to %s", self._readings, self._alerts, self._dest
        )


def _timestamps(ts_ms: IntArray) -> rr.TimeColumn:
    return rr.TimeColumn(TIMELINE, timestamp=ts_ms.astype("datetime64[ms]"))


# Component batches built straight from the arrays, one value per row: an order of
# magnitude cheaper than `Archetype.columns(...)`, which converts and partitions generically.
def _scalars(values: FloatArray) -> rr.ComponentColumn:
    """One row per first index of ``values``; a 2-D array gives several scalars per row."""
    width = values.shape[1] if values.ndim == 2 else 1
    batch = rr.components.ScalarBatch(values.ravel())
    offsets = np.arange(0, width * len(values) + 1, width, dtype=np.int32)
    return rr.ComponentColumn(_SCALARS, batch, offsets=offsets)


def _positions(xyz: npt.NDArray[np.float32]) -> rr.ComponentColumn:
    batch = rr.components.Position3DBatch(xyz)
    return rr.ComponentColumn(_POSITIONS, batch, offsets=np.arange(len(xyz) + 1, dtype=np.int32))


def _labelled(batches: list[ScoredBatch]) -> BoolArray | None:
    """Mask of readings with a ground-truth label, or ``None`` when there is none at all."""
    if all(b.labels.count(None) == len(b.labels) for b in batches):
        return None
    return np.concatenate(
        [np.fromiter((x is not None for x in b.labels), np.bool_, len(b.labels)) for b in batches]
    )


def _rerun_executable() -> str:
    spec = importlib.util.find_spec("rerun_cli")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "rerun"
        if bundled.is_file():
            return str(bundled)
    found = shutil.which("rerun")
    if found is None:
        raise RuntimeError("RerunSink: the rerun executable was not found; install rerun-sdk")
    return found


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=0.2):
            return True
    except OSError:
        return False


def _ensure_viewer(cfg: RerunConfig, *, start: bool) -> None:
    """Wait for the viewer (``spawn``) or server (``serve``); start it first if ``start``.

    A viewer or server already listening on the port is reused.
    """
    host = _connect_host(cfg.bind)
    if _listening(host, cfg.grpc_port):
        logger.info("using the Rerun server already listening at %s", cfg.grpc_url)
        return
    args = [_rerun_executable(), "--bind", cfg.bind, "--port", str(cfg.grpc_port)]
    if cfg.mode == "serve":
        args += ["--serve-web", "--web-viewer-port", str(cfg.web_port)]
        args += ["--server-memory-limit", cfg.memory_limit]
    else:
        args += ["--memory-limit", cfg.memory_limit, "--expect-data-soon"]
    proc = None
    if start:
        # Detached, like rerun.spawn: the view outlives the flow and a Ctrl-C of the flow.
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _STARTED.append(proc)
    deadline = time.monotonic() + _STARTUP_S
    while not _listening(host, cfg.grpc_port):
        if proc is not None and proc.poll() is not None:
            msg = f"RerunSink: `{' '.join(args)}` exited with status {proc.returncode}"
            raise RuntimeError(msg)
        if time.monotonic() > deadline:
            msg = f"RerunSink: nothing listening on {cfg.grpc_url} after {_STARTUP_S}s"
            raise RuntimeError(msg)
        time.sleep(0.05)
    if proc is not None:
        where = cfg.web_url if cfg.mode == "serve" else cfg.grpc_url
        logger.info("started Rerun (pid %d, keeps running after the flow) at %s", proc.pid, where)
