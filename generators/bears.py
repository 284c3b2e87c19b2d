"""Seeded, labelled simulator of bear heart rates through the year, four readings a day.

Each of ``bears`` bears (ids ``"bear-0"``, ``"bear-1"``, ...) reads ``samples_per_day``
times a day (00:00, 06:00, 12:00 and 18:00 UTC by default) from ``start``. As in the
original bear pipeline, a reading is built from a daily series:

1. the yearly curve of :class:`generators.hibernation.Season` (per bear: active levels
   scaled by ``1 + N(0, level_sd)``, winter level ``+ N(0, hibernation_sd)``; per bear
   and calendar year: spring rise, autumn decline and den entry each moved by
   ``N(0, timing_sd)`` days), times ``1 + N(0, day_wander)`` day by day (the raw daily
   heart rate the original replayed);
2. a trailing rolling mean over ``smooth_days`` (10) days;
3. plus ``N(0, day_noise)`` (1.35) per day; each reading plus ``N(0, sample_noise)`` (0.27).

Values are rounded to ``decimals`` places. The first ``clean_days`` days (a year) hold no
anomaly (the original trained on them); afterwards, labelled anomalies:

* ``halved`` / ``spike``: with probability ``point_prob`` (0.01) per reading, the value
  halved (a ``halved_share`` of them, a third as in the original) or multiplied by
  ``spike_factor`` (1.5..3), for that reading only;
* ``early_arousal``: with probability ``arousal_prob`` per day of deep hibernation, an
  episode of ``arousal_len`` days in which the heart rate rises by up to
  ``arousal_rise`` bpm and falls back (a half sine over the episode), labelled throughout;
* ``missing``: with probability ``missing_prob`` per day, ``missing_len`` days with no
  reading at all; the first reading after the gap carries the label (a missing reading
  can carry none).

An episode overrides a point anomaly that falls inside it. Every bear draws from its own
random streams, seeded from ``(seed, bear index)`` with :class:`numpy.random.SeedSequence`,
whole blocks of days at a time, so a bear does not depend on how many bears there are,
on chunking or on partitioning. Events come in event-time order, ``count`` in all (0:
unbounded). Messages are JSON in the bears wire format (:data:`operators.serde.BEARS`).
:func:`bear_series` gives whole per-bear arrays for training and evaluation.

Example:
    >>> cfg = BearSimConfig(bears=2, count=4)
    >>> [(r.series, r.ts.hour, 15 < r.value < 25) for r in iter_readings(cfg)]
    [('bear-0', 0, True), ('bear-1', 0, True), ('bear-0', 6, True), ('bear-1', 6, True)]
    >>> next(iter_messages(cfg))[1][:60]
    b'{"bear_id":"bear-0","ts":"2024-01-01 00:00:00","heart_rate":'

"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from generators.bearstream import LABELS, BearStream
from generators.hibernation import Season
from generators.simkit import (
    ChunkEncoder,
    SimChunk,
    SimConfigError,
    interleave,
    settings_from_env,
    sim_messages,
)
from operators.config import Env
from operators.events import FloatArray, IntArray, Reading, datetime_to_ms
from operators.serde import BEARS

__all__ = [
    "LABELS",
    "SETTING_HELP",
    "BearSeries",
    "BearSimConfig",
    "bear_series",
    "iter_messages",
    "iter_readings",
]

_DAY_US = 86_400_000_000
_MIN_START = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_START = datetime(2090, 1, 1, tzinfo=UTC)
_CHUNK_EVENTS = 16_384
_WHO = "bear simulator"

#: The config field of each :class:`Season` field.
_SEASON_FIELDS = {
    "hibernation": "hibernation_bpm",
    "active": "active_bpm",
    "summer_peak": "summer_peak_bpm",
    "pre_den": "pre_den_bpm",
    "rise_start": "rise_start_day",
    "rise_days": "rise_days",
    "fall_start": "fall_start_day",
    "den_entry": "den_entry_day",
    "entry_days": "entry_days",
}

Range = tuple[float, float]
LenRange = tuple[int, int]

#: One line of help per setting (``vigil-generate bears --help``).
SETTING_HELP = {
    "bears": "number of bears, ids bear-0..bear-N-1",
    "samples_per_day": "readings per bear per day (a divisor of 86400)",
    "hibernation_bpm": "winter heart rate, bpm",
    "active_bpm": "heart rate at the start and end of the active season, bpm",
    "summer_peak_bpm": "extra heart rate at midsummer, bpm",
    "pre_den_bpm": "heart rate reached by the autumn decline before den entry, bpm",
    "rise_start_day": "day of the year the spring rise starts (0: 1 January)",
    "rise_days": "days the spring rise takes",
    "fall_start_day": "day of the year the autumn decline starts",
    "den_entry_day": "day of the year of den entry (the sharp fall starts)",
    "entry_days": "days the fall into hibernation takes",
    "level_sd": "per-bear relative spread of the active levels",
    "hibernation_sd": "per-bear spread of the winter level, bpm",
    "timing_sd": "per bear and year spread of the three dates, days",
    "day_wander": "relative day-to-day noise of the raw daily heart rate",
    "smooth_days": "days of the trailing rolling mean",
    "day_noise": "standard deviation of the noise per day after smoothing, bpm",
    "sample_noise": "standard deviation of the extra noise per reading, bpm",
    "clean_days": "days at the start with no anomaly (the training year)",
    "point_prob": "probability per reading of a halved or spiked value",
    "halved_share": "share of those that halve the value (the rest multiply it)",
    "spike_factor": "range of the factor of a spike",
    "arousal_prob": "probability per day of deep hibernation that an early arousal starts",
    "arousal_len": "days an early arousal lasts",
    "arousal_rise": "range of an early arousal's highest rise, bpm",
    "missing_prob": "probability per day that readings go missing",
    "missing_len": "days a gap of missing readings lasts",
}


@dataclass(frozen=True, slots=True)
class BearSimConfig:
    """Settings of the bear simulator (see the module docstring and :data:`SETTING_HELP`).

    Example:
        >>> BearSimConfig(bears=2).series_ids
        ('bear-0', 'bear-1')
        >>> BearSimConfig().tick_time(5).isoformat()
        '2024-01-02T06:00:00+00:00'

    """

    bears: int = 5
    seed: int = 42
    count: int = 21_900
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC)
    samples_per_day: int = 4
    decimals: int = 2
    hibernation_bpm: float = 20.0
    active_bpm: float = 63.0
    summer_peak_bpm: float = 10.0
    pre_den_bpm: float = 45.0
    rise_start_day: float = 41.0
    rise_days: float = 85.0
    fall_start_day: float = 263.0
    den_entry_day: float = 296.0
    entry_days: float = 7.0
    level_sd: float = 0.08
    hibernation_sd: float = 1.5
    timing_sd: float = 5.0
    day_wander: float = 0.06
    smooth_days: int = 10
    day_noise: float = 1.35
    sample_noise: float = 0.27
    clean_days: int = 365
    point_prob: float = 0.01
    halved_share: float = 1.0 / 3.0
    spike_factor: Range = (1.5, 3.0)
    arousal_prob: float = 0.02
    arousal_len: LenRange = (2, 6)
    arousal_rise: Range = (10.0, 30.0)
    missing_prob: float = 0.005
    missing_len: LenRange = (1, 3)

    @property
    def series_ids(self) -> tuple[str, ...]:
        """The bear ids, ``"bear-0"`` to ``f"bear-{bears - 1}"``."""
        return tuple(f"bear-{i}" for i in range(self.bears))

    @property
    def interval_us(self) -> int:
        """Microseconds of event time between two readings of a bear."""
        return _DAY_US // self.samples_per_day

    def tick_time(self, tick: int) -> datetime:
        """Event time of tick ``tick``."""
        return self.start + timedelta(microseconds=tick * self.interval_us)

    def validate(self) -> None:
        """Check every setting.

        Raises:
            SimConfigError: naming the field, what was expected and what arrived.

        Example:
            >>> BearSimConfig(den_entry_day=100.0).validate()
            Traceback (most recent call last):
            ...
            generators.simkit.SimConfigError: bear simulator: den_entry_day: expected \
