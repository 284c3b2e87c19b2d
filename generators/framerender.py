"""Rendering of planned telescope frames into 16-bit pixels, for :mod:`generators.telescope`.

A :class:`Sky` is a target's fixed sky (a star field or a real image);
:func:`render` turns a :class:`~generators.framesim.FramePlan` into pixels
and depends on nothing but the plan and the sky. Signals are in electrons;
anomaly amplitudes are in units of the sky noise ``cfg.sky_sigma``. The
order of the model: sky background with a gradient, sources (stars dimmed
by clouds), astrophysical anomalies and hot pixels and columns, shot and
read noise (one normal draw per pixel, exact Poisson below
``POISSON_BELOW`` electrons), cosmic rays, then gain, bias, rounding and
16-bit saturation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np

from generators.skyfield import (
    BASE_FIELDS,
    Image,
    Psf,
    StarField,
    base_image,
    blur,
    draw_segment,
    resample,
    smooth_field,
    splat,
)
from operators.frames import Frame, PixelArray

if TYPE_CHECKING:
    from generators.framesim import FramePlan, Injection
    from generators.telescope import TelescopeSimConfig

__all__ = [
    "MARGIN",
    "ORIGIN",
    "Sky",
    "asteroid_half",
    "make_frame",
    "render",
    "seeded",
    "sidereal_time",
]

ORIGIN = "simulator"
# Sky pixels drawn beyond each edge, so that tracking shifts bring stars in.
MARGIN = 12
# Below this many expected electrons a pixel's shot noise is drawn exactly (Poisson).
POISSON_BELOW = 50.0


def asteroid_half(psf: Psf) -> int:
    """Half-size of an asteroid's stamp and box: 1.5 FWHM (Moffat wings < 3% of the peak) + 1.

    Example:
        >>> asteroid_half(Psf(3.0))
        6

    """
    return math.ceil(1.5 * psf.fwhm) + 1


def seeded(cfg: TelescopeSimConfig, *key: int) -> np.random.Generator:
    """The random stream ``key`` of the simulator's seed."""
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=key))


@dataclass(frozen=True, slots=True, eq=False)
class Sky:
    """A target's fixed sky: a star field, or a real image (``scale`` frame pixels per pixel).

    Attributes:
        ra_deg: Right ascension of the field centre.
        dec_deg: Declination of the field centre.
        gradient: Fractional change of the sky level across the frame in x and y.
        stars: The star field (synthetic fields).
        base: The real image (``"m13"``, ``"hubble"``).
        scale: Frame pixels per base image pixel.

    """

    ra_deg: float
    dec_deg: float
    gradient: tuple[float, float]
    stars: StarField | None = None
    base: Image | None = None
    scale: float = 1.0

    @classmethod
    def make(cls, cfg: TelescopeSimConfig, target: int) -> Sky:
        """The sky of target ``target`` (seeded by the seed and the target index)."""
        rng = seeded(cfg, 1 << 20, target)
        field = cfg.field_of(target)
        g = cfg.sky_gradient * rng.uniform(-1.0, 1.0, 2)
        gradient = (float(g[0]), float(g[1]))
        if field in BASE_FIELDS:
            _, _, ra, dec = BASE_FIELDS[field]
            base = base_image(field)
            bh, bw = base.shape
            scale = max(1.0, (cfg.width + 2 * MARGIN) / bw, (cfg.height + 2 * MARGIN) / bh)
            return cls(ra, dec, gradient, base=base, scale=scale)
        # A synthetic target transits within two hours of the start, well above the horizon.
        lst = sidereal_time(cfg.start, cfg.longitude_deg)
        ra = (lst + rng.uniform(-30.0, 30.0)) % 360.0
        dec = float(np.clip(cfg.latitude_deg + rng.uniform(-25.0, 25.0), -89.0, 89.0))
        extent = (-MARGIN, -MARGIN, cfg.width + MARGIN, cfg.height + MARGIN)
        stars = StarField.draw(rng, cfg.stars, extent, cfg.star_rate, cfg.star_index)
        return cls(float(ra), dec, gradient, stars=stars)


