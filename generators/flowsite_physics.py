"""Hydraulics of a simulated sewer flow site: pipe geometry, dry weather, storms, sensors.

A site is a circular pipe of diameter ``D`` (mm) on a slope, with Manning's
roughness 0.013. Its true flow ``Q`` (L/s) is the dry-weather flow (a mean
flow times a daily pattern with a morning and an evening peak, times a slow
random wander) plus storm runoff: rain (mm per five minutes) times a catchment
gain, delayed by a lag and routed through two linear reservoirs in cascade
(the quick response) and one slow reservoir (infiltration after the storm), so
a storm raises the flow some ticks after the rain and recedes over hours.

The depth is the one at which Manning's equation carries ``Q`` in the part-full
pipe; the velocity is ``Q`` over the wetted area of that depth. A flow above
what the part-full pipe carries at most surcharges it: the level rises above
``D`` and the velocity is ``Q`` over the full area. Water temperature follows a
daily cycle and drops while storm water dominates.

The sensors read the depth with N(0, 1 mm) noise, the velocity and the flow
each with a few per cent of independent noise, so a clean reading keeps
``flow ~ velocity x wetted_area(level)`` within a few per cent.

Example:
    >>> round(float(wetted_area_m2(225.0, 450.0)), 6)  # half full: half the circle
    0.079522
    >>> pipe = Pipe(450.0, 0.005)  # half full, it carries half the full flow
    >>> round(pipe.q_full), round(float(pipe.depth_for(pipe.q_full / 2)))
    (202, 225)

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.signal import lfilter

from operators.events import FloatArray

__all__ = [
    "DIAMETERS_MM",
    "TICK_S",
    "Hydraulics",
    "Pipe",
    "SiteParams",
    "Storms",
    "draw_site",
    "wetted_area_m2",
]

#: Seconds between two readings of a site.
TICK_S = 300
TICKS_PER_DAY = 86_400 // TICK_S
#: Pipe diameters a site is drawn from, mm.
DIAMETERS_MM = (300.0, 375.0, 450.0, 525.0, 600.0, 750.0)
MANNING_N = 0.013
# Manning's flow in a circular pipe peaks at this fraction of the diameter.
_PEAK_DEPTH = 0.938
_LEVEL_NOISE_MM = 1.0
_VELOCITY_NOISE = 0.02
_FLOW_NOISE = 0.015
_TEMPERATURE_NOISE = 0.03


def wetted_area_m2(level_mm: npt.ArrayLike, diameter_mm: float) -> FloatArray:
    """Wetted cross-section (m²) of a circular pipe at a depth of water: a circular segment.

    Depths at or below 0 give 0; at or above the diameter, the full area.

    Example:
        >>> wetted_area_m2([0.0, 600.0, 900.0], 600.0).round(6).tolist()
        [0.0, 0.282743, 0.282743]

    """
    r = diameter_mm / 2000.0
    h = np.clip(np.asarray(level_mm, np.float64) / 1000.0, 0.0, 2 * r)
    return np.asarray(r * r * np.arccos((r - h) / r) - (r - h) * np.sqrt(h * (2 * r - h)))


def _wetted_perimeter_m(level_mm: FloatArray, diameter_mm: float) -> FloatArray:
    r = diameter_mm / 2000.0
    h = np.clip(level_mm / 1000.0, 0.0, 2 * r)
    return np.asarray(2 * r * np.arccos((r - h) / r))


@dataclass(frozen=True)
class Pipe:
    """A circular pipe flowing part full under Manning's equation.

    Attributes:
        diameter_mm: Inside diameter, mm.
        slope: Bed slope, m/m.

    """

    diameter_mm: float
    slope: float

    def __post_init__(self) -> None:
        # A dense table of depth -> flow up to the depth of the largest part-full flow.
        depth = self.diameter_mm * _PEAK_DEPTH * np.linspace(0.0, 1.0, 4001) ** 2
        object.__setattr__(self, "_depths", depth)
        object.__setattr__(self, "_flows", self.manning_flow(depth))

    @property
    def full_area_m2(self) -> float:
        """Cross-section of the full pipe, m²."""
        return math.pi * (self.diameter_mm / 2000.0) ** 2

    @property
    def q_full(self) -> float:
        """Manning's flow of the pipe just full, L/s."""
        return float(self.manning_flow(np.array([self.diameter_mm]))[0])

    @property
    def q_max(self) -> float:
        """The largest part-full flow, L/s (at 93.8 % of the diameter)."""
        return float(self._flows[-1])  # type: ignore[attr-defined]

    @property
    def v_full(self) -> float:
        """Velocity of the pipe just full, m/s."""
        return self.q_full / 1000.0 / self.full_area_m2

    def manning_flow(self, level_mm: FloatArray) -> FloatArray:
        """Manning's flow (L/s) at each depth (mm), part full."""
        area = wetted_area_m2(level_mm, self.diameter_mm)
        perimeter = _wetted_perimeter_m(level_mm, self.diameter_mm)
        radius = np.divide(area, perimeter, out=np.zeros_like(area), where=perimeter > 0)
        return np.asarray(1000.0 * area * radius ** (2 / 3) * math.sqrt(self.slope) / MANNING_N)

    def depth_for(self, flow: npt.ArrayLike) -> FloatArray:
        """Depth (mm) carrying each flow (L/s); above :attr:`q_max` the pipe surcharges.

        A surcharged pipe's level rises above the diameter by two diameters per
        ``q_max`` of excess flow (the head that pushes it through).
        """
        q = np.asarray(flow, np.float64)
        depth = np.interp(q, self._flows, self._depths)  # type: ignore[attr-defined]
        excess = np.maximum(q / self.q_max - 1.0, 0.0)
        return np.where(excess > 0, self.diameter_mm * (1.0 + 2.0 * excess), depth)

    def velocity_for(self, flow: FloatArray, depth: FloatArray) -> FloatArray:
        """Velocity (m/s) of each flow (L/s) through the wetted area of its depth (mm)."""
        area = wetted_area_m2(depth, self.diameter_mm)
        return np.divide(flow / 1000.0, area, out=np.zeros_like(flow), where=area > 0)


