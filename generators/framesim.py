"""Planning of simulated telescope frames, for :mod:`generators.telescope`.

A frame is made in two steps. *Planning* (here) is sequential and cheap: per
camera, it advances the pointing offset (tracking), the seeing, the weather
and the temperature, decides whether the frame is a clean reference or
unusable, and draws the anomalies to inject, with their ground-truth boxes.
*Rendering* (:mod:`generators.framerender`) turns a plan into pixels and
depends on nothing but the plan, so a source can skip frames (to resume) by
planning them without rendering them.

Random streams, all from :class:`numpy.random.SeedSequence` of the seed:
per camera one for conditions, one for usability and one for anomalies,
per frame one for pixel noise and one for clouds, per target one for its
sky. Anomaly draws never change the rest of a frame: with every anomaly
probability at 0 the same seed renders the same frames without them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np

from generators.framerender import Sky, asteroid_half, seeded
from generators.skyfield import Psf, altaz
from operators.frames import Box, FrameHeader

if TYPE_CHECKING:
    from generators.telescope import TelescopeSimConfig

__all__ = ["FramePlan", "Injection", "plan_frames"]

# Pointing offsets follow an AR(1) process: offset = AR * offset + tracking_std * N(0, 1).
TRACKING_AR = 0.85
# Usable frames' weather station value, and what the unusable kinds show.
USABLE_WEATHER = (75.0, 100.0)
CLOUDS_WEATHER = (20.0, 60.0)
POOR_WEATHER = (0.0, 35.0)
FOCUS_JITTER = 3.0
# Ground truth of a trail: one box per piece this many pixels long.
TRUTH_SEGMENT = 16.0  # steps, standard deviation of an in-focus frame's focuser position


@dataclass(frozen=True, slots=True)
class Injection:
    """One injected anomaly of a frame: its ground-truth box and how to draw it.

    Attributes:
        box: Ground truth (``box.kind`` an :data:`~operators.frames.ANOMALY_KINDS` entry).
        x: Pixel columns (asteroid: its centre; trail and column: the two ends;
            hot pixels and cosmic rays: each pixel hit).
        y: Pixel rows, likewise.
        snr: Amplitude of each point (or of the whole line) in units of the sky noise.
        pieces: Ground truth when one box would overstate it: a trail's chain of
            short segment boxes (its drawing box spans the whole diagonal).

    """

    box: Box
    x: tuple[float, ...]
    y: tuple[float, ...]
    snr: tuple[float, ...]
    pieces: tuple[Box, ...] = ()

    @property
    def truth(self) -> tuple[Box, ...]:
        """The ground-truth boxes: :attr:`pieces`, else :attr:`box`."""
        return self.pieces or (self.box,)


@dataclass(frozen=True, slots=True)
class FramePlan:
    """Everything about one frame but its pixels.

    Attributes:
        position: Index of the frame in the whole stream.
        camera: Camera index.
        tick: The camera's frame number (event time ``start + tick * interval_s``).
        target: Target index.
        header: The header (weather and focus carry the unusable cues).
        offset: Pointing offset ``(dx, dy)`` in pixels.
        psf: The frame's point-spread function.
        reference: One of the first clean frames of its camera and target.
        unusable: An :data:`~operators.frames.UNUSABLE_KINDS` entry, or ``None``.
        clouds: Mean transmission and sky brightening of a cloudy frame.
        injections: The anomalies to draw.

    """

    position: int
    camera: int
    tick: int
    target: int
    header: FrameHeader
    offset: tuple[float, float]
    psf: Psf
    reference: bool
    unusable: str | None
    clouds: tuple[float, float]
    injections: tuple[Injection, ...]

    def frame_id(self, camera: str) -> str:
        """``<camera>-<tick, 6 digits>``."""
        return f"{camera}-{self.tick:06d}"


@dataclass(slots=True)
class _Track:
    """A moving asteroid, in sky pixels."""

    x: float
    y: float
    vx: float
    vy: float
    left: int
    snr: float


class _CameraPlanner:
    """One camera's frames, planned in order."""

    def __init__(self, cfg: TelescopeSimConfig, camera: int, skies: list[Sky]) -> None:
        self.cfg, self.camera, self.skies = cfg, camera, skies
        self.env, self.usable, self.anomalies = (seeded(cfg, camera, k) for k in range(3))
        self.tick = 0
        self.target = -1
        self.offset = np.zeros(2)
        self.seeing, self.weather = 0.5, 0.7
        self.temperature = cfg.temperature_c
        self.seen = [0] * len(cfg.targets)
        self.track: _Track | None = None

    def next(self, position: int) -> FramePlan:
        cfg, t = self.cfg, self.tick
        self.tick += 1
        target = cfg.target_of(self.camera, t)
        e = self.env.random(8)
        if target != self.target:  # a new pointing: offset anew, asteroid gone
            self.target, self.track = target, None
            self.offset = (e[:2] - 0.5) * 4.0 * cfg.tracking_std
        step = self.env.standard_normal(2)
        self.offset = TRACKING_AR * self.offset + cfg.tracking_std * step
        self.seeing = min(1.0, max(0.0, 0.6 * self.seeing + 0.4 * e[2]))
        self.weather = min(1.0, max(0.0, 0.8 * self.weather + 0.2 * e[3]))
        self.temperature += -0.4 * cfg.interval_s / 3600.0 + 0.05 * (e[4] - 0.5)
        lo, hi = cfg.seeing_fwhm
        fwhm = lo + (hi - lo) * self.seeing
        focus = cfg.nominal_focus + round(FOCUS_JITTER * (e[5] + e[6] + e[7] - 1.5) * 2.0)
        weather = USABLE_WEATHER[0] + (USABLE_WEATHER[1] - USABLE_WEATHER[0]) * self.weather
        reference = self.seen[target] < cfg.references
        self.seen[target] += 1
        u = self.usable.random(4)
        unusable = None if reference else cfg.unusable_kind(float(u[0]))
        psf, clouds = Psf(fwhm), (1.0, 1.0)
        if unusable == "clouds":
            weather = _between(CLOUDS_WEATHER, u[1])
            clouds = (0.15 + 0.45 * float(u[2]), 1.3 + 1.7 * float(u[3]))
        elif unusable == "weather":
            weather = _between(POOR_WEATHER, u[1])
        elif unusable == "defocus":
            steps = _between(cfg.defocus_steps, u[1]) * (1.0 if u[2] < 0.5 else -1.0)
            focus = cfg.nominal_focus + round(steps)
            psf = Psf(fwhm, donut=abs(steps) * cfg.defocus_px_per_step)
        injections = self._anomalies(psf, clean=reference or unusable is not None)
        ut = cfg.start + timedelta(seconds=t * cfg.interval_s)
        sky = self.skies[target]
        dx, dy = float(self.offset[0]), float(self.offset[1])
        ra = sky.ra_deg + dx * cfg.pixel_scale / 3600.0 / math.cos(math.radians(sky.dec_deg))
        dec = sky.dec_deg - dy * cfg.pixel_scale / 3600.0
        alt, az = altaz(ra % 360.0, dec, cfg.latitude_deg, cfg.longitude_deg, ut)
        header = FrameHeader(
            width=cfg.width,
            height=cfg.height,
            ut=ut,
            object=cfg.targets[target],
            ra_deg=ra % 360.0,
            dec_deg=dec,
            altitude_deg=alt,
            azimuth_deg=az,
            focus=float(focus),
            temperature_c=round(self.temperature, 2),
            latitude_deg=cfg.latitude_deg,
            longitude_deg=cfg.longitude_deg,
            weather=round(weather, 1),
        )
        return FramePlan(
            position, self.camera, t, target, header, (dx, dy), psf, reference, unusable,
            clouds, injections,
        )  # fmt: skip

    def _anomalies(self, psf: Psf, *, clean: bool) -> tuple[Injection, ...]:
        cfg, rng = self.cfg, self.anomalies
        w, h = cfg.width, cfg.height
        out: list[Injection] = []
        dx, dy = float(self.offset[0]), float(self.offset[1])
        if self.track is None and not clean and rng.random() < cfg.asteroid_prob:
            lo, hi = cfg.asteroid_len
            angle, speed = rng.uniform(0, 2 * math.pi), _between(cfg.asteroid_speed, rng.random())
            self.track = _Track(
                float(rng.uniform(0.05, 0.95) * w + dx), float(rng.uniform(0.05, 0.95) * h + dy),
                speed * math.cos(angle), speed * math.sin(angle),
                int(rng.integers(lo, hi + 1)), _between(cfg.asteroid_snr, rng.random()),
            )  # fmt: skip
        track = self.track
        if track is not None:
            x, y = track.x - dx, track.y - dy
            if not (2.0 <= x < w - 2.0 and 2.0 <= y < h - 2.0) or track.left <= 0:
                self.track = None
            else:
                if not clean:
                    half = asteroid_half(psf)  # the box is the stamp it is drawn in
                    ix, iy = round(x), round(y)
                    box = _box(ix - half, iy - half, ix + half + 1, iy + half + 1, w, h, "asteroid")
                    out.append(Injection(box, (x,), (y,), (track.snr,)))
                track.x, track.y, track.left = (
                    track.x + track.vx,
                    track.y + track.vy,
                    track.left - 1,
                )
        if clean:
            return tuple(out)
        if rng.random() < cfg.satellite_trail_prob:
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            angle = rng.uniform(0, math.pi)
            half_len = _between(cfg.satellite_trail_len, rng.random()) / 2.0
            ux, uy = half_len * math.cos(angle), half_len * math.sin(angle)
            xs, ys = (cx - ux, cx + ux), (cy - uy, cy + uy)
            pad = 3.0 * psf.sigma + 1.0  # the trail is drawn only in its box
            kind = "satellite_trail"
            box = _box(
                min(xs) - pad, min(ys) - pad, max(xs) + pad + 1, max(ys) + pad + 1, w, h, kind
            )
            snr = _between(cfg.satellite_trail_snr, rng.random())
            pieces = segment_boxes(xs, ys, pad, w, h, kind)
            out.append(Injection(box, xs, ys, (snr,), pieces))
        if rng.random() < cfg.hot_pixel_prob:
            n = int(rng.integers(1, 4))
            x0, y0 = int(rng.integers(1, w - 1)), int(rng.integers(1, h - 1))
            steps = rng.integers(-1, 2, (n, 2))
            steps[0] = 0
            px = tuple(float(x0 + s[0]) for s in steps)
            py = tuple(float(y0 + s[1]) for s in steps)
            snrs = tuple(_between(cfg.hot_pixel_snr, v) for v in rng.random(n))
            box = _box(min(px), min(py), max(px) + 1, max(py) + 1, w, h, "hot_pixel")
            out.append(Injection(box, px, py, snrs))
        if rng.random() < cfg.hot_column_prob:
            length = min(h, int(rng.integers(cfg.hot_column_len[0], cfg.hot_column_len[1] + 1)))
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h - length + 1))
            snr = _between(cfg.hot_column_snr, rng.random())
            box = Box(x0, y0, x0 + 1, y0 + length, "hot_column")
            out.append(Injection(box, (x0, x0), (y0, y0 + length), (snr,)))
        if rng.random() < cfg.cosmic_ray_prob:
            lo, hi = cfg.cosmic_ray_count
            for _ in range(int(rng.integers(lo, hi + 1))):
                out.append(self._cosmic_ray(rng))
        return tuple(out)

    def _cosmic_ray(self, rng: np.random.Generator) -> Injection:
        """A sharp hit: one pixel, or a short track of up to four, brightest first."""
        cfg, w, h = self.cfg, self.cfg.width, self.cfg.height
        n = int(rng.integers(1, 5))
        x, y = float(rng.integers(0, w)), float(rng.integers(0, h))
        angle = rng.uniform(0, 2 * math.pi)
        xs = tuple(float(np.clip(round(x + i * math.cos(angle)), 0, w - 1)) for i in range(n))
        ys = tuple(float(np.clip(round(y + i * math.sin(angle)), 0, h - 1)) for i in range(n))
        top = _between(cfg.cosmic_ray_snr, rng.random())
        snrs = tuple(top * float(f) for f in np.linspace(1.0, 0.4, n))
        box = _box(min(xs), min(ys), max(xs) + 1, max(ys) + 1, w, h, "cosmic_ray")
        return Injection(box, xs, ys, snrs)