def sidereal_time(ut: datetime, lon_deg: float) -> float:
    """Local mean sidereal time, degrees.

    Example:
        >>> from datetime import datetime, timezone
        >>> round(sidereal_time(datetime(2000, 1, 1, 12, tzinfo=timezone.utc), 0.0), 3)
        280.461

    """
    jd = ut.timestamp() / 86_400.0 + 2_440_587.5
    return (280.46061837 + 360.98564736629 * (jd - 2_451_545.0) + lon_deg) % 360.0


def render(cfg: TelescopeSimConfig, plan: FramePlan, sky: Sky) -> PixelArray:
    """The ``uint16`` pixels of a planned frame (depends on nothing but the plan)."""
    shape = (cfg.height, cfg.width)
    noise = seeded(cfg, plan.camera, plan.tick, 3)
    sigma = cfg.sky_sigma
    dx, dy = plan.offset
    psf = plan.psf
    if sky.stars is not None:
        stars = sky.stars
        sources = splat(shape, stars.x - dx, stars.y - dy, stars.rate * cfg.exposure_s, psf)
    else:
        assert sky.base is not None  # a sky has stars or a base image
        bh, bw = sky.base.shape
        xs = (np.arange(cfg.width) + dx - cfg.width / 2.0) / sky.scale + (bw - 1) / 2.0
        ys = (np.arange(cfg.height) + dy - cfg.height / 2.0) / sky.scale + (bh - 1) / 2.0
        sources = resample(sky.base, xs, ys) * (cfg.base_rate * cfg.exposure_s)
        extra = max(psf.fwhm**2 - cfg.seeing_fwhm[0] ** 2, 0.0) ** 0.5 / 2.3548
        sources = blur(sources, max(extra, psf.donut / 2.0))
    gx = np.linspace(-0.5, 0.5, cfg.width)[None, :] * sky.gradient[0]
    gy = np.linspace(-0.5, 0.5, cfg.height)[:, None] * sky.gradient[1]
    background = cfg.sky_rate * cfg.exposure_s * (1.0 + gx + gy)
    if plan.unusable == "clouds":
        patches = seeded(cfg, plan.camera, plan.tick, 4)
        transmission, brighter = plan.clouds
        sources *= np.clip(transmission * (1.0 + 0.4 * smooth_field(patches, shape)), 0.03, 1.0)
        background = background * brighter * (1.0 + 0.15 * smooth_field(patches, shape))
    expected = background + sources
    after: list[Injection] = []
    for inj in plan.injections:
        box = inj.box
        kind = box.kind
        if kind == "asteroid":  # drawn only within its box: the stamp is the box
            stamp = Psf(psf.fwhm, psf.beta, extent=asteroid_half(psf))
            flux = inj.snr[0] * sigma / stamp.peak()
            expected += splat(shape, np.array(inj.x), np.array(inj.y), np.array([flux]), stamp)
        elif kind == "satellite_trail":
            ends = (inj.x[0], inj.y[0]), (inj.x[1], inj.y[1])
            edges = (box.x0, box.y0, box.x1, box.y1)
            draw_segment(expected, *ends, inj.snr[0] * sigma, psf.sigma, edges)
        elif kind == "hot_column":
            expected[box.y0 : box.y1, box.x0] += inj.snr[0] * sigma
        else:  # hot pixels and cosmic rays: sharp charges, after the sky's noise
            after.append(inj)
    electrons = expected + np.sqrt(expected + cfg.read_noise**2) * noise.standard_normal(shape)
    low = expected < POISSON_BELOW
    if low.any():
        electrons[low] = noise.poisson(np.maximum(expected[low], 0.0)) + (
            cfg.read_noise * noise.standard_normal(int(low.sum()))
        )
    for inj in after:
        cols, rows = np.array(inj.x, dtype=np.int64), np.array(inj.y, dtype=np.int64)
        np.add.at(electrons, (rows, cols), np.array(inj.snr) * sigma)
    adu = cfg.bias + electrons / cfg.gain
    return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)


def make_frame(cfg: TelescopeSimConfig, plan: FramePlan, sky: Sky) -> Frame:
    """The :class:`~operators.frames.Frame` of a plan, with its ground truth."""
    return Frame(
        frame_id=plan.frame_id(cfg.cameras[plan.camera]),
        camera=cfg.cameras[plan.camera],
        header=plan.header,
        pixels=render(cfg, plan, sky),
        truth=tuple(b for inj in plan.injections for b in inj.truth),
        unusable=plan.unusable,
        origin=ORIGIN,
    )
