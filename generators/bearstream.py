"""One bear's readings, a block of days at a time (the engine of :mod:`generators.bears`).

A :class:`BearStream` draws whole blocks of :data:`BLOCK_DAYS` days from its own random
streams, so its readings depend only on the seed and the bear's index, never on how
the caller asks for them.

Example:
    >>> from generators.bears import BearSimConfig
    >>> values, labels, emit = BearStream(BearSimConfig(), 0).next_chunk(8)
    >>> values.shape, labels.tolist(), bool(emit.all())
    ((8,), [0, 0, 0, 0, 0, 0, 0, 0], True)

"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from generators.hibernation import Season
from operators.events import BoolArray, FloatArray

if TYPE_CHECKING:
    from generators.bears import BearSimConfig

__all__ = ["BLOCK_DAYS", "LABELS", "BearStream"]

#: Label of each label code; code 0 is a normal reading.
LABELS: tuple[str | None, ...] = (None, "halved", "spike", "early_arousal", "missing")
HALVED, SPIKE, AROUSAL, MISSING = 1, 2, 3, 4
#: Days drawn at once; a bear's readings do not depend on it being fixed.
BLOCK_DAYS = 64

Labels = npt.NDArray[np.int8]


@dataclass(slots=True)
class _Episode:
    kind: int  # AROUSAL or MISSING
    length: int  # readings, for MISSING the gap plus the labelled reading after it
    rise: float  # AROUSAL: highest rise, bpm
    done: int = 0


class BearStream:
    """One bear's readings: values, label codes and emitted flags, tick by tick.

    Args:
        cfg: The simulator settings (valid).
        index: The bear's index; its random streams are seeded from ``(cfg.seed, index)``.

    """

    def __init__(self, cfg: BearSimConfig, index: int) -> None:
        self.cfg = cfg
        self.index = index
        seq = np.random.SeedSequence(cfg.seed, spawn_key=(index,))
        draws, episodes, bear = seq.spawn(3)
        self.draws = np.random.default_rng(draws)
        self.episodes = np.random.default_rng(episodes)
        rng = np.random.default_rng(bear)
        factor = 1.0 + cfg.level_sd * float(np.clip(rng.standard_normal(), -3.0, 3.0))
        shift = cfg.hibernation_sd * float(np.clip(rng.standard_normal(), -3.0, 3.0))
        self.season = cfg.season().scaled(factor, shift)
        self.years: dict[int, Season] = {}
        self.first_day = np.datetime64(cfg.start.date(), "D")
        self.day = 0  # the next day to draw
        self.active: _Episode | None = None
        # First tick an episode may start at: a normal day separates two episodes.
        self.free_from = 0
        # The raw days before the start, so the rolling mean is full from day 0.
        k = cfg.smooth_days - 1
        self.history = self._raw(np.arange(-k, 0), self.draws.standard_normal(k))
        self.values: FloatArray = np.empty(0)
        self.labels: Labels = np.empty(0, np.int8)
        self.emit: BoolArray = np.empty(0, bool)

    def next_chunk(self, n: int) -> tuple[FloatArray, Labels, BoolArray]:
        """Values, label codes and emitted flags of the next ``n`` ticks."""
        while len(self.values) < n:
            values, labels, emit = self._block()
            self.values = np.concatenate([self.values, values])
            self.labels = np.concatenate([self.labels, labels])
            self.emit = np.concatenate([self.emit, emit])
        out = self.values[:n], self.labels[:n], self.emit[:n]
        self.values, self.labels, self.emit = self.values[n:], self.labels[n:], self.emit[n:]
        return out

    def _season_of(self, year: int) -> Season:
        """The bear's curve in calendar ``year``: its dates moved by ``N(0, timing_sd)`` days."""
        season = self.years.get(year)
        if season is None:
            seq = np.random.SeedSequence(self.cfg.seed, spawn_key=(self.index, 3, year))
            moves = self.cfg.timing_sd * np.clip(
                np.random.default_rng(seq).standard_normal(3), -3.0, 3.0
            )
            season = self.season.shifted(*(float(m) for m in moves))
            self.years[year] = season
        return season

    def _curve(self, days: npt.NDArray[np.int64]) -> tuple[FloatArray, BoolArray]:
        """The yearly curve and whether the bear is in deep hibernation on ``days``."""
        dates = self.first_day + days
        years = dates.astype("datetime64[Y]")
        doy = (dates - years).astype(np.float64)
        year = years.astype(np.int64) + 1970
        curve = np.empty(len(days))
        deep = np.empty(len(days), bool)
        for y in np.unique(year).tolist():
            m = year == y
            season = self._season_of(y)
            curve[m] = season.curve(doy[m])
            deep[m] = season.hibernating(doy[m])
        return curve, deep

    def _raw(self, days: npt.NDArray[np.int64], z: FloatArray) -> FloatArray:
        """The raw daily heart rate: the curve times ``1 + day_wander * z``."""
        return self._curve(days)[0] * (1.0 + self.cfg.day_wander * z)

    def _block(self) -> tuple[FloatArray, Labels, BoolArray]:
        cfg, spd, nd = self.cfg, self.cfg.samples_per_day, BLOCK_DAYS
        days = self.day + np.arange(nd)
        # Every block draws the same amounts in the same order.
        raw_z = self.draws.standard_normal(nd)
        day_z = self.draws.standard_normal(nd)
        sample_z = self.draws.standard_normal((nd, spd))
        u = self.draws.random((nd, spd, 3))
        day_u = self.draws.random((nd, 2))
        _, deep = self._curve(days)
        raw = np.concatenate([self.history, self._raw(days, raw_z)])
        k = cfg.smooth_days
        sums = np.cumsum(np.concatenate([[0.0], raw]))
        smooth = (sums[k:] - sums[:-k]) / k
        self.history = raw[len(raw) - (k - 1) :]
        daily = smooth + cfg.day_noise * day_z
        base = (daily[:, None] + cfg.sample_noise * sample_z).ravel()
        allowed = np.repeat(days >= cfg.clean_days, spd)
        point = (u[..., 0].ravel() < cfg.point_prob) & allowed
        halved = u[..., 1].ravel() < cfg.halved_share
        lo, hi = cfg.spike_factor
        factor = lo + u[..., 2].ravel() * (hi - lo)
        values = np.where(point, np.where(halved, base / 2.0, base * factor), base)
        labels = np.where(point, np.where(halved, HALVED, SPIKE), 0).astype(np.int8)
        emit = np.ones(len(base), bool)
        pos = 0
        if self.active is not None:
            pos = self._apply(self.active, 0, base, values, labels, emit)
        missing = day_u[:, 1] < cfg.missing_prob
        arousal = (day_u[:, 0] < cfg.arousal_prob) & deep
        for j in np.flatnonzero((missing | arousal) & (days >= cfg.clean_days)).tolist():
            if j * spd >= pos and (self.day + j) * spd >= self.free_from:
                ep = self._start(MISSING if missing[j] else AROUSAL)
                pos = self._apply(ep, j * spd, base, values, labels, emit)
        self.day += nd
        return np.round(values, cfg.decimals), labels, emit

    def _start(self, kind: int) -> _Episode:
        cfg, rng = self.cfg, self.episodes
        spd = cfg.samples_per_day
        if kind == MISSING:
            lo, hi = cfg.missing_len
            return _Episode(kind, int(rng.integers(lo, hi + 1)) * spd + 1, 0.0)
        lo, hi = cfg.arousal_len
        length = int(rng.integers(lo, hi + 1)) * spd
        rlo, rhi = cfg.arousal_rise
        return _Episode(kind, length, float(rng.uniform(rlo, rhi)))

    def _apply(
        self,
        ep: _Episode,
        a: int,
        base: FloatArray,
        values: FloatArray,
        labels: Labels,
        emit: BoolArray,
    ) -> int:
        """Write the part of ``ep`` that falls in this block from index ``a``; return its end."""
        b = min(a + ep.length - ep.done, len(values))
        j = np.arange(ep.done, ep.done + b - a)
        if ep.kind == AROUSAL:
            values[a:b] = base[a:b] + ep.rise * np.sin(math.pi * (j + 0.5) / ep.length)
        else:
            values[a:b] = base[a:b]
            emit[a:b] = j == ep.length - 1
        labels[a:b] = ep.kind
        ep.done += b - a
        self.active = ep if ep.done < ep.length else None
        if self.active is None:
            self.free_from = self.day * self.cfg.samples_per_day + b + self.cfg.samples_per_day
        return b
