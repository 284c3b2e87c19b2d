"""Seeded, labelled simulator of sewer flow sites, one reading every five minutes.

Each of ``sites`` sites (ids ``"site-0"``, ``"site-1"``, ...) reports velocity
(m/s), flow (L/s), level (mm), water temperature (°C) and rainfall (mm in the five
minutes) from ``start``. The hydraulics (:mod:`generators.flowsite_physics`) keep
the channels physically consistent: a circular pipe of a per-site diameter, a daily
dry-weather pattern, storms whose runoff raises level, velocity and flow after a lag
and recedes over hours, and ``flow ~ velocity x wetted_area(level)`` within sensor
noise on every clean reading. Values are rounded to the sensors' resolution
(:data:`DECIMALS`).

Sensor faults come as episodes: after a clean warm-up of ``warmup_days``, an
episode of each kind starts with probability ``<kind>_prob`` per reading (at most
one at a time per site) and lasts a random number of readings (``<kind>_len``,
inclusive). Every reading of an episode carries its kind as label:

* ``stuck``: velocity, flow or level repeats its last value exactly;
* ``zeros``: velocity, flow or level reads 0;
* ``dropout``: no readings for a stretch; the first reading after the gap
  carries the label (a missing reading can carry none);
* ``spike``: velocity, flow or level jumps up by ``spike_size`` times its value in
  the full pipe, for one to a few readings;
* ``drift``: velocity or level drifts linearly away from the truth, reaching
  ``drift_size`` times its full-pipe value (random sign) at the episode's end;
* ``velocity_mismatch``: the velocity reads ``mismatch_factor`` (or its inverse)
  times the truth while flow and level stay right.

Every site draws from its own random streams, seeded from ``(seed, site index)``
with :class:`numpy.random.SeedSequence` and generated in fixed blocks, so a site's
readings depend neither on the number of sites nor on chunking or partitioning.
Events come in event-time order (every site's reading of a tick, in site order,
before the next tick), ``count`` in all (0: unbounded). :func:`site_arrays` gives
whole per-site arrays for training and evaluation without JSON;
:func:`iter_messages` the Kafka messages of :mod:`operators.sitereading`.
:class:`generators.source.SimulatorSource` feeds a flow the same bytes.

Example:
    >>> cfg = FlowSiteConfig(sites=2, count=4, seed=1)
    >>> [(r.site_id, r.ts.minute, r.label) for r in iter_readings(cfg)]
    [('site-0', 0, None), ('site-1', 0, None), ('site-0', 5, None), ('site-1', 5, None)]
    >>> key, value = next(iter_messages(cfg))
    >>> key, value[:58]
    (b'site-0', b'{"site_id":"site-0","ts":"2024-01-01 00:00:00","velocity":')
    >>> from generators.source import SimulatorSource
    >>> source = SimulatorSource(FlowSiteConfig(sites=4), partitions=3)
    >>> [source.series_of(p) for p in range(3)]
    [[0, 3], [], [1, 2]]

"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from generators.flowsite_physics import TICK_S, TICKS_PER_DAY, SiteParams, draw_site
from generators.flowsite_stream import (
    DECIMALS,
    KINDS,
    LABELS,
    SiteStream,
    interleave_sites,
    site_rng,
)
from generators.simkit import (
    ChunkEncoder,
    SimChunk,
    SimConfigError,
    settings_from_env,
    sim_messages,
)
from operators.config import Env
from operators.events import FloatArray, IntArray
from operators.sitereading import CHANNELS, SITES, SiteReading

__all__ = [
    "DECIMALS",
    "KINDS",
    "LABELS",
    "SETTING_HELP",
    "FlowSiteConfig",
    "SiteChunkEncoder",
    "SiteSeries",
    "iter_messages",
    "iter_readings",
    "site_arrays",
    "site_params",
]

_MIN_START = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_START = datetime(2100, 1, 1, tzinfo=UTC)
_WHO = "flow-site simulator"

Range = tuple[float, float]
LenRange = tuple[int, int]
Labels = npt.NDArray[np.int8]

#: One line of help per setting (``vigil-generate flowsites --help``).
SETTING_HELP = {
    "sites": "number of sites, ids site-0..site-N-1",
    "seed": "random seed (same seed, same bytes)",
    "count": "events in all (0: endless)",
    "start": "event time of the first reading, ISO 8601 (UTC when no offset)",
    "warmup_days": "days at the start without faults",
    "storms_per_day": "mean number of storms starting a day at each site",
    "storm_len": "readings a storm's rain lasts",
    "storm_depth": "total rain of a storm, mm (drawn log-uniform)",
    **{f"{k}_prob": f"probability per reading that a {k} episode starts" for k in KINDS},
    **{f"{k}_len": f"readings a {k} episode lasts" for k in KINDS},
    "spike_size": "size of a spike, times the channel's full-pipe value",
    "drift_size": "end point of a drift, times the channel's full-pipe value (random sign)",
    "mismatch_factor": "factor on the velocity in a velocity_mismatch (or its inverse)",
}


@dataclass(frozen=True, slots=True)
class FlowSiteConfig:
    """Settings of the flow-site simulator (see the module docstring).

    Attributes:
        sites: Number of sites, ids ``"site-0"`` to ``f"site-{sites - 1}"``.
        seed: Seed of every random stream (>= 0).
        count: Events in all (0: unbounded).
        start: Event time of the first reading, timezone-aware, in 2000..2099.
        warmup_days: Days at the start in which no fault starts.
        storms_per_day: Mean number of storms starting a day at each site.
        storm_len: Inclusive range of a storm's duration, readings.
        storm_depth: Range of a storm's total rain, mm (drawn log-uniform).
        stuck_prob: Probability per reading that a stuck episode starts (likewise
            ``zeros_prob``, ``dropout_prob``, ``spike_prob``, ``drift_prob``,
            ``velocity_mismatch_prob``).
        stuck_len: Inclusive range of readings a stuck episode lasts (likewise for
            each kind; ``dropout_len`` counts the missing readings).
        spike_size: Range of a spike's size, times the channel's full-pipe value.
        drift_size: Range of a drift's end point, times the channel's full-pipe value.
        mismatch_factor: Range of the velocity's factor in a velocity mismatch
            (applied as drawn or inverted, with equal chance).

    Example:
        >>> FlowSiteConfig(sites=2).series_ids
        ('site-0', 'site-1')
        >>> FlowSiteConfig().tick_time(3).isoformat()
        '2024-01-01T00:15:00+00:00'

    """

    sites: int = 4
    seed: int = 42
    count: int = 4 * 30 * TICKS_PER_DAY
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    warmup_days: float = 2.0
    storms_per_day: float = 0.3
    storm_len: LenRange = (12, 72)
    storm_depth: Range = (2.0, 30.0)
    stuck_prob: float = 5e-4
    zeros_prob: float = 3e-4
    dropout_prob: float = 3e-4
    spike_prob: float = 8e-4
    drift_prob: float = 6e-5
    velocity_mismatch_prob: float = 3e-4
    stuck_len: LenRange = (12, 96)
    zeros_len: LenRange = (6, 48)
    dropout_len: LenRange = (3, 36)
    spike_len: LenRange = (1, 3)
    drift_len: LenRange = (144, 576)
    velocity_mismatch_len: LenRange = (24, 144)
    spike_size: Range = (0.3, 0.8)
    drift_size: Range = (0.15, 0.4)
    mismatch_factor: Range = (0.3, 0.6)

    @property
    def series_ids(self) -> tuple[str, ...]:
        """The site ids, ``"site-0"`` to ``f"site-{sites - 1}"``."""
        return tuple(f"site-{i}" for i in range(self.sites))

    def kind_probs(self) -> tuple[float, ...]:
        """Per-reading start probability of each fault kind, in :data:`KINDS` order."""
        return tuple(float(getattr(self, f"{k}_prob")) for k in KINDS)

    def without_faults(self) -> FlowSiteConfig:
        """The same sites with every fault probability 0: the same readings, unfaulted.

        Faults draw from random streams of their own, so every reading outside a
        fault episode is the same with or without them.
        """
        zero: dict[str, Any] = {f"{k}_prob": 0.0 for k in KINDS}
        return replace(self, **zero)

    def tick_time(self, tick: int) -> datetime:
        """Event time of tick ``tick``."""
        return self.start + timedelta(seconds=tick * TICK_S)

    def validate(self) -> None:
        """Check every setting.

        Raises:
            SimConfigError: naming the field, what was expected and what arrived.

        Example:
            >>> FlowSiteConfig(spike_len=(3, 1)).validate()
            Traceback (most recent call last):
            ...
            generators.simkit.SimConfigError: flow-site simulator: spike_len: expected a range \
