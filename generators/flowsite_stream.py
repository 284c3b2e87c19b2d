"""One simulated flow site's readings with its sensor faults, and the sites interleaved.

:class:`SiteStream` draws a site's clean channels from
:mod:`generators.flowsite_physics` and injects the fault episodes described in
:mod:`generators.flowsites`, a fixed block of ticks at a time, so that its
readings do not depend on how they are asked for. :func:`interleave_sites`
puts the emitted readings of several sites in event-time order.

Random streams of site ``i`` (``SeedSequence(seed, spawn_key=(i, k))``): ``k = 0``
the site's drawn properties, 1 the sensor noise, 2 the storms, 3 the per-tick
fault starts, 4 each fault's length, channel and size.

Example:
    >>> from generators.flowsites import FlowSiteConfig
    >>> values, labels, emit = SiteStream(FlowSiteConfig(), 0).next_chunk(3)
    >>> values.shape, labels.tolist(), emit.tolist()
    ((3, 5), [0, 0, 0], [True, True, True])

"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from generators.flowsite_physics import TICKS_PER_DAY, Hydraulics, Storms, draw_site
from generators.simkit import SimChunk
from operators.events import FloatArray
from operators.sitereading import CHANNELS

if TYPE_CHECKING:
    from generators.flowsites import FlowSiteConfig

__all__ = ["DECIMALS", "KINDS", "LABELS", "SiteStream", "interleave_sites", "site_rng"]

#: Fault kinds, in the order their probabilities are stacked.
KINDS: tuple[str, ...] = ("stuck", "zeros", "dropout", "spike", "drift", "velocity_mismatch")
#: Label of each label code; code 0 is a normal reading.
LABELS: tuple[str | None, ...] = (None, *KINDS)
#: Decimal places of each channel, in ``CHANNELS`` order.
DECIMALS: tuple[int, ...] = (3, 2, 1, 2, 2)
# Channels a fault of each kind may hit (indices into CHANNELS).
_VELOCITY, _FLOW, _LEVEL = 0, 1, 2
_FAULT_CHANNELS = {
    "stuck": (_VELOCITY, _FLOW, _LEVEL),
    "zeros": (_VELOCITY, _FLOW, _LEVEL),
    "dropout": (_VELOCITY,),
    "spike": (_VELOCITY, _FLOW, _LEVEL),
    "drift": (_VELOCITY, _LEVEL),
    "velocity_mismatch": (_VELOCITY,),
}
# Ticks a site's stream generates at once: its readings do not depend on chunking.
_BLOCK = 2016
_CHUNK_TICKS = 2048

Labels = npt.NDArray[np.int8]
Block = tuple[FloatArray, Labels, npt.NDArray[np.bool_]]


def site_rng(cfg: FlowSiteConfig, index: int, stream: int) -> np.random.Generator:
    """Random stream ``stream`` of site ``index`` (see the module docstring)."""
    return np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(index, stream)))


@dataclass(slots=True)
class _Episode:
    kind: str
    channel: int
    length: int
    param: float
    done: int = 0


class SiteStream:
    """One site's readings (faults applied), a block of ticks at a time.

    Args:
        cfg: The simulator's settings.
        index: The site's index.

    """

    def __init__(self, cfg: FlowSiteConfig, index: int) -> None:
        self.cfg = cfg
        self.params = draw_site(site_rng(cfg, index, 0))
        start = cfg.start.astimezone(UTC)
        hour = start.hour + start.minute / 60 + start.second / 3600
        self.hydraulics = Hydraulics(self.params, site_rng(cfg, index, 1), hour)
        self.storms = Storms(
            site_rng(cfg, index, 2), cfg.storms_per_day, cfg.storm_len, cfg.storm_depth
        )
        self.starts = site_rng(cfg, index, 3)
        self.episodes = site_rng(cfg, index, 4)
        self.cum = np.cumsum(cfg.kind_probs())
        pipe = self.params.pipe
        self.full = (pipe.v_full, pipe.q_full, pipe.diameter_mm, 1.0, 1.0)
        self.warmup = round(cfg.warmup_days * TICKS_PER_DAY)
        self.active: _Episode | None = None
        self.last = np.full(len(CHANNELS), math.nan)
        self.tick = 0
        self.buffer: Block = (
            np.zeros((0, len(CHANNELS))),
            np.zeros(0, np.int8),
            np.zeros(0, bool),
        )

    def next_chunk(self, n: int) -> Block:
        """Values ``(n, 5)``, label codes and emitted flags of the next ``n`` ticks."""
        while len(self.buffer[0]) < n:
            block = self._block()
            self.buffer = (
                np.concatenate([self.buffer[0], block[0]]),
                np.concatenate([self.buffer[1], block[1]]),
                np.concatenate([self.buffer[2], block[2]]),
            )
        values, labels, emit = self.buffer
        self.buffer = (values[n:], labels[n:], emit[n:])
        return values[:n], labels[:n], emit[:n]

    def _block(self) -> Block:
        n = _BLOCK
        values = _rounded(self.hydraulics.block(self.storms.block(n)))
        labels = np.zeros(n, np.int8)
        emit = np.ones(n, bool)
        u = self.starts.random(n)
        pos = 0
        if self.active is not None:
            pos = self._apply(self.active, 0, values, labels, emit)
        first = max(self.warmup - self.tick, 0)
        for j in np.flatnonzero(u < self.cum[-1]).tolist():
            if j >= max(pos, first):
                kind = KINDS[int(np.searchsorted(self.cum, u[j], side="right"))]
                prev = values[j - 1] if j else self.last
                pos = self._apply(self._start(kind, prev, values[j]), j, values, labels, emit)
        values = _rounded(values)
        self.last = values[-1]
        self.tick += n
        return values, labels, emit

    def _start(self, kind: str, prev: FloatArray, current: FloatArray) -> _Episode:
        cfg, rng = self.cfg, self.episodes
        lo, hi = getattr(cfg, f"{kind}_len")
        length = int(rng.integers(lo, hi + 1))
        options = _FAULT_CHANNELS[kind]
        channel = options[int(rng.integers(len(options)))]
        param = 0.0
        if kind == "stuck":
            param = float(prev[channel] if math.isfinite(prev[channel]) else current[channel])
        elif kind == "dropout":
            length += 1  # the gap, then the labelled first reading after it
        elif kind in ("spike", "drift"):
            size = float(rng.uniform(*getattr(cfg, f"{kind}_size"))) * self.full[channel]
            sign = -1.0 if kind == "drift" and rng.random() < 0.5 else 1.0
            param = sign * size
        elif kind == "velocity_mismatch":
            factor = float(rng.uniform(*cfg.mismatch_factor))
            param = factor if rng.random() < 0.5 else 1.0 / factor
        return _Episode(kind, channel, length, param)

    def _apply(
        self,
        ep: _Episode,
        a: int,
        values: FloatArray,
        labels: Labels,
        emit: npt.NDArray[np.bool_],
    ) -> int:
        """Write the part of ``ep`` that falls in this block from index ``a``; return its end."""
        b = min(a + ep.length - ep.done, len(values))
        step = np.arange(ep.done, ep.done + b - a)
        col = values[a:b, ep.channel]
        if ep.kind == "stuck":
            col[:] = ep.param
        elif ep.kind == "zeros":
            col[:] = 0.0
        elif ep.kind == "dropout":
            emit[a:b] = step == ep.length - 1
        elif ep.kind == "spike":
            col += ep.param
        elif ep.kind == "drift":
            col[:] = np.maximum(col + ep.param * (step + 1) / ep.length, 0.0)
        else:
            col *= ep.param
        labels[a:b] = LABELS.index(ep.kind)
        ep.done += b - a
        self.active = ep if ep.done < ep.length else None
        return b


def _rounded(values: FloatArray) -> FloatArray:
    return np.stack([np.round(values[:, c], d) for c, d in enumerate(DECIMALS)], axis=1)


def interleave_sites(streams: Sequence[SiteStream], count: int) -> Iterator[SimChunk]:
    """The sites' emitted readings in event-time order, ``count`` in all (0: unbounded).

    Each chunk's ``values`` is ``(n, 5)``, one row per reading.
    """
    k, emitted, tick = len(streams), 0, 0
    while not count or emitted < count:
        parts = [s.next_chunk(_CHUNK_TICKS) for s in streams]
        # Axis 0 ticks, axis 1 sites: row-major order is event-time order.
        idx = np.flatnonzero(np.stack([p[2] for p in parts], axis=1).ravel())
        if count:
            idx = idx[: count - emitted]
        values = np.stack([p[0] for p in parts], axis=1).reshape(-1, len(CHANNELS))[idx]
        labels = np.stack([p[1] for p in parts], axis=1).ravel()[idx]
        series, ticks = idx % k, tick + idx // k
        yield SimChunk(emitted, ticks.astype(np.int64), series.astype(np.int64), values, labels)
        emitted += len(idx)
        tick += _CHUNK_TICKS
