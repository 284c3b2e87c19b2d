"""Contextual tail surprise: the project's default detector.

A reading is anomalous when it is both **rare** and **new**, or both rare and
new *for the time of day*. Four surprises ``-log10 p`` (decimal digits) say so:

* *rare*: the value lies in a tail of the recent distribution. The last
  ``window`` learned values define "ordinary"; inside their range the tail
  probability is empirical (the share at least as extreme), beyond the
  ``tail`` most extreme values of a side it follows a generalised Pareto fit of
  the excesses (:class:`~operators.detectors.tailmodel.TailModel`).
* *new*: nothing like it was seen in its context. The context is the last
  ``recent`` readings, the readings around the same time yesterday (``period``
  readings ago ``+- jitter``) and around the same time last week
  (``7 * period +- jitter``, when that lies within ``max_history`` readings).
  The distance to the nearest context value is scored against the recent such
  distances with the same tail model (upper side). A value the series has just
  shown, or shows every day at this hour, is not new: a daily batch job's spike
  or a level held since the last reading is rare yet expected. Nor is an
  *echo*: a value whose nearest context reading is from close to the same time
  yesterday (within ``echo_frac`` of the period), and nearer to it than
  ``echo`` times its distance from the median of the learned values. A daily
  spike that comes back a little higher or lower is yesterday's again, even
  when the difference is large next to the series' usual steps. An echo counts
  only where so near a match is unlikely by chance: the readings of the echo
  window times the share of learned values at least that near to the value
  (the value counted among them) must be below ``echo_chance``. Where spikes
  are common, yesterday's window holds one of about any height, and it says
  nothing about today's.
* *rare for the time of day*: the seasonal residual (the value minus the median
  of the readings around the same time yesterday or last week, whichever is
  closer) lies in a tail of the recent residuals: a dip at the busiest hour.
* *new for the time of day*: the distance to the nearest reading around the
  same time yesterday or last week lies in the upper tail of the recent such
  distances: the level is not one this hour has shown.

*Rare* also remembers further back than the learned window: the highest and
lowest learned reading of each of the last ``reach_blocks`` stretches between
refreshes are kept, and a value that ``k`` of those stretches reached (above the
median, at least as high; below it, at least as low) is ``reach * log10(1 + k)``
digits less rare. A level the series showed and learned as ordinary a few days
ago, but not since, has left the window's tail, yet it is the series' own.
Flagged readings are not remembered, so an anomaly does not excuse the next.

*Burst*: rare readings come closer together than the series has ever had them.
A reading at least ``BURST_LEVEL`` digits rare after one that is not starts a run
of rare readings; each start closes a burst of its last 2, 3, ... ``bursts``
starts, which spans some readings. A burst shorter than every earlier one of as
many starts scores by how much less likely it is, as ``P(Poisson(span * rate) >=
starts)``, than the densest earlier one, ``rate`` being the series' own starts
per reading (a pseudo-start at ``10**-BURST_LEVEL`` per reading, then the starts
counted fading like the recalibration's counts, both taken in at each refresh;
without the recalibration, the pseudo-start alone);
only a burst itself at least ``BURST_FLOOR`` digits unlikely scores, and only once
an earlier burst of as many starts exists, twice as many starts as ``bursts`` were
counted before it (a rate from fewer is mostly the pseudo-start, and where rare
readings keep to one time of day, the peaks of a daily cycle, the first few come
close together by nature) and the detector has warmed up. Spikes
to a level the series shows every day or two are neither rare nor new one by one;
a cluster of them where they used to come two a hundred readings is news. A run
of rare readings counts once, so a plateau or a busy spell is one start and
leaves the channel to the others; a series whose bursts come at every density has
set its densest long ago.

The score is ``max(min(rare, new), seasonal, burst)``: both must agree in each
of the first two channels. Once there is a daily context, *rare* counts for
no more than *rare for the time of day* plus ``TOD_MARGIN`` digits: a value at
the edge of the overall range yet ordinary for its hour (the daily peak) is not
rare evidence by itself. The *seasonal* channel is the smaller of the two time-of-day
surprises, held as the least of its last ``persist`` readings (carried across
batches), so a single odd reading does not fire it; it catches what the recent
context hides, such as a level that is ordinary overall but wrong for the hour.
The jitter is ``jitter_frac`` of the period (at least one reading), so "around
the same time" spans the same hours at any sampling interval.

A series whose scores come more often than they say is made to need more.
A calibrated surprise ``s`` is reached once in ``10**s`` readings; each score is
lowered by ``log10((c + a) / (n * 10**-s + a))`` when that is positive, where
``c`` counts the series' earlier scores at least as high (to the level of
``s`` rounded down to a tenth of a digit), ``n`` the readings they come from,
both fading over ``recal_horizon`` readings, and ``a`` is ``recal_prior``. A
series that keeps to its odds is left as it is; one whose tail models miss its
bursts (spikes at a level it has shown a dozen times, a plateau the time-of-day
channel flags again and again) pays for every time it has beaten them. A score
higher than any before it (by a tenth of a digit) is not lowered: ``c = 0``.
A reading scored while *warming up* (the value model fitted on fewer than
``warmup`` times ``window`` values) counts among the ``n`` but at level 0:
tail fits on few values overstate surprises (warm-up scores reach the higher
levels several times as often as later ones), and counting them would lower
the later, better calibrated scores for ``recal_horizon`` readings.
The counts take the readings in at each refresh, so the batch form keeps the
per-event numbers.

An event is reported once: after a score ``s`` at reading ``i``, a later score
is damped (multiplied by ``damping``) unless it exceeds both ``s - decay * (j - i)``,
a refractory bar that falls by ``decay`` decimal digits per reading, and every
score (before damping) of the last ``hold`` readings by a tenth of a digit (the step
at which the recalibration tells scores apart). That second bar does not fall, so a
plateau (the held seasonal channel, values at the edge of the learned range) is
reported at its first reading only, even when it creeps up. A point anomaly (the
rare-and-new channel drives the score) right after a reading those bars let through
is the same event going on: it is reported again only when it is ``REALERT_MARGIN``
digits above that reading, some three times less likely. The seasonal channel is held
as the least of ``persist`` readings, so it climbs in steps by construction while an
event sets in, and no such margin applies to it, nor to the burst channel (each of its
scores is a new, denser burst). A score while warming up raises no
refractory bar: it is overstated, and its bar would hide the first events after the
warm-up.

What the detector learns from readings it flags is a choice (``flagged``):
``learn`` everything, ``skip`` readings whose rarity surprise reaches
``flag_level`` (so the anomaly is not learned as normal), or ``clip`` their
values to the edge of the current tail (down-weighting; their residuals are
skipped). The rarity that flags a reading is its rarity *for the time of day*
once there is a daily context, its overall rarity before. The seasonal
residuals make the narrower tail, so a value wrong for its hour is flagged even
when its level is common at other hours, and it widens neither the value nor
the residual tail; a level the series shows every day at this hour is learned
even when it is extreme overall. A run of ``max_skip`` flagged readings in a
row is learned anyway, so a level shift becomes the new normal instead of
freezing the model.

A flagged reading's distance to its context is learned too, but while flagged
readings are scarce (their share, fading over ``window`` readings and updated
at each refresh, is below ``clip_share``) it is clipped to the distance that
would be ``clip_level`` digits new, so a few huge anomalies do not stretch the
novelty tail and hide the next anomaly for ``window`` readings (*masking*).
Where flagged readings are common they are the series' ordinary spikes: their
distances are learned as they are, and that is how the detector gets used to a
spike that keeps coming back.

The models (sorted windows and tail fits) are refreshed every ``refresh``
readings, and at ``min_history`` and each doubling of it while warming up.
Between refreshes a whole stretch is scored at once in numpy: the batch form
gives exactly the per-event numbers, at a few hundred thousand readings per
second.

The daily period comes from the readings' spacing (:meth:`observe_intervals`),
or from ``period`` (readings per day) when given; periods above ``max_period``
readings are not used, and the weekly context only when it lies within
``max_history`` readings. With the readings, distances and residuals kept in
float32 (values stay float64), that bounds the state under 32 KB.

Score range: [0, ``max_surprise``] decimal digits, calibrated with ``surprise``.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> d = ContextSurprise()
    >>> ordinary = d.score_learn_many(rng.normal(20.0, 1.0, 2000))
    >>> bool(ordinary[200:].max() < 4.0)
    True
    >>> bool(d.score_learn_many(np.array([35.0]))[0] > 5.0)
    True

"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided
from scipy.special import gammainc

from operators.detectors.base import RefreshingDetector
from operators.detectors.tailmodel import TailModel, tail_surprise
from operators.events import BoolArray, FloatArray

Float32Array = npt.NDArray[np.float32]
FLAGGED_CHOICES = ("learn", "skip", "clip")
DAYS_PER_WEEK = 7
# The samples the four tail models are fitted on, and what scoring a stretch changes;
# every one is rebound, never mutated in place.
_SAMPLES = ("_values", "_dists", "_resids", "_season_dists")
_MUTABLE = (
    "count",
    *_SAMPLES,
    "_history",
    "_held",
    "_skips",
    "_flags",
    "_bar",
    "_totals",
    "_reported",
    "_parts",
    "_pending",
    "_reach",
    "_reach_lo",
    "_reach_hi",
    "_burst_last",
    "_burst_starts",
    "_burst_ago",
    "_burst_min",
)
#: Scalar attributes pickled together, in this order; new ones go at the end, so that a
#: shorter tuple is one pickled before them (and :meth:`ContextSurprise.__setstate__`
#: gives those their defaults).
_PACKED = (
    *("count", "_bar", "_skips", "window", "tail", "min_history", "recent", "refresh"),
    *("period", "jitter", "jitter_frac", "max_period", "max_history", "week", "persist"),
    *("damping", "decay", "hold", "echo", "echo_frac", "echo_jitter", "flagged"),
    *("flag_level", "max_skip", "max_surprise", "xi_max", "season_s", "clip_share"),
    *("clip_level", "recal_horizon", "recal_prior", "warmup", "echo_chance"),
    *("reach", "reach_blocks", "_reach_lo", "_reach_hi", "_reach", "_reported"),
    *("bursts", "_burst_last", "_burst_starts", "_burst_ago", "_burst_min"),
)
#: One-dimensional arrays of the state and their types: pickled as their bytes.
_ARRAYS = {
    "_values": np.float64,
    "_dists": np.float32,
    "_resids": np.float32,
    "_season_dists": np.float32,
    "_history": np.float32,
    "_held": np.float64,
    "_totals": np.float64,
    "_tally": np.float32,
    "_pending": np.uint8,
}
#: Digits by which "rare" may exceed "rare for the time of day" where there is a daily context.
TOD_MARGIN = 1.0
#: Width, in decimal digits, of the levels at which the series' own surprises are tallied.
RECAL_STEP = 0.1
#: Rarity (digits) at which a reading counts as rare for the burst channel.
BURST_LEVEL = 1.5
#: Digits by which a burst must itself be unlikely before it can score.
BURST_FLOOR = 2.0
#: Readings beyond which the burst channel tells no spans apart (they are kept as uint16).
SPAN_CAP = 65535
#: Digits by which a point anomaly must beat the reported reading just before it.
REALERT_MARGIN = 0.5
#: Names of the surprises :meth:`ContextSurprise.explain` reports, in digits.
PARTS = ("rare", "new", "rare for the time of day", "new for the time of day", "seasonal", "burst")


class ContextSurprise(RefreshingDetector):
    """Rare-and-new surprise with a refractory period; see the module docstring.

    Args:
        window: Learned values (and distances, residuals) that define "ordinary".
        tail: Most extreme values per side that fit each tail model.
        min_history: Learned values before anything scores above 0.
        recent: Readings back whose values make the recent context.
        period: Readings per day, or ``None`` to learn it from the spacing.
        jitter_frac: Share of the period either side of "same time yesterday"
            (and last week) in the context; at least one reading.
        max_period: Longest daily period used (bounds the state).
        max_history: Longest lag of the context in readings; the weekly context
            is left out when it does not fit (bounds the state and the work).
        persist: Readings over which the seasonal channel is held (its least).
        echo: A value nearest to a reading close to the same time yesterday, and
            nearer to it than ``echo`` times its own distance from the median of
            the learned values, is not new (0: no such rule).
        echo_frac: Share of the period either side of "same time yesterday" in
            which an echo is looked for (at least one reading, at most the jitter).
        echo_chance: Expected number of readings of the echo window as near to the
            value by chance (from the learned values) below which an echo counts
            (0: always).
        reach: Digits of rarity taken off per ``log10(1 + k)``, ``k`` the remembered
            stretches whose highest (lowest) learned reading reached the value
            (0: none).
        reach_blocks: Stretches between refreshes whose highest and lowest learned
            readings are remembered for ``reach`` (8 bytes of state each).
        refresh: Readings between two refreshes of the model.
        decay: Decimal digits per reading by which the refractory bar falls.
        damping: Factor on a surprise under the refractory bar.
        hold: Readings whose scores a later score must exceed (0: none), besides the bar.
        bursts: Most starts of runs of rare readings in a burst the burst channel scores
            (below 2: no burst channel).
        recal_horizon: Readings over which the series' earlier scores fade from the
            counts that recalibrate a score (0: no recalibration).
        recal_prior: Pseudo-count added to both the earlier scores at least as high and
            their expected number before their ratio lowers a score.
        warmup: Share of ``window`` the value model must be fitted on before a
            reading's score counts at its level in the recalibration (before, at 0)
            and raises the refractory bar.
        flagged: What is learned from flagged readings: ``learn``, ``skip`` or ``clip``.
        flag_level: Rarity surprise (digits) at which a reading is flagged: for the
            time of day where there is a daily context, overall before.
        max_skip: Flagged values in a row after which they are learned anyway.
        clip_share: Share of flagged readings (fading over ``window`` readings,
            updated at each refresh) below which they are scarce, and their
            context distances learned clipped (0: never clipped).
        clip_level: Novelty surprise (digits) at which the context distance of a
            scarce flagged reading is clipped.
        max_surprise: Cap of the surprise, in decimal digits.
        xi_max: Largest generalised Pareto shape of a tail fit.
        season_s: Seconds in the seasonal period (a day).

    Non-finite values score ``max_surprise`` and are not learned.

    """

    name = "context"
    score_range = "[0, 10]: -log10 p of a value both rare and new, damped after an event"
    calibrator = "surprise"

    def __init__(
        self,
        window: int = 1000,
        tail: int = 50,
        min_history: int = 30,
        recent: int = 100,
        period: int | None = None,
        jitter_frac: float = 0.07,
        max_period: int = 1440,
        max_history: int = 2100,
        persist: int = 3,
        echo: float = 0.6,
        echo_frac: float = 0.07,
        echo_chance: float = 0.2,
        reach: float = 0.7,
        reach_blocks: int = 32,
        refresh: int = 128,
        decay: float = 0.02,
        damping: float = 0.1,
        hold: int = 6,
        bursts: int = 4,
        recal_horizon: float = 10000.0,
        recal_prior: float = 0.5,
        warmup: float = 0.5,
        flagged: str = "skip",
        flag_level: float = 4.0,
        max_skip: int = 50,
        clip_share: float = 0.015,
        clip_level: float = 2.5,
        max_surprise: float = 10.0,
        xi_max: float = 0.9,
        season_s: float = 86400.0,
    ) -> None:
        if not 3 <= min_history <= window or tail < 2 or recent < 1 or refresh < 1:
            msg = (
                "context: expected 3 <= min_history <= window, tail >= 2, recent >= 1, "
                f"refresh >= 1, got min_history={min_history}, window={window}, tail={tail}, "
                f"recent={recent}, refresh={refresh}"
            )
            raise ValueError(msg)
        if (
            not 0.0 <= jitter_frac < 0.5
            or persist < 1
            or not (echo >= 0.0 and echo_frac >= 0.0 and echo_chance >= 0.0)
            or not (reach >= 0.0 and reach_blocks >= 0)
        ):
            msg = (
                "context: expected 0 <= jitter_frac < 0.5, persist >= 1, echo >= 0, "
                f"echo_frac >= 0 and echo_chance >= 0, got jitter_frac={jitter_frac}, "
                f"persist={persist}, echo={echo}, echo_frac={echo_frac}, "
                f"echo_chance={echo_chance}, reach >= 0 and reach_blocks >= 0, got "
                f"reach={reach}, reach_blocks={reach_blocks}"
            )
            raise ValueError(msg)
        if not (0.0 <= clip_share < 1.0 and clip_level > 0.0):
            msg = (
                "context: expected 0 <= clip_share < 1 and clip_level > 0, "
                f"got clip_share={clip_share}, clip_level={clip_level}"
            )
            raise ValueError(msg)
        if flagged not in FLAGGED_CHOICES:
            msg = f"context: expected flagged in {FLAGGED_CHOICES}, got {flagged!r}"
            raise ValueError(msg)
        if (
            not 0.0 <= damping <= 1.0
            or decay < 0.0
            or hold < 0
            or bursts < 0
            or recal_horizon < 0.0
            or recal_prior <= 0.0
            or warmup < 0.0
            or max_surprise <= 0.0
            or not xi_max < 1.0
        ):
            msg = (
                "context: expected 0 <= damping <= 1, decay >= 0, hold >= 0, bursts >= 0, "
                "recal_horizon >= 0, recal_prior > 0, warmup >= 0, max_surprise > 0, xi_max < 1, "
                f"got {damping}, {decay}, {hold}, {bursts}, {recal_horizon}, {recal_prior}, "
                f"{warmup}, {max_surprise}, {xi_max}"
            )
            raise ValueError(msg)
        self.window = window
        self.tail = tail
        self.min_history = min_history
        self.recent = recent
        self.jitter_frac = jitter_frac
        self.max_period = max_period
        self.max_history = max_history
        self.persist = persist
        self.echo = echo
        self.echo_frac = echo_frac
        self.echo_chance = echo_chance
        self.reach = reach
        self.reach_blocks = reach_blocks
        # Highest and lowest learned reading of each remembered stretch (float32 pairs,
        # oldest first, as bytes: the smallest pickle), and of the stretch under way.
        self._reach = b""
        self._reach_lo, self._reach_hi = math.inf, -math.inf
        self.refresh = refresh
        self.decay = decay
        self.damping = damping
        self.hold = hold
        self.bursts = bursts
        # The burst channel: whether the last reading was rare; the starts of runs of rare
        # readings counted (fading like the recalibration's readings) and since the last
        # refresh; how many readings ago the last bursts - 1 starts were, newest first, and
        # the fewest readings that 2, 3, ... bursts starts have spanned (uint16 bytes).
        self._burst_last = 0
        self._burst_starts = (0.0, 0)
        spans = np.full(max(0, bursts - 1), SPAN_CAP, dtype=np.uint16).tobytes()
        self._burst_ago, self._burst_min = spans, spans
        self.recal_horizon = recal_horizon
        self.recal_prior = recal_prior
        self.warmup = warmup
        self.flagged = flagged
        self.flag_level = flag_level
        self.max_skip = max_skip
        self.clip_share = clip_share
        self.clip_level = clip_level
        self.max_surprise = max_surprise
        self.xi_max = xi_max
        self.season_s = season_s
        self.count = 0
        self.period = self.jitter = self.week = self.echo_jitter = 0
        self._intervals: list[float] = []
        if period is not None:
            self._set_period(period)
        self._values = np.empty(0, dtype=np.float64)  # learned values, oldest first
        # Novelty distances, seasonal residuals and seasonal distances, oldest first; float32
        # because they only feed tail fits, and it keeps the state small.
        self._dists = np.empty(0, dtype=np.float32)
        self._resids = np.empty(0, dtype=np.float32)
        self._season_dists = np.empty(0, dtype=np.float32)
        # Every reading back to the longest lag, for the context.
        self._history = np.empty(0, dtype=np.float32)
        self._fitted: tuple[int, ...] = (0, 0, 0, 0)  # how much of each sample the models cover
        # The seasonal channel of the last persist - 1 readings; nothing held before the start.
        self._held = np.zeros(persist - 1)
        self._skips = 0
        # The share of flagged readings, fading over window readings (updated at each
        # refresh); the flagged readings since then; the count at that refresh.
        self._flags: tuple[float, int, int] = (0.0, 0, 0)
        self._bar = -math.inf  # refractory bar plus decay * reading index
        self._totals = np.full(hold, -np.inf)  # the last hold scores before damping
        self._reported = False  # whether the last reading passed the refractory bars
        # The series' own scores: how many readings reached each level (decayed; level 0
        # counts them all), and the levels of the readings since the last refresh. float32
        # counts and a byte per pending reading keep the state small.
        self._tally: Float32Array = np.zeros(_levels(max_surprise), dtype=np.float32)
        self._pending: npt.NDArray[np.uint8] = np.empty(0, dtype=np.uint8)
        self._models: tuple[TailModel | None, ...] = ()
        self._parts: tuple[FloatArray, ...] = ()  # per stretch of the last batch, for explain()
        self._fit_models()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        # The models are rebuilt on load from the windows they were fitted on.
        del state["_models"], state["_parts"]
        # The scalars go as one tuple: their names would take 340 of the 32 KB.
        state["_packed"] = tuple(state.pop(name) for name in _PACKED)
        # The arrays as their bytes: numpy's pickled header costs about 90 bytes each.
        for name, dtype in _ARRAYS.items():
            state[name] = np.ascontiguousarray(state[name], dtype=dtype).tobytes()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Scalars packed in order (named one by one before the packing; a shorter
        # tuple predates the settings at its end).
        state.update(zip(_PACKED, state.pop("_packed", ()), strict=False))
        # Arrays as bytes (as arrays before that was so).
        for name, dtype in _ARRAYS.items():
            if isinstance(state.get(name), bytes):
                state[name] = np.frombuffer(state[name], dtype=dtype).copy()
        # A state pickled before ``hold`` and ``echo`` existed resumes as the
        # detector then was: neither rule.
        state.setdefault("hold", 0)
        state.setdefault("_totals", np.full(state["hold"], -np.inf))
        # ... and before the re-alert margin: the last reading not reported (no margin).
        state.setdefault("_reported", False)
        state.setdefault("echo", 0.0)
        state.setdefault("echo_frac", 0.0)
        state.setdefault("echo_jitter", 0)
        # ... and before echo_chance: an echo counted however likely by chance.
        state.setdefault("echo_chance", 0.0)
        # ... and before reach: no memory beyond the window.
        state.setdefault("reach", 0.0)
        state.setdefault("reach_blocks", 0)
        state.setdefault("_reach_lo", math.inf)
        state.setdefault("_reach_hi", -math.inf)
        state.setdefault("_reach", b"")
        # ... and before clip_share: flagged readings' distances learned as they are.
        state.setdefault("clip_share", 0.0)
        state.setdefault("clip_level", 2.5)
        state.setdefault("_flags", (0.0, 0, 0))
        # One pickled before the recalibration resumes without it.
        state.setdefault("recal_horizon", 0.0)
        state.setdefault("recal_prior", 0.5)
        # ... and before warmup: every score counted at its level and raising the bar.
        state.setdefault("warmup", 0.0)
        state.setdefault("_tally", np.zeros(_levels(state["max_surprise"]), dtype=np.float32))
        state.setdefault("_pending", np.empty(0, dtype=np.uint8))
        # ... and before the burst channel: none.
        state.setdefault("bursts", 0)
        state.setdefault("_burst_last", 0)
        state.setdefault("_burst_starts", (0.0, 0))
        state.setdefault("_burst_ago", b"")
        state.setdefault("_burst_min", b"")
        self.__dict__.update(state)
        self._parts = ()
        self._fit_models()

    def _set_period(self, period: int) -> None:
        jitter = max(1, round(self.jitter_frac * period))
        if not 2 * jitter < period <= self.max_period:
            return
        self.period, self.jitter = period, jitter
        self.echo_jitter = min(jitter, max(1, round(self.echo_frac * period)))
        week = DAYS_PER_WEEK * period
        self.week = week if week + jitter <= self.max_history else 0

    def observe_intervals(self, seconds: FloatArray) -> None:
        """Learn the daily period from the spacing of the first readings.

        The median of the first eight positive intervals fixes the period
        (``season_s`` divided by it); later intervals are ignored.
        """
        if self.period or len(self._intervals) >= 8:
            return
        positive = seconds[seconds > 0.0][: 8 - len(self._intervals)]
        self._intervals.extend(positive.tolist())
        if len(self._intervals) == 8:
            self._set_period(round(self.season_s / float(np.median(self._intervals))))

    def _samples(self) -> tuple[FloatArray | Float32Array, ...]:
        return self._values, self._dists, self._resids, self._season_dists

    def _fit_models(self) -> None:
        self._models = tuple(
            TailModel(sample[:n], self.tail, self.xi_max) if n >= self.min_history else None
            for sample, n in zip(self._samples(), self._fitted, strict=True)
        )

    def _next_refresh(self) -> int:
        if self.count < self.refresh:
            # Warming up: refit at min_history, then each time the history doubles.
            due = self.min_history
            while due <= self.count:
                due *= 2
            return min(due, self.refresh)
        return (self.count // self.refresh + 1) * self.refresh

    def _refresh(self) -> None:
        if self.reach_blocks and self._reach_lo <= self._reach_hi:
            pair = np.array([self._reach_hi, self._reach_lo], dtype=np.float32).tobytes()
            self._reach = (self._reach + pair)[-8 * self.reach_blocks :]
        self._reach_lo, self._reach_hi = math.inf, -math.inf
        w = self.window
        self._values, self._dists = self._values[-w:], self._dists[-w:]
        self._resids, self._season_dists = self._resids[-w:], self._season_dists[-w:]
        self._fitted = tuple(len(sample) for sample in self._samples())
        self._fit_models()
        share, flags, since = self._flags
        fade = math.exp(-(self.count - since) / w)
        self._flags = (share * fade + flags / w, 0, self.count)
        if self.recal_horizon:
            # Fold the surprises since the last refresh into the tally, the old ones fading.
            fade = math.exp(-len(self._pending) / self.recal_horizon)
            reached = np.cumsum(np.bincount(self._pending, minlength=len(self._tally))[::-1])[::-1]
            self._tally = (self._tally * fade + reached).astype(np.float32)
            counted, pending = self._burst_starts
            self._burst_starts = (counted * fade + pending, 0)
            self._pending = np.empty(0, dtype=np.uint8)

    def _lag_groups(self) -> list[tuple[int, int]]:
        """First and last lag of each context: recent, yesterday, last week."""
        groups = [(1, self.recent)]
        for lag in (self.period, self.week):
            if lag:
                groups.append((lag - self.jitter, lag + self.jitter))
        return groups

    def _context(self, xs: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        """Per value: distance to the nearest context value, seasonal residual and distances.

        The residual is the value minus the median of the readings around the
        same time yesterday or last week, whichever is smaller (a median needs
        all its readings); the seasonal distance is to the nearest of those
        readings, the last one to the nearest of yesterday's within ``echo_jitter``
        of the same time. NaN (the last: infinite) where there is no such context yet.
        """
        n = len(xs)
        groups = self._lag_groups()
        span = max(last for _, last in groups)
        history = self._history[-span:]
        # Values are compared at the precision the history keeps them in.
        xs32 = xs.astype(np.float32).astype(np.float64)
        ext = np.concatenate((np.full(span - len(history), np.nan), history, xs32))
        # A missing reading (before the start, or not finite) is never the nearest.
        near = np.where(np.isfinite(ext), ext, np.inf)

        def distances(rows: slice, width: int) -> FloatArray:
            apart: FloatArray = np.abs(xs32[:, None] - _windows(near[rows], width))
            return apart

        def nearest(rows: slice, width: int) -> FloatArray:
            closest: FloatArray = distances(rows, width).min(axis=1)
            return closest

        # Row i of a group's windows holds value i's readings first..last back.
        first, last = groups[0]
        recent = nearest(slice(span - last, span - first + n), last - first + 1)
        season = np.full(n, np.inf)
        yesterday = np.full(n, np.inf)
        resids = np.full(n, np.nan)
        for k, (first, last) in enumerate(groups[1:]):
            rows = slice(span - last, span - first + n)
            apart = distances(rows, last - first + 1)
            if k == 0:
                # The same time yesterday sits mid-row, its echo window around it.
                middle = slice(self.jitter - self.echo_jitter, self.jitter + self.echo_jitter + 1)
                yesterday = apart[:, middle].min(axis=1)
            season = np.minimum(season, apart.min(axis=1))
            resid = xs32 - self._medians(ext[rows], n)
            smaller = np.isnan(resids) | (np.abs(resid) < np.abs(resids))
            resids = np.where(smaller, resid, resids)
        dists = np.minimum(recent, season)
        dists[~np.isfinite(dists)] = np.nan
        season[~np.isfinite(season)] = np.nan
        keep = min(span, len(history) + n)
        self._history = ext[len(ext) - keep :].astype(np.float32)
        return dists, resids, season, yesterday

    @staticmethod
    def _medians(seg: FloatArray, n: int) -> FloatArray:
        """Median of each of the ``n`` sliding windows of ``seg``; NaN if one is missing."""
        width = len(seg) - n + 1
        missing = np.concatenate(([0], np.cumsum(np.isnan(seg))))
        full = missing[width : width + n] == missing[:n]
        out = np.full(n, np.nan)
        if full.any():
            # Odd width: the median is the middle element, which partition finds exactly.
            rows = _windows(seg, width)[full]
            rows.partition(width // 2, axis=1)
            out[full] = rows[:, width // 2]
        return out

    def _hold(self, seasonal: FloatArray) -> FloatArray:
        """The least of each reading's seasonal surprise and its ``persist - 1`` forerunners."""
        ext = np.concatenate((self._held, seasonal))
        self._held = ext[len(ext) - (self.persist - 1) :]
        held: FloatArray = _windows(ext, self.persist).min(axis=1)
        return held

    def _recalibrate(self, total: FloatArray, finite: BoolArray) -> FloatArray:
        """Lower each surprise by how much more often this series has reached it than ``10**-s``.

        The count of earlier readings at or above the level of ``s`` (the
        tally, fixed between refreshes) against the ``n * 10**-s`` a calibrated
        surprise would give, each plus ``recal_prior``; never raised. While the
        value model is fitted on fewer than ``warmup * window`` values the
        readings are counted at level 0.
        """
        tally = self._tally.astype(np.float64)
        level = np.minimum(np.floor(total / RECAL_STEP + 1e-9).astype(np.int64), len(tally) - 1)
        # Level 0 counts every reading (a surprise is never negative).
        seen = tally[level] + self.recal_prior
        expected = tally[0] * np.power(10.0, -total) + self.recal_prior
        adjusted: FloatArray = total - np.maximum(0.0, np.log10(seen / expected))
        if self._warming_up():
            level = np.zeros_like(level)  # counted, but not at its level
        self._pending = np.concatenate((self._pending, level[finite].astype(np.uint8)))
        return adjusted

    def _burst(self, rare: FloatArray, finite: BoolArray) -> FloatArray:
        """Surprise of a burst of rare readings denser than any the series has shown.

        A reading is rare at ``BURST_LEVEL`` digits; a run of them starts where
        the reading before was not rare. Each start closes, for ``j`` = 2 to
        ``bursts``, a burst of its last ``j`` starts within some ``span`` of readings;
        one denser (shorter) than every earlier burst of ``j`` starts scores
        ``-log10 P(Poisson(span * rate) >= j)`` beyond the same for the densest
        earlier one, ``rate`` being the series' starts per reading (fixed between
        refreshes), if the burst is itself at least ``BURST_FLOOR`` digits unlikely.
        Nothing before there is such an earlier burst, before ``2 * bursts`` starts
        were counted, nor while warming up.
        """
        n = len(rare)
        rarest = (rare >= BURST_LEVEL) & finite
        follows = np.concatenate(([self._burst_last != 0], rarest[:-1]))
        starts = np.flatnonzero(rarest & ~follows)
        self._burst_last = int(rarest[-1])
        ago = np.frombuffer(self._burst_ago, dtype=np.uint16).astype(np.int64)
        if len(starts) == 0:
            self._burst_ago = np.minimum(ago + n, SPAN_CAP).astype(np.uint16).tobytes()
            return np.zeros(n)
        counted, pending = self._burst_starts
        self._burst_starts = (counted, pending + len(starts))
        # A rate from a handful of starts is mostly the pseudo-start, and where rare readings
        # keep to a time of day (the peaks of a daily cycle) the first few come close by
        # nature: a start scores once twice as many as the largest burst holds came before.
        ready = counted + pending + np.arange(len(starts)) >= 2 * self.bursts
        last = self.bursts - 1
        # Earlier starts as (negative) indices into this stretch, oldest first, then these.
        at = np.concatenate((-ago[::-1], starts))
        # Starts per reading: the pseudo-start at the calibrated rate, then the series' own.
        rate = (counted + 1.0) / (float(self._tally[0]) + 10.0**BURST_LEVEL)
        scoring = not self._warming_up()
        fewest = np.frombuffer(self._burst_min, dtype=np.uint16).astype(np.int64)
        out = np.zeros(len(starts))
        for j in range(1, last + 1):
            # The readings spanned by each start and the j starts before it.
            span = np.minimum(starts - at[last - j : len(at) - j] + 1, SPAN_CAP)
            densest = np.minimum.accumulate(np.concatenate((fewest[j - 1 : j], span)))
            fewest[j - 1] = densest[-1]
            denser = (span < densest[:-1]) & (densest[:-1] < SPAN_CAP)
            denser &= ready
            if scoring and denser.any():
                lam = np.stack((span[denser], densest[:-1][denser])) * rate
                p = np.maximum(gammainc(j + 1, lam), 1e-300)
                gain = np.where(p[0] <= 10.0**-BURST_FLOOR, np.log10(p[1] / p[0]), 0.0)
                out[denser] = np.maximum(out[denser], gain)
        self._burst_min = fewest.astype(np.uint16).tobytes()
        recent = np.minimum(n - at[len(at) - last :], SPAN_CAP)[::-1]
        self._burst_ago = recent.astype(np.uint16).tobytes()
        surprise = np.zeros(n)
        surprise[starts] = out
        return surprise

    def _warming_up(self) -> bool:
        """Whether the value model is fitted on fewer than ``warmup * window`` values."""
        model = self._models[0]
        return model is None or len(model.sorted) < self.warmup * self.window

    def _learn_mask(self, rarity: FloatArray, finite: BoolArray) -> BoolArray:
        """Which readings are learned as they are (the rest are skipped or clipped)."""
        learn = finite.copy()
        if self.flagged == "learn":
            return learn
        flagged = np.flatnonzero((rarity >= self.flag_level) & finite)
        last = -1 if self._skips else -2
        for i in flagged.tolist():
            # A run of flagged values continues only through consecutive readings.
            self._skips = self._skips + 1 if i == last + 1 else 1
            last = i
            if self._skips <= self.max_skip:
                learn[i] = False
            else:
                self._skips = 0
        if len(flagged) == 0 or flagged[-1] != len(rarity) - 1:
            self._skips = 0
        return learn

    def score_learn_many(self, xs: FloatArray) -> FloatArray:
        """Score then learn each value (vectorised between refreshes); see :meth:`explain`."""
        self._parts = ()
        return super().score_learn_many(xs)

    def explain(self) -> dict[str, FloatArray]:
        """The surprises of the last batch per reading, in digits, named as in ``PARTS``.

        ``rare`` (at most ``rare for the time of day`` plus ``TOD_MARGIN`` once there
        is a daily context) and ``new`` make the first channel (their smaller one), the
        time-of-day pair the seasonal one (their smaller one, held over
        ``persist`` readings: ``seasonal``), ``burst`` the third (non-zero only at
        the start of a run of rare readings); the score is the largest channel,
        before the recalibration and the refractory damping.
        """
        if not self._parts:
            return {}
        return dict(zip(PARTS, np.hstack(self._parts), strict=True))

    def score_one(self, x: float) -> float:
        """Surprise of ``x`` in its context, without learning it."""
        saved = {k: self.__dict__[k] for k in _MUTABLE}
        try:
            return float(self._score_learn(np.array([x], dtype=np.float64))[0])
        finally:
            self.__dict__.update(saved)

    def _score_learn(self, xs: FloatArray) -> FloatArray:
        n = len(xs)
        finite = np.isfinite(xs)
        safe = np.where(finite, xs, 0.0)
        dists, resids, season_dists, yesterday = self._context(np.where(finite, xs, np.nan))
        value_model, dist_model, resid_model, season_model = self._models
        rare = tail_surprise(value_model, safe, two_sided=True)
        new = tail_surprise(dist_model, dists, two_sided=False)
        if value_model is not None:
            # An echo of yesterday: its nearest context reading is from about the same
            # time then, and close next to how far the value lies from the middle.
            sample = value_model.sorted
            excursion = np.abs(safe - sample[len(sample) // 2])
            echo = (yesterday <= dists) & (yesterday < self.echo * excursion)
            if self.echo_chance:
                # Readings of the echo window expected as near to the value by chance,
                # from the share of learned values that near (the value itself counted).
                near = np.searchsorted(sample, safe + yesterday, "right") - np.searchsorted(
                    sample, safe - yesterday, "left"
                )
                width = 2 * self.echo_jitter + 1
                echo &= width * (near + 1.0) / (len(sample) + 1.0) < self.echo_chance
            new = np.where(echo, 0.0, new)
        rare_tod = tail_surprise(resid_model, resids, two_sided=True)
        # Rare overall but ordinary for the hour (a daily peak) counts as rare for the hour.
        daily = np.isfinite(resids) & (resid_model is not None)
        rare = np.where(daily, np.minimum(rare, rare_tod + TOD_MARGIN), rare)
        if self.reach and self._reach and value_model is not None:
            # Less rare for each remembered stretch that reached the value.
            pairs = np.frombuffer(self._reach, dtype=np.float32).reshape(-1, 2)
            highs, lows = np.sort(pairs[:, 0]), np.sort(pairs[:, 1])
            median = value_model.sorted[len(value_model.sorted) // 2]
            reached = np.where(
                safe > median,
                len(highs) - np.searchsorted(highs, safe, "left"),
                np.searchsorted(lows, safe, "right"),
            )
            rare = rare - self.reach * np.log10(1.0 + reached)
        new_tod = tail_surprise(season_model, season_dists, two_sided=False)
        seasonal = self._hold(np.minimum(rare_tod, new_tod))
        burst = self._burst(rare, finite) if self.bursts > 1 else np.zeros(n)
        point, others = np.minimum(rare, new), np.maximum(seasonal, burst)
        total = np.clip(np.maximum(point, others), 0.0, self.max_surprise)
        parts = np.vstack((rare, new, rare_tod, new_tod, seasonal, burst))
        self._parts = (*self._parts, np.minimum(parts, self.max_surprise))
        if self.recal_horizon:
            total = self._recalibrate(total, finite)
        total[~finite] = self.max_surprise
        # Refractory period: damped unless above the decaying bar of earlier surprises.
        index = self.count + np.arange(n, dtype=np.float64)
        # A score while warming up raises no bar.
        lifted = np.full(n, -np.inf) if self._warming_up() else total + self.decay * index
        bars = np.maximum.accumulate(np.concatenate(([self._bar], lifted)))
        self._bar = float(bars[-1])
        under = total <= bars[:-1] - self.decay * index
        if self.hold:
            totals = np.concatenate((self._totals, total))
            self._totals = totals[n:]
            # Higher than the last hold scores by a tenth of a digit, the step of the tally.
            under |= total <= _windows(totals[:-1], self.hold).max(axis=1) + RECAL_STEP
            # A point anomaly barely above the reported reading just before is that event.
            reported = np.concatenate(([self._reported], ~under[:-1]))
            self._reported = bool(not under[-1])
            margin = (point >= others) & reported
            under |= margin & (total <= totals[self.hold - 1 : -1] + REALERT_MARGIN)
        # A non-finite value always scores the cap: it is bad data, not part of an event.
        out = np.where(under & finite, total * self.damping, total)

        # Flagged by the time-of-day residual where there is one: the narrower tail.
        learn = self._learn_mask(np.where(daily, rare_tod, rare), finite)
        learned = safe[learn]
        if self.flagged == "clip" and value_model is not None:
            clipped = finite & ~learn
            learned = np.where(learn, safe, np.clip(safe, value_model.lower, value_model.upper))[
                learn | clipped
            ]
        self._values = np.concatenate((self._values, learned))
        if learn.any() and self.reach_blocks:
            seen = safe[learn]
            self._reach_lo = min(self._reach_lo, float(seen.min()))
            self._reach_hi = max(self._reach_hi, float(seen.max()))
        flagged = finite & ~learn
        if self.clip_share > 0.0 and flagged.any():
            share, flags, since = self._flags
            self._flags = (share, flags + int(np.count_nonzero(flagged)), since)
            if share < self.clip_share and dist_model is not None:
                # Masking: a scarce anomaly's distance enters the novelty tail clipped.
                cap = dist_model.upper_quantile(self.clip_level)
                dists = np.where(flagged, np.minimum(dists, cap), dists)
        self._dists = _append32(self._dists, dists)
        self._resids = _append32(self._resids, np.where(learn, resids, np.nan))
        self._season_dists = _append32(self._season_dists, season_dists)
        self.count += n
        return out


def _levels(max_surprise: float) -> int:
    """Levels at which the scores are tallied: 0 to ``max_surprise`` (at most 256, a byte)."""
    return min(math.floor(max_surprise / RECAL_STEP + 1e-9) + 1, 256)


def _append32(kept: Float32Array, new: FloatArray) -> Float32Array:
    """``kept`` followed by the finite values of ``new``, in float32."""
    return np.concatenate((kept, new[np.isfinite(new)].astype(np.float32)))


def _windows(a: FloatArray, width: int) -> FloatArray:
    """The windows of ``width`` consecutive elements of ``a``, one per row (a read-only view).

    ``sliding_window_view`` without its checks, which cost more than the
    arithmetic on a short stretch.
    """
    step = a.strides[0]
    view: FloatArray = as_strided(a, (len(a) - width + 1, width), (step, step), writeable=False)
    return view