lo,hi of readings with 1 <= lo <= hi, got (3, 1)

        """

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                got = getattr(self, name)
                raise SimConfigError(name, f"expected {expected}, got {got!r}", _WHO)

        need(self.sites >= 1, "sites", "at least 1 site")
        need(self.seed >= 0, "seed", "an integer >= 0")
        need(self.count >= 0, "count", "an integer >= 0 (0: unbounded)")
        need(self.start.tzinfo is not None, "start", "a timezone-aware datetime")
        need(_MIN_START <= self.start < _MAX_START, "start", "a time in 2000..2099")
        need(0.0 <= self.warmup_days < math.inf, "warmup_days", "a finite number of days >= 0")
        need(0.0 <= self.storms_per_day <= 24.0, "storms_per_day", "0..24 storms a day")
        for k in KINDS:
            need(0.0 <= getattr(self, f"{k}_prob") <= 1.0, f"{k}_prob", "a probability in [0, 1]")
        need(sum(self.kind_probs()) <= 1.0, "stuck_prob", "probabilities summing to <= 1")
        for name in ("storm_len", *(f"{k}_len" for k in KINDS)):
            lo, hi = getattr(self, name)
            need(1 <= lo <= hi, name, "a range lo,hi of readings with 1 <= lo <= hi")
        for name, floor in (("storm_depth", 1e-3), ("spike_size", 0.0), ("drift_size", 0.0)):
            lo, hi = getattr(self, name)
            need(floor < lo <= hi < math.inf, name, f"a range lo,hi with {floor:g} < lo <= hi")
        lo, hi = self.mismatch_factor
        need(0.0 < lo <= hi < 1.0, "mismatch_factor", "a range lo,hi with 0 < lo <= hi < 1")

    @classmethod
    def from_env(cls, env: Env | None = None) -> FlowSiteConfig:
        """Read the ``VIGIL_SIM_<FIELD>`` variables (ranges as ``lo,hi``).

        Raises:
            ConfigError: naming the variable at fault.

        Example:
            >>> cfg = FlowSiteConfig.from_env(Env({"VIGIL_SIM_SITES": "6",
            ...                                     "VIGIL_SIM_DRIFT_LEN": "100,200"}))
            >>> cfg.sites, cfg.drift_len
            (6, (100, 200))

        """
        env = env or Env()
        return settings_from_env(cls(), env)

    def chunks(self) -> Iterator[SimChunk]:
        """The stream as columnar chunks in event-time order; ``values`` is ``(n, 5)``.

        Raises:
            SimConfigError: when a setting is invalid.

        """
        self.validate()
        return interleave_sites([SiteStream(self, i) for i in range(self.sites)], self.count)

    def encoder(self) -> SiteChunkEncoder:
        """The encoder of this stream's chunks."""
        return SiteChunkEncoder(self.series_ids, self.start)


