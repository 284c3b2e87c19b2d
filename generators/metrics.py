"""Seeded, labelled simulator of noisy metric streams, one reading per minute.

Each of ``series`` series (ids ``"0"``, ``"1"``, ...) reads once every
``interval_s`` seconds of event time (60 by default) from ``start``. Values are
rounded to ``decimals`` places. Two shapes:

``spiky`` (the original noisy-metric pipeline's stream)
    ``sin(0.1 i)`` at tick ``i``, plus, with probability ``spike_prob`` per
    reading, an added amount uniform in ``0..spike_max`` (the original used
    probability 0.1; 0.01 here, so that a spike is rare). The clean signal
    moves at most 0.1 per reading within ``[-1, 1]``. A reading is labelled
    ``spike`` when the added amount is at least ``spike_label_min`` (default
    1.0, the signal's own amplitude: the reading leaves the curve by at least
    half the signal's whole range and ten times its largest step). Smaller
    additions stay labelled normal (``None``): they are the stream's noise,
    and an alert on one counts as a false alert. With the defaults a fifth
    of the additions are such noise.

``trend`` (a service metric with growth and a daily cycle)
    ``500 + 0.05 t + 200 sin(2 pi t / 1440) + U(-noise, noise)`` at ``t``
    minutes of event time (``noise`` 50), with labelled anomalies:

    * ``spike``: with probability ``spike_prob`` per reading, a jump of
      ``spike_size`` (150..300, three to six times the noise's half-width)
      up or down, for that reading only;
    * episodes, started with a small probability per reading and lasting a
      random number of readings (``*_len``, inclusive): ``level_shift``
      offsets the signal by ``level_shift_delta`` (random sign);
      ``stuck`` repeats the last value exactly (a stalled exporter);
      ``dropout`` emits nothing for a stretch, and the first reading after
      the gap carries the label (a missing reading can carry none). An
      episode overrides a spike that falls inside it.

Every series draws from its own random streams, seeded from ``(seed, series
index)`` with :class:`numpy.random.SeedSequence`, so a series does not depend
on how many series there are, on chunking or on partitioning. Events come in
event-time order, ``count`` in all (0: unbounded). Messages are JSON in the
metrics wire format (:data:`operators.serde.METRICS`).

Example:
    >>> cfg = MetricSimConfig(count=4, series=2, seed=1)
    >>> [(r.series, r.ts.minute, round(r.value, 4)) for r in iter_readings(cfg)]
    [('0', 0, 0.0), ('1', 0, 0.0), ('0', 1, 0.0998), ('1', 1, 0.0998)]
    >>> next(iter_messages(cfg))
    (b'0', b'{"series":"0","ts":"2024-01-01 00:00:00","value":0.0,"label":null}')

"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from generators.simkit import (
    ChunkEncoder,
    SimChunk,
    SimConfigError,
    interleave,
    settings_from_env,
    sim_messages,
)
from operators.config import Env
from operators.events import FloatArray, Reading
from operators.serde import METRICS

__all__ = [
    "KINDS",
    "LABELS",
    "SETTING_HELP",
    "SHAPES",
    "MetricSimConfig",
    "iter_messages",
    "iter_readings",
]

SHAPES: tuple[str, ...] = ("spiky", "trend")
#: Label of each label code; code 0 is a normal reading.
LABELS: tuple[str | None, ...] = (None, "spike", "level_shift", "stuck", "dropout")
#: The trend shape's episode kinds, in the order their probabilities are stacked.
KINDS: tuple[str, ...] = ("level_shift", "stuck", "dropout")
_SPIKE = LABELS.index("spike")
_KIND_LABEL = tuple(LABELS.index(k) for k in KINDS)
# The trend: level, growth per minute, daily amplitude and period in minutes.
TREND_LEVEL, TREND_SLOPE, TREND_AMP, TREND_PERIOD_MIN = 500.0, 0.05, 200.0, 1440.0
_CHUNK_EVENTS = 16_384
_MIN_START = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_START = datetime(2100, 1, 1, tzinfo=UTC)
_WHO = "metric simulator"

Range = tuple[float, float]
LenRange = tuple[int, int]

#: One line of help per setting (``vigil-generate metrics --help``).
SETTING_HELP = {
    "shape": "spiky: sin(0.1 i) plus rare spikes; trend: growth, daily cycle, noise, episodes",
    "series": "number of series, ids 0..N-1",
    "interval_s": "event-time seconds between a series' readings",
    "decimals": "decimal places of the values",
    "spike_prob": "probability per reading of an added spike",
    "spike_max": "spiky: largest added amount (uniform from 0)",
    "spike_label_min": "spiky: smallest added amount labelled 'spike' (smaller: normal noise)",
    "noise": "trend: half-width of the uniform noise",
    "spike_size": "trend: size of a spike (random sign)",
    "level_shift_delta": "trend: size of a level shift (random sign)",
    **{f"{k}_prob": f"trend: probability per reading that a {k} starts" for k in KINDS},
    **{f"{k}_len": f"trend: readings a {k} lasts" for k in KINDS},
}


@dataclass(frozen=True, slots=True)
class MetricSimConfig:
    """Settings of the metric simulator (see the module docstring).

    Attributes:
        shape: ``spiky`` or ``trend``.
        series: Number of series, ids ``"0"`` to ``str(series - 1)``.
        seed: Seed of every random stream (>= 0).
        count: Events in all (0: unbounded).
        start: Event time of the first tick, timezone-aware, in 2000..2099.
        interval_s: Event-time seconds between two readings of a series.
        decimals: Decimal places of every value.
        spike_prob: Probability per reading of an added spike (both shapes).
        spike_max: ``spiky``: largest added amount (uniform from 0).
        spike_label_min: ``spiky``: smallest added amount labelled ``spike``.
        noise: ``trend``: half-width of the uniform noise.
        spike_size: ``trend``: inclusive range of a spike's size (random sign).
        level_shift_prob: ``trend``: probability per reading that a level
            shift starts (likewise ``stuck_prob``, ``dropout_prob``).
        level_shift_len: ``trend``: inclusive range of readings a level shift
            lasts (likewise ``stuck_len``; ``dropout_len`` counts the missing readings).
        level_shift_delta: ``trend``: inclusive range of a level shift's size (random sign).

    Example:
        >>> MetricSimConfig(series=2).series_ids
        ('0', '1')
        >>> MetricSimConfig().tick_time(3).isoformat()
        '2024-01-01T00:03:00+00:00'

    """

    shape: str = "spiky"
    series: int = 3
    seed: int = 42
    count: int = 30_000
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    interval_s: float = 60.0
    decimals: int = 4
    spike_prob: float = 0.01
    spike_max: float = 5.0
    spike_label_min: float = 1.0
    noise: float = 50.0
    spike_size: Range = (150.0, 300.0)
    level_shift_prob: float = 5e-4
    level_shift_len: LenRange = (60, 240)
    level_shift_delta: Range = (150.0, 300.0)
    stuck_prob: float = 5e-4
    stuck_len: LenRange = (30, 120)
    dropout_prob: float = 5e-4
    dropout_len: LenRange = (10, 60)

    @property
    def series_ids(self) -> tuple[str, ...]:
        """The series ids, ``"0"`` to ``str(series - 1)``."""
        return tuple(str(i) for i in range(self.series))

    @property
    def interval_us(self) -> int:
        """``interval_s`` in whole microseconds, the resolution of event times."""
        return round(self.interval_s * 1_000_000)

    def kind_probs(self) -> tuple[float, ...]:
        """Per-reading start probability of each episode kind, in :data:`KINDS` order."""
        return tuple(float(getattr(self, f"{k}_prob")) for k in KINDS)

    def tick_time(self, tick: int) -> datetime:
        """Event time of tick ``tick``."""
        return self.start + timedelta(microseconds=tick * self.interval_us)

    def validate(self) -> None:
        """Check every setting.

        Raises:
            SimConfigError: naming the field, what was expected and what arrived.

        Example:
            >>> MetricSimConfig(shape="flat").validate()
            Traceback (most recent call last):
            ...
            generators.simkit.SimConfigError: metric simulator: shape: expected one of \
