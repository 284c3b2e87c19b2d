"""Render the sensors view of a Rerun recording in the web viewer and save it as a PNG.

Usage::

    python docs/make_screenshot.py [recording.rrd ...] --out docs/rerun-sensors.png

With no recording, a synthetic one is written first, through the flow's own
``RerunSink``: 5 sensors reading 21-28 °C every 5 s for 50 minutes, sensor 3
with five alerted spikes of 65-85 °C (scores near 1, threshold 0.999). Give
the ``.rrd`` files of a real run instead (``vigil-out/sensors*.rrd``) to show
that run.

The recording is served on 127.0.0.1 by the ``rerun`` executable of the
rerun-sdk wheel (``rerun --serve-web --bind 127.0.0.1``) and rendered by
headless Chromium, with WebGL in software (SwiftShader), driven over the
DevTools protocol on a pipe. The picture is taken once two captures in a row
are identical. With Pillow installed, the PNG is reduced to 256 colours.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from operators.events import ScoredBatch
from operators.sinks.rerun import RerunConfig, RerunSink

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # needed as root in a container; the page is our own local viewer
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
)
START = 1_717_200_000_000  # 2024-06-01T00:00:00Z
SPIKES = (90, 200, 330, 470, 540)


def synthetic_batches(seed: int = 7, readings: int = 600, batch: int = 100) -> list[ScoredBatch]:
    """Five sensors at 21-28 °C every 5 s; sensor 3 has alerted, labelled spikes of 65-85 °C."""
    rng = np.random.default_rng(seed)
    out: list[ScoredBatch] = []
    for sensor in "12345":
        ts = START + np.arange(readings, dtype=np.int64) * 5000
        values = rng.uniform(21.0, 28.0, readings)
        alerted = np.zeros(readings, dtype=np.bool_)
        if sensor == "3":
            alerted[list(SPIKES)] = True
            values[alerted] = rng.uniform(65.0, 85.0, len(SPIKES))
        scores = rng.beta(2.0, 8.0, readings) * 0.9
        scores[alerted] = 1.0 - rng.uniform(1e-6, 5e-4, int(alerted.sum()))
        labels = tuple("spike" if a else None for a in alerted)
        for i in range(0, readings, batch):
            cut = slice(i, i + batch)
            out.append(
                ScoredBatch(
                    sensor,
                    ts[cut],
                    values[cut],
                    labels[cut],
                    scores[cut] * 10,
                    scores[cut],
                    alerted[cut],
                    0.999,
                    "robust-z",
                )
            )
    return out


def write_recording(batches: list[ScoredBatch], path: Path) -> None:
    """Run the batches through RerunSink in a one-step flow, into ``path``."""
    flow = Dataflow("screenshot")
    op.output(
        "view", op.input("inp", flow, TestingSource(batches)), RerunSink(RerunConfig(path=path))
    )
    run_main(flow)


def rerun_executable() -> str | None:
    """The viewer binary of the rerun-sdk wheel (not the ``rerun`` Python wrapper script)."""
    spec = importlib.util.find_spec("rerun_cli")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "rerun"
        if bundled.is_file():
            return str(bundled)
    return shutil.which("rerun")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until ``proc`` accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rerun is not listening on port {port}") from None
            time.sleep(0.1)


class DevTools:
    """A Chromium driven over ``--remote-debugging-pipe`` (JSON messages ending in NUL)."""

    def __init__(self, chromium: str, flags: list[str], url: str) -> None:
        to_child, self._out = os.pipe()
        self._in, from_child = os.pipe()

        def fds_3_and_4() -> None:  # where Chromium expects the pipe
            a, b = os.dup(to_child), os.dup(from_child)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [chromium, *flags, "--remote-debugging-pipe", url],
            preexec_fn=fds_3_and_4,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buf = b""
        self._id = 0
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self._session = attached["sessionId"]

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and return its result."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply["result"]
                return result

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command to the page."""
        return self.call(method, self._session, **params)

    def close(self) -> None:
        """Close the browser (killing it if it does not go)."""
        with contextlib.suppress(RuntimeError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)


def capture(chromium: str, url: str, width: int, height: int, timeout: float) -> bytes:
    """A PNG of ``url`` once two captures 3 s apart are identical and not a loading page."""
    with tempfile.TemporaryDirectory(prefix="vigil-chromium-") as profile:
        flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]
        browser = DevTools(chromium, flags, url)
        try:
            browser.page(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            return settled(browser, time.monotonic() + timeout)
        finally:
            browser.close()


def settled(browser: DevTools, deadline: float) -> bytes:
    """A capture identical to the one 3 s before, and not a nearly blank loading page."""
    previous = b""
    while time.monotonic() < deadline:
        time.sleep(3.0)
        shot = base64.b64decode(browser.page("Page.captureScreenshot", format="png")["data"])
        # The loading and welcome screens are nearly blank: a few tens of kB.
        if shot == previous and len(shot) > 100_000:
            return shot
        previous = shot
    raise RuntimeError("the viewer did not settle on a rendered view in time")


def shrink(png: bytes) -> bytes:
    """The PNG reduced to 256 colours when Pillow is installed (UI pictures stay crisp)."""
    try:
        from PIL import Image
    except ImportError:
        return png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, "PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recordings", nargs="*", type=Path, help=".rrd files (default: synthetic)")
    parser.add_argument("--out", type=Path, default=Path("docs/rerun-sensors.png"))
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for a view")
    parser.add_argument("--chromium", default=None, help="browser executable (default: found)")
    args = parser.parse_args(argv)

    chromium = args.chromium or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    if chromium is None:
        print("no Chromium found: apt-get install chromium, or pass --chromium", file=sys.stderr)
        return 2
    rerun = rerun_executable()
    if rerun is None:
        print("no rerun executable: install rerun-sdk", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="vigil-screenshot-") as tmp:
        recordings = list(args.recordings)
        if not recordings:
            recordings = [Path(tmp) / "sensors.rrd"]
            write_recording(synthetic_batches(), recordings[0])
        grpc_port, web_port = free_port(), free_port()
        server = subprocess.Popen(
            [
                *(rerun, "--serve-web", "--bind", "127.0.0.1", "--port", str(grpc_port)),
                *("--web-viewer-port", str(web_port), *map(str, recordings)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_listening(web_port, server, timeout=30)
            wait_listening(grpc_port, server, timeout=30)
            grpc = f"rerun+http://127.0.0.1:{grpc_port}/proxy"
            url = f"http://127.0.0.1:{web_port}/?url={quote(grpc, safe='')}"
            png = shrink(capture(chromium, url, args.width, args.height, args.timeout))
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