rise_start + rise_days < fall_start < den_entry, got 126.0, 263.0, 100.0

        """

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                got = getattr(self, name)
                raise SimConfigError(name, f"expected {expected}, got {got!r}", _WHO)

        need(self.bears >= 1, "bears", "at least 1 bear")
        need(self.seed >= 0, "seed", "an integer >= 0")
        need(self.count >= 0, "count", "an integer >= 0 (0: unbounded)")
        need(self.start.tzinfo is not None, "start", "a timezone-aware datetime")
        need(_MIN_START <= self.start < _MAX_START, "start", "a time in 2000..2089")
        spd = self.samples_per_day
        need(1 <= spd <= 1440 and 86_400 % spd == 0, "samples_per_day", "a divisor of 86400")
        need(0 <= self.decimals <= 6, "decimals", "0..6 decimal places")
        for name, problem in self.season().problems():
            raise SimConfigError(_SEASON_FIELDS[name], problem, _WHO)
        for name in ("level_sd", "hibernation_sd", "timing_sd", "day_wander"):
            need(0.0 <= getattr(self, name) < math.inf, name, "a finite spread >= 0")
        need(self.level_sd <= 0.3, "level_sd", "a relative spread <= 0.3")
        need(self.day_wander <= 0.5, "day_wander", "a relative spread <= 0.5")
        need(1 <= self.smooth_days <= 365, "smooth_days", "1..365 days")
        for name in ("day_noise", "sample_noise"):
            need(0.0 <= getattr(self, name) < math.inf, name, "a finite deviation >= 0")
        need(self.clean_days >= 0, "clean_days", "days >= 0")
        for name in ("point_prob", "halved_share", "arousal_prob", "missing_prob"):
            need(0.0 <= getattr(self, name) <= 1.0, name, "a probability in [0, 1]")
        for name in ("spike_factor", "arousal_rise"):
            lo, hi = getattr(self, name)
            need(0.0 <= lo <= hi < math.inf, name, "a range lo,hi with 0 <= lo <= hi")
        for name in ("arousal_len", "missing_len"):
            lo, hi = getattr(self, name)
            need(1 <= lo <= hi <= 365, name, "a range lo,hi of days with 1 <= lo <= hi <= 365")

    def season(self) -> Season:
        """The yearly curve of an average bear."""
        return Season(
            hibernation=self.hibernation_bpm,
            active=self.active_bpm,
            summer_peak=self.summer_peak_bpm,
            pre_den=self.pre_den_bpm,
            rise_start=self.rise_start_day,
            rise_days=self.rise_days,
            fall_start=self.fall_start_day,
            den_entry=self.den_entry_day,
            entry_days=self.entry_days,
        )

    @classmethod
    def from_env(cls, env: Env | None = None) -> BearSimConfig:
        """Read the ``VIGIL_SIM_<FIELD>`` variables (ranges ``lo,hi``; times ISO 8601).

        Raises:
            ConfigError: naming the variable at fault.

        Example:
            >>> env = Env({"VIGIL_SIM_BEARS": "3", "VIGIL_SIM_MISSING_LEN": "2,4"})
            >>> cfg = BearSimConfig.from_env(env)
            >>> cfg.bears, cfg.missing_len
            (3, (2, 4))

        """
        env = env or Env()
        return settings_from_env(cls(), env)

    def chunks(self) -> Iterator[SimChunk]:
        """The simulated stream as columnar chunks, in event-time order.

        Raises:
            SimConfigError: when a setting is invalid.

        """
        self.validate()
        streams = [BearStream(self, i) for i in range(self.bears)]
        return interleave(streams, self.count, max(16, _CHUNK_EVENTS // self.bears))

    def encoder(self) -> ChunkEncoder:
        """The encoder of this stream's chunks, in the bears wire format."""
        return ChunkEncoder(self.series_ids, LABELS, self.start, self.interval_us, BEARS)