@dataclass(frozen=True)
class SiteParams:
    """The drawn, fixed properties of one site.

    Attributes:
        pipe: Its pipe.
        dwf_mean: Mean dry-weather flow, L/s.
        diurnal: Amplitudes and peak hours ``(a1, h1, a2, h2)`` of the daily
            pattern ``1 + a1 cos(2 pi (h - h1) / 24) + a2 cos(4 pi (h - h2) / 24)``.
        gain: Runoff inflow (L/s) per mm of rain in five minutes.
        lag: Ticks between rain and the start of the runoff.
        k_fast: Time constant of each of the two quick reservoirs, ticks.
        slow_share: Share of the runoff that goes through the slow reservoir.
        k_slow: Time constant of the slow reservoir, ticks.
        temp_base: Mean water temperature, °C.
        temp_amp: Amplitude of its daily cycle, °C.
        temp_storm: Drop of temperature when storm water is all the flow, °C.

    """

    pipe: Pipe
    dwf_mean: float
    diurnal: tuple[float, float, float, float]
    gain: float
    lag: int
    k_fast: float
    slow_share: float
    k_slow: float
    temp_base: float
    temp_amp: float
    temp_storm: float

    def diurnal_factor(self, hour: FloatArray) -> FloatArray:
        """The dry-weather pattern at each hour of the day (mean 1 over a day)."""
        a1, h1, a2, h2 = self.diurnal
        f = (
            1
            + a1 * np.cos(2 * np.pi * (hour - h1) / 24)
            + a2 * np.cos(4 * np.pi * (hour - h2) / 24)
        )
        return np.asarray(np.maximum(f, 0.2))


def draw_site(rng: np.random.Generator) -> SiteParams:
    """Draw one site's pipe, dry-weather pattern, catchment and temperature.

    Example:
        >>> p = draw_site(np.random.default_rng(0))
        >>> p.pipe.diameter_mm in DIAMETERS_MM, 0 < p.dwf_mean < p.pipe.q_full
        (True, True)

    """
    pipe = Pipe(
        float(rng.choice(DIAMETERS_MM)), float(np.exp(rng.uniform(np.log(0.002), np.log(0.01))))
    )
    return SiteParams(
        pipe=pipe,
        dwf_mean=float(rng.uniform(0.04, 0.12)) * pipe.q_full,
        # A night low about 3 am, a morning peak about 9 am and an evening one about 8 pm.
        diurnal=(
            float(rng.uniform(0.3, 0.4)),
            float(rng.uniform(13.0, 15.0)),
            float(rng.uniform(0.12, 0.2)),
            float(rng.uniform(8.0, 9.5)),
        ),
        gain=float(rng.uniform(0.25, 0.6)) * pipe.q_full,
        lag=int(rng.integers(1, 5)),
        k_fast=float(rng.uniform(2.0, 6.0)),
        slow_share=float(rng.uniform(0.1, 0.25)),
        k_slow=float(rng.uniform(60.0, 200.0)),
        temp_base=float(rng.uniform(11.0, 17.0)),
        temp_amp=float(rng.uniform(0.3, 0.8)),
        temp_storm=float(rng.uniform(2.0, 5.0)),
    )


def _reservoir(k: float) -> tuple[FloatArray, FloatArray]:
    """``lfilter`` coefficients of a linear reservoir of time constant ``k`` ticks (unit gain)."""
    a = 1.0 / max(k, 1.0)
    return np.array([a]), np.array([1.0, a - 1.0])