def _between(bounds: tuple[float, float], u: float) -> float:
    return float(bounds[0] + (bounds[1] - bounds[0]) * u)


def segment_boxes(
    xs: tuple[float, float],
    ys: tuple[float, float],
    pad: float,
    w: int,
    h: int,
    kind: str,
    step: float = TRUTH_SEGMENT,
) -> tuple[Box, ...]:
    """Boxes ``pad`` pixels around each ``step``-pixel piece of the line from ``xs[0], ys[0]``.

    Example:
        >>> boxes = segment_boxes((0.0, 30.0), (0.0, 30.0), 1.0, 100, 100, "satellite_trail")
        >>> [(b.x0, b.y0, b.x1, b.y1) for b in boxes]
        [(0, 0, 12, 12), (9, 9, 22, 22), (19, 19, 32, 32)]

    """
    n = max(1, math.ceil(math.hypot(xs[1] - xs[0], ys[1] - ys[0]) / step))
    tx = np.linspace(xs[0], xs[1], n + 1)
    ty = np.linspace(ys[0], ys[1], n + 1)
    boxes = (
        _box(
            min(tx[i], tx[i + 1]) - pad,
            min(ty[i], ty[i + 1]) - pad,
            max(tx[i], tx[i + 1]) + pad + 1,
            max(ty[i], ty[i + 1]) + pad + 1,
            w,
            h,
            kind,
        )
        for i in range(n)
    )
    return tuple(b for b in boxes if b.x1 > b.x0 and b.y1 > b.y0)


def _box(x0: float, y0: float, x1: float, y1: float, w: int, h: int, kind: str) -> Box:
    left, top = max(0, math.floor(x0)), max(0, math.floor(y0))
    return Box(left, top, min(w, math.ceil(x1)), min(h, math.ceil(y1)), kind)


def plan_frames(
    cfg: TelescopeSimConfig, skies: list[Sky], cameras: set[int] | None = None
) -> Iterator[FramePlan]:
    """Plans of the whole stream in order (or of only ``cameras``' frames), ``cfg.count`` in all.

    Frame ``position`` is camera ``position % len(cameras)`` at tick
    ``position // len(cameras)``: every camera's frame of a tick, in camera
    order, before the next tick.
    """
    k = len(cfg.cameras)
    own = sorted(range(k) if cameras is None else cameras)
    planners = {c: _CameraPlanner(cfg, c, skies) for c in own}
    tick = 0
    while own:
        for c in own:
            position = tick * k + c
            if cfg.count and position >= cfg.count:
                return
            yield planners[c].next(position)
        tick += 1