@dataclass(frozen=True, slots=True, eq=False)
class BearSeries:
    """One bear's emitted readings as whole arrays.

    Attributes:
        bear_id: The bear's id, the message key.
        ts_ms: Event time of each reading, epoch milliseconds (UTC).
        values: Heart rate of each reading, bpm, rounded as in the messages.
        labels: Label code of each reading, an index into :data:`LABELS`.

    """

    bear_id: str
    ts_ms: IntArray
    values: FloatArray
    labels: npt.NDArray[np.int8] = field(repr=False)

    def __len__(self) -> int:
        return len(self.values)

    def label_names(self) -> list[str | None]:
        """The label of each reading (``None``: normal)."""
        return [LABELS[c] for c in self.labels.tolist()]


def bear_series(cfg: BearSimConfig, days: int) -> list[BearSeries]:
    """Every bear's readings of the first ``days`` days, without encoding (``count`` is ignored).

    The values, times and labels are those of the messages, bear by bear.

    Raises:
        SimConfigError: when a setting is invalid.

    Example:
        >>> [b] = bear_series(BearSimConfig(bears=1, missing_prob=0.0), days=400)
        >>> len(b), int(b.ts_ms[1] - b.ts_ms[0]), b.label_names()[0]
        (1600, 21600000, None)

    """
    cfg.validate()
    ticks = days * cfg.samples_per_day
    start_ms = datetime_to_ms(cfg.start)
    step_ms = cfg.interval_us / 1000.0
    out = []
    for i, bear_id in enumerate(cfg.series_ids):
        values, labels, emit = BearStream(cfg, i).next_chunk(ticks)
        when = np.flatnonzero(emit)
        ts = start_ms + np.round(when * step_ms).astype(np.int64)
        out.append(BearSeries(bear_id, ts, values[when], labels[when]))
    return out


def iter_messages(cfg: BearSimConfig) -> Iterator[tuple[bytes, bytes]]:
    """The simulated stream as Kafka ``(key, value)`` pairs (see ``encode_reading``).

    Raises:
        SimConfigError: when a setting is invalid.

    """
    return sim_messages(cfg)


def iter_readings(cfg: BearSimConfig) -> Iterator[Reading]:
    """The simulated stream as labelled :class:`Reading` objects."""
    ids = cfg.series_ids
    for chunk in cfg.chunks():
        for s, t, v, lab in zip(
            chunk.series.tolist(),
            chunk.ticks.tolist(),
            chunk.values.tolist(),
            chunk.labels.tolist(),
            strict=True,
        ):
            yield Reading(ids[s], cfg.tick_time(t), v, LABELS[lab])