class Hydraulics:
    """The clean sensor channels of one site, a block of ticks at a time.

    Args:
        params: The site.
        noise: The random stream of per-tick noise (one row of draws per tick).
        start_hour: Hour of the day of tick 0.

    """

    def __init__(self, params: SiteParams, noise: np.random.Generator, start_hour: float) -> None:
        self.p = params
        self.noise = noise
        self.start_hour = start_hour
        self.tick = 0
        self.pending = np.zeros(params.lag)  # rain not yet arrived at the pipe
        b, a = _reservoir(params.k_fast)
        self.fast = [(b, a, np.zeros(1)), (b, a, np.zeros(1))]
        b, a = _reservoir(params.k_slow)
        self.slow = (b, a, np.zeros(1))
        self.wander = 0.0

    def _route(self, inflow: FloatArray) -> FloatArray:
        fast = inflow
        for i, (b, a, zi) in enumerate(self.fast):
            fast, zf = lfilter(b, a, fast, zi=zi)
            self.fast[i] = (b, a, zf)
        b, a, zi = self.slow
        slow, zf = lfilter(b, a, inflow, zi=zi)
        self.slow = (b, a, zf)
        share = self.p.slow_share
        return np.asarray((1 - share) * fast + share * slow)

    def block(self, rain: FloatArray) -> FloatArray:
        """The next ``len(rain)`` ticks' channels, ``(n, 5)`` in ``CHANNELS`` order, unrounded.

        Args:
            rain: Rain at the site in each tick, mm per five minutes.

        """
        p, n = self.p, len(rain)
        draws = self.noise.standard_normal((n, 5))
        hour = (self.start_hour + (self.tick + np.arange(n)) * TICK_S / 3600.0) % 24.0
        # The slow wander of the dry-weather flow: AR(1) on its logarithm.
        wander = lfilter([0.01], [1.0, -0.995], draws[:, 4], zi=[0.995 * self.wander])[0]
        self.wander = float(wander[-1])
        dwf = p.dwf_mean * p.diurnal_factor(hour) * np.exp(wander)
        arrived = np.concatenate([self.pending, rain])
        self.pending = arrived[n:]
        storm = self._route(p.gain * arrived[:n])
        q = dwf + storm
        depth = p.pipe.depth_for(q)
        velocity = p.pipe.velocity_for(q, depth)
        storm_share = storm / q
        temperature = (
            p.temp_base
            + p.temp_amp * np.cos(2 * np.pi * (hour - p.diurnal[1]) / 24)
            - p.temp_storm * storm_share
        )
        self.tick += n
        return np.stack(
            [
                np.maximum(velocity * (1 + _VELOCITY_NOISE * draws[:, 0]), 0.0),
                np.maximum(q * (1 + _FLOW_NOISE * draws[:, 1]), 0.0),
                np.maximum(depth + _LEVEL_NOISE_MM * draws[:, 2], 0.0),
                temperature + _TEMPERATURE_NOISE * draws[:, 3],
                rain,
            ],
            axis=1,
        )


class Storms:
    """Rain at a site: storms start at random and fall with a peaked, noisy profile.

    Args:
        rng: The random stream of the storms (one draw per tick, then each storm's shape).
        per_day: Mean number of storms starting a day.
        length: Inclusive range of a storm's duration, ticks.
        depth: Range of a storm's total rain, mm (drawn log-uniform).

    Example:
        >>> storms = Storms(np.random.default_rng(3), 2.0, (6, 12), (5.0, 5.0))
        >>> rain = np.concatenate([storms.block(288) for _ in range(30)])
        >>> bool(rain.min() >= 0), 1.2 < float(rain.sum()) / 30 / 5.0 < 2.8
        (True, True)

    """

    def __init__(
        self,
        rng: np.random.Generator,
        per_day: float,
        length: tuple[int, int],
        depth: tuple[float, float],
    ) -> None:
        self.rng = rng
        self.prob = per_day / TICKS_PER_DAY
        self.length = length
        self.depth = depth
        self.carry = np.zeros(0)  # rain of started storms that falls after this block

    def _profile(self, n: int, total: float) -> FloatArray:
        peak = self.rng.uniform(0.2, 0.6) * (n - 1)
        x = np.arange(n, dtype=np.float64)
        shape = np.where(x <= peak, (x + 1) / (peak + 1), (n - x) / (n - peak))
        shape *= self.rng.lognormal(0.0, 0.3, n)
        return np.asarray(total * shape / shape.sum())

    def block(self, n: int) -> FloatArray:
        """Rain in each of the next ``n`` ticks, mm per five minutes."""
        starts = np.flatnonzero(self.rng.random(n) < self.prob)
        rain = np.zeros(n + self.length[1])
        rain[: len(self.carry)] += self.carry
        lo, hi = self.depth
        for j in starts.tolist():
            length = int(self.rng.integers(self.length[0], self.length[1] + 1))
            total = float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))
            rain[j : j + length] += self._profile(length, total)
        self.carry = rain[n:]
        return rain[:n]