('spiky', 'trend'), got 'flat'

        """

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                got = getattr(self, name)
                raise SimConfigError(name, f"expected {expected}, got {got!r}", _WHO)

        need(self.shape in SHAPES, "shape", f"one of {SHAPES}")
        need(self.series >= 1, "series", "at least 1 series")
        need(self.seed >= 0, "seed", "an integer >= 0")
        need(self.count >= 0, "count", "an integer >= 0 (0: unbounded)")
        need(self.start.tzinfo is not None, "start", "a timezone-aware datetime")
        # The wire format's window of plausible event times.
        need(_MIN_START <= self.start < _MAX_START, "start", "a time in 2000..2099")
        need(1e-6 <= self.interval_s < math.inf, "interval_s", ">= 1e-6 seconds")
        need(0 <= self.decimals <= 6, "decimals", "0..6 decimal places")
        for name in ("spike_prob", *(f"{k}_prob" for k in KINDS)):
            need(0.0 <= getattr(self, name) <= 1.0, name, "a probability in [0, 1]")
        need(sum(self.kind_probs()) <= 1.0, "level_shift_prob", "probabilities summing to <= 1")
        need(0.0 < self.spike_max < math.inf, "spike_max", "a finite amount > 0")
        need(self.spike_label_min >= 0.0, "spike_label_min", "an amount >= 0")
        need(0.0 <= self.noise < math.inf, "noise", "a finite half-width >= 0")
        for k in KINDS:
            lo, hi = getattr(self, f"{k}_len")
            need(1 <= lo <= hi, f"{k}_len", "a range lo,hi of readings with 1 <= lo <= hi")
        for name in ("spike_size", "level_shift_delta"):
            lo, hi = getattr(self, name)
            need(0.0 <= lo <= hi < math.inf, name, "a range lo,hi with 0 <= lo <= hi")

    @classmethod
    def from_env(cls, env: Env | None = None) -> MetricSimConfig:
        """Read ``VIGIL_METRICS_SHAPE`` and the ``VIGIL_SIM_<FIELD>`` variables.

        Ranges are ``lo,hi``; ``VIGIL_SIM_START`` is ISO 8601 (UTC when no offset).

        Raises:
            ConfigError: naming the variable at fault.

        Example:
            >>> env = Env({"VIGIL_METRICS_SHAPE": "trend", "VIGIL_SIM_STUCK_LEN": "5,9"})
            >>> cfg = MetricSimConfig.from_env(env)
            >>> cfg.shape, cfg.stuck_len
            ('trend', (5, 9))

        """
        env = env or Env()
        base = cls()
        return settings_from_env(base, env, shape=env.choice("METRICS_SHAPE", base.shape, SHAPES))

    def chunks(self) -> Iterator[SimChunk]:
        """The simulated stream as columnar chunks, in event-time order.

        Raises:
            SimConfigError: when a setting is invalid.

        """
        self.validate()
        streams = [_MetricStream(self, i) for i in range(self.series)]
        return interleave(streams, self.count, max(16, _CHUNK_EVENTS // self.series))

    def encoder(self) -> ChunkEncoder:
        """The encoder of this stream's chunks, in the metrics wire format."""
        return ChunkEncoder(self.series_ids, LABELS, self.start, self.interval_us, METRICS)