def site_params(cfg: FlowSiteConfig, index: int) -> SiteParams:
    """The drawn pipe, catchment and patterns of site ``index``.

    Example:
        >>> site_params(FlowSiteConfig(), 0) == site_params(FlowSiteConfig(sites=9), 0)
        True

    """
    return draw_site(site_rng(cfg, index, 0))


class SiteChunkEncoder(ChunkEncoder):
    """Encodes chunks of flow-site readings, byte-identical to ``encode_site_reading``.

    Args:
        series_ids: Id of each site index (also the message key).
        start: Event time of tick 0, timezone-aware.

    """

    def __init__(self, series_ids: Sequence[str], start: datetime) -> None:
        super().__init__(series_ids, LABELS, start, TICK_S * 1_000_000, SITES)
        # The head ends where the timestamp starts; then each channel's separator and value.
        self.separators = [self.middle] + [b',"%b":' % c.encode() for c in CHANNELS[1:]]

    def encode(self, chunk: SimChunk) -> tuple[list[bytes], list[bytes]]:
        """Keys and values of the chunk's readings."""
        if not len(chunk):
            return [], []
        t0 = int(chunk.ticks[0])
        stamps = self.timestamps(t0, int(chunk.ticks[-1]))
        columns = [orjson.dumps(col.tolist())[1:-1].split(b",") for col in chunk.values.T]
        seps, heads, tails = self.separators, self.heads, self.tails
        rows = zip(*columns, strict=True)
        bodies = [b"".join(chain.from_iterable(zip(seps, row, strict=True))) for row in rows]
        series = chunk.series.tolist()
        values = [
            b"%b%b%b%b" % (heads[s], stamps[t - t0], body, tails[lab])
            for s, t, lab, body in zip(
                series, chunk.ticks.tolist(), chunk.labels.tolist(), bodies, strict=True
            )
        ]
        return [self.keys[s] for s in series], values


