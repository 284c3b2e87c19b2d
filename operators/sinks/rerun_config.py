"""Where the Rerun view goes, and the viewer or server a flow may start for it.

Modes (``VIGIL_RERUN_MODE``): ``off``; ``rrd`` writes a file (one per worker
with several workers: ``sensors-w<i>.rrd``; open them together with
``rerun vigil-out/sensors*.rrd``; the file is rewritten at each start);
``spawn`` starts a native viewer, ``serve`` a gRPC server plus web viewer
(both the ``rerun`` executable of the rerun-sdk wheel, started by worker 0,
bound to ``VIGIL_RERUN_BIND``, left running after the flow ends; a server
already listening on the port is reused); ``connect`` streams to a running
viewer or server at ``VIGIL_RERUN_URL``. :class:`ViewLabels` says what the
view calls a flow's readings. The sink itself is :mod:`operators.sinks.rerun`.

Example:
    >>> from operators.config import Env
    >>> cfg = RerunConfig.from_env(Env({"VIGIL_RERUN_MODE": "serve"}), Path("out/s.rrd"))
    >>> cfg.mode, cfg.bind, cfg.grpc_port, cfg.web_port
    ('serve', '127.0.0.1', 9876, 9090)

"""

from __future__ import annotations

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

from operators.config import ConfigError, Env

logger = logging.getLogger(__name__)

Mode = Literal["off", "rrd", "spawn", "connect", "serve"]
MODES: tuple[Mode, ...] = ("off", "rrd", "spawn", "connect", "serve")
APPLICATION_ID = "vigil-sensors"
_MEMORY = re.compile(r"^\d+(\.\d+)?\s*(%|[KMGT]i?B|B)$")
_URL_SCHEMES = ("rerun", "rerun+http", "rerun+https")
_STARTUP_S = 20.0
# Viewers and servers started here, detached; held so that Python does not warn about them.
_STARTED: list[subprocess.Popen[bytes]] = []
DEFAULT_URL = "rerun+http://127.0.0.1:9876/proxy"
DEFAULT_BIND = "127.0.0.1"
DEFAULT_MAX_SERIES = 100
DEFAULT_FLUSH_S = 0.25
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
class ViewLabels:
    """What the view calls the readings; the sensors flow's by default.

    Attributes:
        entity: Entity root of the readings' lines and alert points.
        quantity: Title of the readings' plot.
        unit: Unit of the values, for the 3D cloud's title (empty: none).
        noun: What one series is called in the legends.
        cloud: Also draw the 3D cloud of (minutes, value, series).

    """

    entity: str = "temperature"
    quantity: str = "Temperature (°C)"
    unit: str = "°C"
    noun: str = "sensor"
    cloud: bool = True


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
        labels: What the view calls the readings.
        max_series: Series a worker draws one by one (lines, scores, cloud); the
            alerts of any further series are drawn together, under
            ``<root>/other-series``, so that a flow over many thousands of series
            does not log a thousand entities per batch.
        flush_s: Seconds of wall clock the sink gathers readings for before it
            logs them (fewer, larger ``send_columns`` calls; the view lags by it).

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
    labels: ViewLabels = field(default_factory=ViewLabels)
    max_series: int = DEFAULT_MAX_SERIES
    flush_s: float = DEFAULT_FLUSH_S

    @classmethod
    def recording(cls, path: Path, application_id: str, labels: ViewLabels) -> RerunConfig:
        """A flow's default: its recording written to ``path``.

        Example:
            >>> RerunConfig.recording(Path("out/m.rrd"), "vigil-m", ViewLabels()).mode
            'rrd'

        """
        return cls(
            mode="rrd",
            path=path,
            application_id=application_id,
            recording_id=default_recording_id(application_id),
            labels=labels,
        )

    @classmethod
    def from_env(
        cls,
        env: Env,
        default_path: Path,
        *,
        application_id: str = APPLICATION_ID,
        labels: ViewLabels | None = None,
    ) -> RerunConfig:
        """Read the ``VIGIL_RERUN_*`` variables.

        Args:
            env: The environment.
            default_path: The recording file when ``VIGIL_RERUN_PATH`` is unset.
            application_id: The application id when ``VIGIL_RERUN_APPLICATION_ID`` is unset.
            labels: What the view calls the readings (default: the sensors flow's).

        Raises:
            ConfigError: naming the variable at fault.

        """
        application_id = env.text("RERUN_APPLICATION_ID", application_id)
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
            labels=labels or ViewLabels(),
            max_series=env.integer("RERUN_MAX_SERIES", DEFAULT_MAX_SERIES, min_value=0),
            flush_s=env.number("RERUN_FLUSH_S", DEFAULT_FLUSH_S),
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
        if not 0.0 <= self.flush_s <= 60.0:
            raise ConfigError(f"VIGIL_RERUN_FLUSH_S: expected 0..60 seconds, got {self.flush_s}")
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


def ensure_viewer(cfg: RerunConfig, *, start: bool) -> None:
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
