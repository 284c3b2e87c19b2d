"""Seeded, labelled simulator of warehouse temperature sensors.

Each of ``sensors`` sensors (ids ``"0"``, ``"1"``, ...) reads once every
``interval_s`` seconds of event time. The normal signal is a slow per-sensor
baseline (a sinusoid of amplitude ``baseline_amp`` and period
``baseline_period_s`` with a random phase) plus uniform noise, so that every
normal reading stays within ``normal_lo..normal_hi``; with ``baseline_amp=0``
it is plain uniform ``normal_lo..normal_hi``, the original's signal. Values are
rounded to ``decimals`` places, the sensor's resolution.

Anomalies, each reading labelled with its kind (``None`` when normal):

* ``spike``: a faulty sensor reads uniform ``spike_lo..spike_hi`` with
  probability ``spike_prob`` per reading (the original's only anomaly).
* episodes, started on any sensor with a small probability per reading and
  lasting a random number of readings (``*_len``, inclusive range):
  ``drift`` rises (or falls) linearly to a peak of ``drift_delta`` °C at
  mid-episode and back, like a door left open; ``stuck`` repeats the last
  value exactly; ``dropout`` emits nothing for a stretch, and the first
  reading after the gap carries the label (a missing event can carry none);
  ``noise`` adds Gaussian noise of ``noise_std`` °C; ``level_shift`` offsets
  the signal by ``level_shift_delta`` °C with a random sign.

Every sensor draws from its own random streams, seeded from ``(seed, sensor
index)`` with :class:`numpy.random.SeedSequence`, so a sensor's readings do not
depend on how many sensors there are, on chunking or on partitioning. Events
come in event-time order: every sensor's reading of tick ``t`` (in sensor
order), then tick ``t + 1``; ``count`` events in all (0: unbounded).

Example:
    >>> cfg = SensorSimConfig(count=6, seed=1)
    >>> [(r.series, r.ts.second) for r in iter_readings(cfg)]
    [('0', 0), ('1', 0), ('2', 0), ('3', 0), ('4', 0), ('0', 1)]
    >>> all(21.0 <= r.value <= 28.0 for r in iter_readings(cfg))
    True
    >>> from operators.serde import encode_reading
    >>> next(iter_messages(cfg)) == encode_reading(next(iter_readings(cfg)))
    True

"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from generators.simkit import (
    ChunkEncoder,
    SimChunk,
    SimConfigError,
    interleave,
    settings_from_env,
)
from operators.config import Env
from operators.events import FloatArray, Reading
from operators.serde import SENSORS

__all__ = [
    "KINDS",
    "LABELS",
    "SensorSimConfig",
    "SimConfigError",
    "iter_chunks",
    "iter_messages",
    "iter_readings",
]

#: Label of each label code; code 0 is a normal reading.
LABELS: tuple[str | None, ...] = (
    None,
    "spike",
    "drift",
    "stuck",
    "dropout",
    "noise",
    "level_shift",
)
#: The episode kinds, in the order their probabilities are stacked.
KINDS: tuple[str, ...] = ("drift", "stuck", "dropout", "noise", "level_shift")
_SPIKE = LABELS.index("spike")
_KIND_LABEL = tuple(LABELS.index(k) for k in KINDS)
# Events generated per chunk (across sensors); the output does not depend on it.
_CHUNK_EVENTS = 16_384

_MIN_START = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_START = datetime(2100, 1, 1, tzinfo=UTC)

Range = tuple[float, float]
LenRange = tuple[int, int]


@dataclass(frozen=True, slots=True)
class SensorSimConfig:
    """Settings of the sensor simulator (see the module docstring).

    Attributes:
        sensors: Number of sensors, ids ``"0"`` to ``str(sensors - 1)``.
        faulty: Ids of the sensors that spike.
        spike_prob: Probability that a faulty sensor's reading is a spike.
        normal_lo: Lowest normal temperature, °C.
        normal_hi: Highest normal temperature, °C.
        spike_lo: Lowest spike temperature, °C.
        spike_hi: Highest spike temperature, °C.
        baseline_amp: Amplitude of the slow baseline, °C (0: uniform noise only).
        baseline_period_s: Period of the slow baseline, seconds.
        decimals: Decimal places of every value.
        seed: Seed of every random stream (>= 0).
        count: Events in all (0: unbounded).
        start: Event time of the first tick, timezone-aware, in 2000..2099.
        interval_s: Event-time seconds between two readings of a sensor
            (microsecond resolution).
        drift_prob: Probability per reading that a drift starts (likewise
            ``stuck_prob``, ``dropout_prob``, ``noise_prob``, ``level_shift_prob``).
        drift_len: Inclusive range of readings a drift lasts (likewise the other
            ``*_len``; a dropout's length counts the missing readings).
        drift_delta: Inclusive range of a drift's peak, °C (random sign).
        noise_std: Inclusive range of a noise burst's standard deviation, °C.
        level_shift_delta: Inclusive range of a level shift, °C (random sign).

    Example:
        >>> SensorSimConfig.original().drift_prob
        0.0
        >>> SensorSimConfig(sensors=3).sensor_ids
        ('0', '1', '2')

    """

    sensors: int = 5
    faulty: tuple[str, ...] = ("0",)
    spike_prob: float = 0.03
    normal_lo: float = 21.0
    normal_hi: float = 28.0
    spike_lo: float = 65.0
    spike_hi: float = 85.0
    baseline_amp: float = 1.5
    baseline_period_s: float = 86_400.0
    decimals: int = 2
    seed: int = 42
    count: int = 100_000
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    interval_s: float = 1.0
    drift_prob: float = 3e-4
    drift_len: LenRange = (60, 300)
    drift_delta: Range = (2.0, 6.0)
    stuck_prob: float = 3e-4
    stuck_len: LenRange = (10, 60)
    dropout_prob: float = 3e-4
    dropout_len: LenRange = (10, 60)
    noise_prob: float = 3e-4
    noise_len: LenRange = (10, 60)
    noise_std: Range = (3.0, 6.0)
    level_shift_prob: float = 3e-4
    level_shift_len: LenRange = (30, 120)
    level_shift_delta: Range = (4.0, 8.0)

    @classmethod
    def original(cls, **overrides: Any) -> SensorSimConfig:
        """The original generator: uniform 21-28 °C, spikes on one sensor, nothing else.

        Values are still rounded to ``decimals`` places, the wire format's
        resolution; ``overrides`` replace any other setting.

        Example:
            >>> cfg = SensorSimConfig.original(seed=1)
            >>> cfg.baseline_amp, cfg.spike_prob, sum(cfg.kind_probs()), cfg.seed
            (0.0, 0.03, 0.0, 1)

        """
        base = cls(
            baseline_amp=0.0,
            drift_prob=0.0,
            stuck_prob=0.0,
            dropout_prob=0.0,
            noise_prob=0.0,
            level_shift_prob=0.0,
        )
        return replace(base, **overrides)

    @property
    def sensor_ids(self) -> tuple[str, ...]:
        """The sensor ids, ``"0"`` to ``str(sensors - 1)``."""
        return tuple(str(i) for i in range(self.sensors))

    @property
    def series_ids(self) -> tuple[str, ...]:
        """The sensor ids (the :class:`~generators.simkit.Simulation` name)."""
        return self.sensor_ids

    def chunks(self) -> Iterator[SimChunk]:
        """The simulated stream (see :func:`iter_chunks`)."""
        return iter_chunks(self)

    def encoder(self) -> ChunkEncoder:
        """The encoder of this stream's chunks, in the sensors wire format.

        Example:
            >>> SensorSimConfig(interval_s=0.5).encoder().timestamps(1, 2)
            [b'2024-01-01 00:00:00.500000', b'2024-01-01 00:00:01']

        """
        return ChunkEncoder(self.sensor_ids, LABELS, self.start, self.interval_us, SENSORS)

    def kind_probs(self) -> tuple[float, ...]:
        """Per-reading start probability of each episode kind, in :data:`KINDS` order."""
        return tuple(float(getattr(self, f"{k}_prob")) for k in KINDS)

    @property
    def interval_us(self) -> int:
        """``interval_s`` in whole microseconds, the resolution of event times."""
        return round(self.interval_s * 1_000_000)

    def tick_time(self, tick: int) -> datetime:
        """Event time of tick ``tick``.

        Example:
            >>> SensorSimConfig(interval_s=0.25).tick_time(3).isoformat()
            '2024-01-01T00:00:00.750000+00:00'

        """
        return self.start + timedelta(microseconds=tick * self.interval_us)

    def validate(self) -> None:
        """Check every setting.

        Raises:
            SimConfigError: naming the field, what was expected and what arrived.

        Example:
            >>> SensorSimConfig(spike_prob=2.0).validate()
            Traceback (most recent call last):
            ...
            generators.simkit.SimConfigError: sensor simulator: spike_prob: expected a \
probability in [0, 1], got 2.0

        """

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                got = getattr(self, name)
                raise SimConfigError(name, f"expected {expected}, got {got!r}", "sensor simulator")

        need(self.sensors >= 1, "sensors", "at least 1 sensor")
        need(set(self.faulty) <= set(self.sensor_ids), "faulty", "sensor ids among 0..sensors-1")
        for name in ("spike_prob", *(f"{k}_prob" for k in KINDS)):
            need(0.0 <= getattr(self, name) <= 1.0, name, "a probability in [0, 1]")
        need(sum(self.kind_probs()) <= 1.0, "drift_prob", "episode probabilities summing to <= 1")
        need(self.normal_lo < self.normal_hi, "normal_hi", f"> normal_lo={self.normal_lo}")
        need(self.spike_lo <= self.spike_hi, "spike_hi", f">= spike_lo={self.spike_lo}")
        span = self.normal_hi - self.normal_lo
        need(0.0 <= 2 * self.baseline_amp < span, "baseline_amp", f"in [0, {span / 2})")
        need(self.baseline_period_s > 0, "baseline_period_s", "> 0 seconds")
        need(0 <= self.decimals <= 6, "decimals", "0..6 decimal places")
        need(self.seed >= 0, "seed", "an integer >= 0")
        need(self.count >= 0, "count", "an integer >= 0 (0: unbounded)")
        need(self.start.tzinfo is not None, "start", "a timezone-aware datetime")
        # The wire format's window of plausible event times.
        need(_MIN_START <= self.start < _MAX_START, "start", "a time in 2000..2099")
        need(1e-6 <= self.interval_s < math.inf, "interval_s", ">= 1e-6 seconds")
        for k in KINDS:
            lo, hi = getattr(self, f"{k}_len")
            need(1 <= lo <= hi, f"{k}_len", "a range lo,hi of readings with 1 <= lo <= hi")
        for name in ("drift_delta", "noise_std", "level_shift_delta"):
            lo, hi = getattr(self, name)
            need(0.0 <= lo <= hi, name, "a range lo,hi of °C with 0 <= lo <= hi")

    @classmethod
    def from_env(cls, env: Env | None = None, preset: str = "default") -> SensorSimConfig:
        """Read ``VIGIL_SIM_<FIELD>`` variables (field name upper-cased).

        ``VIGIL_SIM_PRESET=original`` (or ``preset="original"`` when that
        variable is unset) starts from :meth:`original` instead of the
        defaults. Ranges are ``lo,hi``; ``VIGIL_SIM_FAULTY`` is a comma list of
        sensor ids; ``VIGIL_SIM_START`` is ISO 8601 (UTC when no offset).

        Raises:
            ConfigError: naming the variable at fault.

        Example:
            >>> SensorSimConfig.from_env(Env({"VIGIL_SIM_NOISE_LEN": "5,9"})).noise_len
            (5, 9)
            >>> SensorSimConfig.from_env(Env({"VIGIL_SIM_SENSORS": "2", "VIGIL_SIM_FAULTY": "4"}))
            Traceback (most recent call last):
            ...
            operators.config.ConfigError: VIGIL_SIM_FAULTY: expected sensor ids among \
0..sensors-1, got ('4',)

        """
        env = env or Env()
        preset = env.choice("SIM_PRESET", preset, ["default", "original"])
        return settings_from_env(cls.original() if preset == "original" else cls(), env)


@dataclass(slots=True)
class _Episode:
    kind: int  # index into KINDS
    length: int
    param: float
    done: int = 0


class _SensorStream:
    """One sensor's readings, a chunk of ticks at a time."""

    def __init__(self, cfg: SensorSimConfig, index: int) -> None:
        self.cfg = cfg
        self.faulty = str(index) in cfg.faulty
        self.signal = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(index, 0)))
        self.episodes = np.random.default_rng(
            np.random.SeedSequence(cfg.seed, spawn_key=(index, 1))
        )
        self.phase = 2 * math.pi * float(self.episodes.random())
        self.cum = np.cumsum(cfg.kind_probs())
        self.active: _Episode | None = None
        self.last = math.nan
        self.tick = 0

    def next_chunk(self, n: int) -> tuple[FloatArray, npt.NDArray[np.int8], npt.NDArray[np.bool_]]:
        """Values, label codes and emitted flags of the next ``n`` ticks."""
        cfg = self.cfg
        # One row of draws per tick, so the stream does not depend on chunking.
        u = self.signal.random((n, 4))
        amp = cfg.baseline_amp
        base = cfg.normal_lo + u[:, 0] * (cfg.normal_hi - cfg.normal_lo - 2 * amp)
        if amp:
            t = (self.tick + np.arange(n)) * cfg.interval_s
            base += amp * (1.0 + np.sin(2 * math.pi * t / cfg.baseline_period_s + self.phase))
        values = base.copy()
        labels = np.zeros(n, dtype=np.int8)
        emit = np.ones(n, dtype=bool)
        if self.faulty and cfg.spike_prob > 0:
            spike = u[:, 1] < cfg.spike_prob
            values[spike] = cfg.spike_lo + u[spike, 2] * (cfg.spike_hi - cfg.spike_lo)
            labels[spike] = _SPIKE
        pos = 0
        if self.active is not None:
            pos = self._apply(self.active, 0, base, values, labels, emit)
        if self.cum[-1] > 0:
            for j in np.flatnonzero(u[:, 3] < self.cum[-1]).tolist():
                if j >= pos:
                    kind = int(np.searchsorted(self.cum, u[j, 3], side="right"))
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
            dlo, dhi = getattr(cfg, "noise_std" if name == "noise" else f"{name}_delta")
            param = float(rng.uniform(dlo, dhi))
            if name != "noise" and rng.random() < 0.5:
                param = -param
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
        k = np.arange(ep.done, ep.done + b - a)
        name = KINDS[ep.kind]
        if name == "drift":
            offset = ep.param * (1.0 - np.abs(2.0 * (k + 1) / (ep.length + 1) - 1.0))
            values[a:b] = base[a:b] + offset
        elif name == "stuck":
            values[a:b] = ep.param
        elif name == "dropout":
            values[a:b] = base[a:b]
            emit[a:b] = k == ep.length - 1
        elif name == "noise":
            values[a:b] = base[a:b] + ep.param * self.episodes.standard_normal(b - a)
        else:
            values[a:b] = base[a:b] + ep.param
        labels[a:b] = _KIND_LABEL[ep.kind]
        ep.done += b - a
        self.active = ep if ep.done < ep.length else None
        return b