def iter_messages(cfg: FlowSiteConfig) -> Iterator[tuple[bytes, bytes]]:
    """The simulated stream as Kafka ``(key, value)`` pairs (:mod:`operators.sitereading`).

    Raises:
        SimConfigError: when a setting is invalid.

    """
    return sim_messages(cfg)


def iter_readings(cfg: FlowSiteConfig) -> Iterator[SiteReading]:
    """The simulated stream as labelled :class:`SiteReading` objects."""
    ids = cfg.series_ids
    start_ms = round(cfg.start.timestamp() * 1000)
    for chunk in cfg.chunks():
        for s, t, row, lab in zip(
            chunk.series.tolist(),
            chunk.ticks.tolist(),
            chunk.values.tolist(),
            chunk.labels.tolist(),
            strict=True,
        ):
            velocity, flow, level, temperature, rainfall = row
            ts_ms = start_ms + t * TICK_S * 1000
            yield SiteReading(
                ids[s], ts_ms, velocity, flow, level, temperature, rainfall, LABELS[lab]
            )


@dataclass(frozen=True, eq=False)
class SiteSeries:
    """The emitted readings of one site, as arrays.

    Attributes:
        site_id: The site.
        params: Its drawn pipe, catchment and patterns.
        ts_ms: Event time of each reading, epoch milliseconds.
        values: ``(n, 5)`` channels in ``CHANNELS`` order.
        labels: Label code of each reading, an index into :data:`LABELS`.

    """

    site_id: str
    params: SiteParams
    ts_ms: IntArray
    values: FloatArray
    labels: Labels

    @property
    def label_names(self) -> list[str | None]:
        """The label of each reading (``None``: normal)."""
        return [LABELS[c] for c in self.labels.tolist()]


def site_arrays(cfg: FlowSiteConfig, ticks: int) -> list[SiteSeries]:
    """The first ``ticks`` ticks of every site (``cfg.count`` is ignored).

    The readings are those of :func:`iter_messages`, site by site; a dropout's
    missing readings are absent.

    Raises:
        SimConfigError: when a setting is invalid.

    Example:
        >>> [s] = site_arrays(FlowSiteConfig(sites=1), 3)
        >>> s.site_id, s.values.shape, s.ts_ms.tolist()
        ('site-0', (3, 5), [1704067200000, 1704067500000, 1704067800000])

    """
    cfg.validate()
    start_ms = round(cfg.start.timestamp() * 1000)
    out = []
    for i, site in enumerate(cfg.series_ids):
        stream = SiteStream(cfg, i)
        values, labels, emit = stream.next_chunk(ticks)
        ts = start_ms + np.flatnonzero(emit).astype(np.int64) * TICK_S * 1000
        out.append(SiteSeries(site, stream.params, ts, values[emit], labels[emit]))
    return out