@dataclass(slots=True)
class _Episode:
    kind: int  # index into KINDS
    length: int
    param: float
    done: int = 0


class _MetricStream:
    """One series' readings, a chunk of ticks at a time."""

    def __init__(self, cfg: MetricSimConfig, index: int) -> None:
        self.cfg = cfg
        self.draws = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(index, 0)))
        self.episodes = np.random.default_rng(
            np.random.SeedSequence(cfg.seed, spawn_key=(index, 1))
        )
        trend = cfg.shape == "trend"
        self.cum = np.cumsum(cfg.kind_probs()) if trend else np.zeros(1)
        self.active: _Episode | None = None
        self.last = math.nan
        self.tick = 0

    def next_chunk(self, n: int) -> tuple[FloatArray, npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
        """Values, label codes and emitted flags of the next ``n`` ticks."""
        cfg = self.cfg
        # One row of draws per tick, so the stream does not depend on chunking.
        u = self.draws.random((n, 5))
        ticks = (self.tick + np.arange(n)).astype(np.float64)
        spike = u[:, 0] < cfg.spike_prob
        labels = np.zeros(n, dtype=np.int8)
        emit = np.ones(n, dtype=bool)
        if cfg.shape == "spiky":
            base = np.sin(0.1 * ticks)
            added = np.where(spike, u[:, 1] * cfg.spike_max, 0.0)
            values = base + added
            labels[spike & (added >= cfg.spike_label_min)] = _SPIKE
        else:
            t = ticks * cfg.interval_s / 60.0
            base = (
                TREND_LEVEL
                + TREND_SLOPE * t
                + TREND_AMP * np.sin(2 * math.pi * t / TREND_PERIOD_MIN)
            )
            base += cfg.noise * (2.0 * u[:, 3] - 1.0)
            lo, hi = cfg.spike_size
            size = np.where(u[:, 2] < 0.5, -1.0, 1.0) * (lo + u[:, 1] * (hi - lo))
            values = base + np.where(spike, size, 0.0)
            labels[spike] = _SPIKE
        pos = 0
        if self.active is not None:
            pos = self._apply(self.active, 0, base, values, labels, emit)
        if self.cum[-1] > 0:
            for j in np.flatnonzero(u[:, 4] < self.cum[-1]).tolist():
                if j >= pos:
                    kind = int(np.searchsorted(self.cum, u[j, 4], side="right"))
                    prev = float(np.round(values[j - 1], cfg.decimals)) if j else self.last
                    pos = self._apply(
                        self._start(kind, prev, base[j]), j, base, values, labels, emit
                    )
        values = np.round(values, cfg.decimals)
        self.last = float(values[-1])
        self.tick += n
        return values, labels, emit

    def _start(self, kind: int, prev: float, current: float) -> _Episode:
        cfg, rng = self.cfg, self.episodes
        name = KINDS[kind]
        lo, hi = getattr(cfg, f"{name}_len")
        length = int(rng.integers(lo, hi + 1))
        param = 0.0
        if name == "stuck":
            param = prev if math.isfinite(prev) else float(np.round(current, cfg.decimals))
        elif name == "dropout":
            length += 1  # the gap, then the labelled first reading after it
        else:
            dlo, dhi = cfg.level_shift_delta
            param = float(rng.uniform(dlo, dhi)) * (-1.0 if rng.random() < 0.5 else 1.0)
        return _Episode(kind, length, param)

    def _apply(
        self,
        ep: _Episode,
        a: int,
        base: FloatArray,
        values: FloatArray,
        labels: npt.NDArray[np.int8],
        emit: npt.NDArray[np.bool_],
    ) -> int:
        """Write the part of ``ep`` that falls in this chunk from index ``a``; return its end."""
        b = min(a + ep.length - ep.done, len(values))
        name = KINDS[ep.kind]
        if name == "stuck":
            values[a:b] = ep.param
        elif name == "dropout":
            values[a:b] = base[a:b]
            emit[a:b] = np.arange(ep.done, ep.done + b - a) == ep.length - 1
        else:
            values[a:b] = base[a:b] + ep.param
        labels[a:b] = _KIND_LABEL[ep.kind]
        ep.done += b - a
        self.active = ep if ep.done < ep.length else None
        return b


def iter_messages(cfg: MetricSimConfig) -> Iterator[tuple[bytes, bytes]]:
    """The simulated stream as Kafka ``(key, value)`` pairs (see ``encode_reading``).

    Raises:
        SimConfigError: when a setting is invalid.

    """
    return sim_messages(cfg)


def iter_readings(cfg: MetricSimConfig) -> Iterator[Reading]:
    """The simulated stream as labelled :class:`Reading` objects.

    Example:
        >>> r = next(iter_readings(MetricSimConfig(shape="trend", seed=3)))
        >>> r.series, r.ts.isoformat(), 450 <= r.value <= 550, r.label
        ('0', '2024-01-01T00:00:00+00:00', True, None)

    """
    ids = cfg.series_ids
    for chunk in cfg.chunks():
        if not len(chunk):
            continue
        t0 = int(chunk.ticks[0])
        times = [cfg.tick_time(t) for t in range(t0, int(chunk.ticks[-1]) + 1)]
        for s, t, v, lab in zip(
            chunk.series.tolist(),
            chunk.ticks.tolist(),
            chunk.values.tolist(),
            chunk.labels.tolist(),
            strict=True,
        ):
            yield Reading(ids[s], times[t - t0], v, LABELS[lab])