def iter_chunks(cfg: SensorSimConfig) -> Iterator[SimChunk]:
    """The simulated stream as columnar chunks, in event-time order.

    Raises:
        SimConfigError: when ``cfg`` is invalid.

    """
    cfg.validate()
    streams = [_SensorStream(cfg, i) for i in range(cfg.sensors)]
    return interleave(streams, cfg.count, max(16, _CHUNK_EVENTS // cfg.sensors))


def iter_messages(cfg: SensorSimConfig) -> Iterator[tuple[bytes, bytes]]:
    """The simulated stream as Kafka ``(key, value)`` pairs (see :func:`encode_reading`).

    Example:
        >>> next(iter_messages(SensorSimConfig(seed=3)))
        (b'0', b'{"sensor_id":"0","ts":"2024-01-01 00:00:00","temp":25.0,"label":null}')

    """
    encoder = cfg.encoder()
    for chunk in iter_chunks(cfg):
        keys, values = encoder.encode(chunk)
        yield from zip(keys, values, strict=True)


def iter_readings(cfg: SensorSimConfig) -> Iterator[Reading]:
    """The simulated stream as :class:`Reading` objects, labelled.

    Example:
        >>> r = next(iter_readings(SensorSimConfig(seed=3)))
        >>> r.series, r.ts.isoformat(), r.label
        ('0', '2024-01-01T00:00:00+00:00', None)

    """
    ids = cfg.sensor_ids
    for chunk in iter_chunks(cfg):
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
