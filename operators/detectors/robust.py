"""Robust statistical detectors: windowed median/MAD z-score, flat-lines and gaps.

All three keep a bounded window of history, score before they learn, and have
vectorised batch forms that give the numbers of the per-event forms.

Example:
    >>> import numpy as np
    >>> d = Flatline()
    >>> d.score_learn_many(np.array([1.0, 2.0, 3.0, 3.0, 3.0])).round(2).tolist()
    [0.0, 0.0, 0.0, 0.6, 0.8]

"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from operators.detectors.base import Detector
from operators.detectors.scale import (
    LEVEL_EPS,
    MAX_SCORE,
    TINY_SCALE,
    LongRunScale,
    diff_sigma,
    diff_sigmas,
    finite_z,
    scale_floor,
)
from operators.events import BoolArray, FloatArray, IntArray

MAD_TO_SIGMA = 1.4826
#: Batches this small are scored by the per-event form, which gives the same numbers.
SMALL_BATCH = 2
#: Rows up to this wide are sorted to find their medians (:func:`row_medians`).
SORT_WIDTH = 256


def row_medians(rows: FloatArray) -> FloatArray:
    """Median of each row of a 2-D array of finite values: ``np.median(rows, axis=1)``'s numbers.

    Rows of up to :data:`SORT_WIDTH` values are sorted, which numpy does
    faster than it selects the middle of them (two to seven times, the more
    rows the more); longer ones are partitioned on the middle positions. Either
    way the middle values are the same, and the generic median's checks, which
    cost as much as the selection on the short rows of a window, are skipped.

    Example:
        >>> row_medians(np.array([[3.0, 1.0, 2.0, 10.0], [5.0, 4.0, 6.0, 0.0]])).tolist()
        [2.5, 4.5]

    """
    width = rows.shape[1]
    half = width // 2
    if width <= SORT_WIDTH:
        part = np.sort(rows, axis=1)
    elif width % 2:
        return np.partition(rows, half, axis=1)[:, half]
    else:
        part = np.partition(rows, (half - 1, half), axis=1)
    if width % 2:
        return part[:, half]
    return (part[:, half - 1] + part[:, half]) / 2.0


def padded_medians(rows: FloatArray, lengths: IntArray) -> FloatArray:
    """Median of the first ``lengths[i]`` values of each row, the rest NaN (at least one value).

    NaN sorts last, so one sort serves windows of every length, and the
    numbers are :func:`row_medians`' of each window alone: the middle value, or
    for an even count the mean of the two.

    Example:
        >>> rows = np.array([[3.0, 1.0, np.nan], [5.0, 4.0, 6.0]])
        >>> padded_medians(rows, np.array([2, 3])).tolist()
        [2.0, 5.0]

    """
    ordered = np.sort(rows, axis=1)
    at = np.arange(len(rows))
    upper = ordered[at, lengths // 2]
    lower = ordered[at, (lengths - 1) // 2]
    return np.where(lengths % 2 == 1, upper, (lower + upper) / 2.0)


def prefix_windows(values: FloatArray, lengths: IntArray) -> FloatArray:
    """Rows of the first ``lengths[i]`` values of ``values``, NaN after them.

    The windows of a series' first values, for :func:`padded_medians`.
    """
    width = int(lengths.max())
    rows = np.broadcast_to(values[:width], (len(lengths), width)).copy()
    rows[np.arange(width) >= lengths[:, None]] = np.nan
    return rows


def repeat_runs(same: BoolArray, carried: int) -> IntArray:
    """Length of the run of repeats ending at each position (0 where no repeat).

    Args:
        same: Whether each value equals its predecessor.
        carried: Repeats in the run still open before the first position.

    Example:
        >>> repeat_runs(np.array([True, False, True, True]), 2).tolist()
        [3, 0, 1, 2]

    """
    if len(same) <= SMALL_BATCH:  # a loop is cheaper than arrays on a value or two
        runs, length = [], carried
        for repeat in same.tolist():
            length = length + 1 if repeat else 0
            runs.append(length)
        return np.array(runs, dtype=np.int64)
    idx = np.arange(len(same))
    last_break = np.maximum.accumulate(np.where(same, -1, idx))
    run = np.where(same, idx - last_break, 0)
    # Repeats before any break in this batch continue the carried run.
    return np.where(same & (last_break == -1), run + carried, run).astype(np.int64)


class RobustZ(Detector):
    """``|x - median| / (1.4826 MAD)`` over the last ``window`` learned values.

    Score range: [0, inf); about N(0, 1) in absolute value for Gaussian noise.
    The median and MAD are those of the window as it stood at the latest
    refresh: after ``min_history`` learned values and then every
    ``stats_every`` values (1: after every value, the exact sliding window).
    Refreshing every few values costs a fraction of the sorting and moves a
    score little, since a window of ``window`` values changes by a few values
    between refreshes. The scale has a floor of ``floor_ratio`` times the
    series' long-run noise level (:mod:`operators.detectors.scale`), refreshed
    from the window every ``refresh_every`` values: after a run of identical
    values the MAD is 0, and a floor in the series' own units keeps the next
    ordinary readings ordinary, whatever the units. Scores 0 until
    ``min_history`` values are learned.

    Args:
        window: Number of recent values in the median and MAD.
        min_history: Values to learn before scoring.
        floor_ratio: Floor of the scale as a fraction of the long-run noise level.
        floor_halflife: Values after which the long-run noise level has
            forgotten half of what it knew.
        refresh_every: Values between updates of the long-run noise level.
        stats_every: Values between refreshes of the median and MAD.

    """

    name = "robust-z"
    score_range = "[0, inf): robust z-score"
    calibrator = "gaussian"

    def __init__(
        self,
        window: int = 120,
        min_history: int = 8,
        floor_ratio: float = 1.0,
        floor_halflife: float = 5000.0,
        refresh_every: int = 30,
        stats_every: int = 1,
    ) -> None:
        if (
            window < min_history
            or min_history < 2
            or not 1 <= refresh_every <= window
            or not 1 <= stats_every <= window
        ):
            msg = (
                "robust-z: expected 2 <= min_history <= window and 1 <= refresh_every, stats_every"
                f" <= window, got min_history={min_history}, window={window}, refresh_every="
                f"{refresh_every}, stats_every={stats_every}"
            )
            raise ValueError(msg)
        self.window = window
        self.min_history = min_history
        self.floor_ratio = floor_ratio
        self.refresh_every = refresh_every
        self.stats_every = stats_every
        self.long_run = LongRunScale.with_halflife(floor_halflife, refresh_every)
        self.count = 0
        self.history = np.empty(0, dtype=np.float64)
        self.median = math.nan  # nan until the first refresh
        self.mad = math.nan

    def _z(
        self,
        xs: FloatArray,
        med: float | FloatArray,
        mad: float | FloatArray,
        long_run: float | FloatArray,
    ) -> FloatArray:
        floor = scale_floor(self.floor_ratio, long_run, med)
        return finite_z(xs - med, np.maximum(MAD_TO_SIGMA * mad, floor))

    def _next_refresh(self) -> int:
        if self.count < self.min_history:
            return self.min_history
        return (self.count // self.refresh_every + 1) * self.refresh_every

    def score_one(self, x: float) -> float:
        """Robust z-score of ``x`` against the window's latest median and MAD.

        Plain float arithmetic, step for step that of the batch form's arrays.
        """
        med = self.median
        if math.isnan(med):
            return 0.0
        floor = max(self.floor_ratio * self.long_run.value, LEVEL_EPS * abs(med), TINY_SCALE)
        return min(abs(x - med) / max(MAD_TO_SIGMA * self.mad, floor), MAX_SCORE)

    def learn_one(self, x: float) -> None:
        """Append ``x`` to the window, dropping the oldest value when full."""
        due = self._next_refresh()
        self.history = np.concatenate((self.history, (x,)))[-self.window :]
        self.count += 1
        if self.count == due:
            self.long_run.update(self.history)
        if self._stats_due(self.count):
            row = self.history[None, :]
            self.median = float(row_medians(row)[0])
            self.mad = float(row_medians(np.abs(row - self.median))[0])

    def _stats_due(self, count: int) -> bool:
        return count >= self.min_history and (count - self.min_history) % self.stats_every == 0

    def score_learn_many(self, xs: FloatArray) -> FloatArray:
        """Vectorised score-then-learn: the median and MAD only at refreshes."""
        n = len(xs)
        if n <= SMALL_BATCH:  # a series with a reading or two per batch: arrays cost more
            return super().score_learn_many(xs)
        hist_len = len(self.history)
        joined = np.concatenate((self.history, xs))
        # Element j is learned as the (count + j + 1)-th value; a refresh after it
        # serves the elements after it.
        learned = self.count + 1 + np.arange(n)
        due = (learned >= self.min_history) & ((learned - self.min_history) % self.stats_every == 0)
        after = np.flatnonzero(due)
        ends = hist_len + after + 1
        meds = np.empty(len(after), dtype=np.float64)
        mads = np.empty(len(after), dtype=np.float64)
        full = ends >= self.window
        if full.any():
            rows = sliding_window_view(joined, self.window)[ends[full] - self.window]
            meds[full] = row_medians(rows)
            mads[full] = row_medians(np.abs(rows - meds[full, None]))
        young = ~full
        if young.any():  # a young series' windows: all that it has learned
            rows = prefix_windows(joined, ends[young])
            meds[young] = padded_medians(rows, ends[young])
            mads[young] = padded_medians(np.abs(rows - meds[young, None]), ends[young])
        # Stats in force for each element: the last refresh before it, else the carried ones.
        latest = np.searchsorted(after, np.arange(n), side="left") - 1
        med = np.concatenate(([self.median], meds))[latest + 1]
        mad = np.concatenate(([self.mad], mads))[latest + 1]
        long_run = self._long_run_in_force(joined, hist_len, n)
        out = np.zeros(n, dtype=np.float64)
        ready = ~np.isnan(med)
        out[ready] = self._z(xs[ready], med[ready], mad[ready], long_run[ready])
        if len(after):
            self.median, self.mad = float(meds[-1]), float(mads[-1])
        self.history = joined[-self.window :].copy()
        return out

    def _long_run_in_force(self, joined: FloatArray, hist_len: int, n: int) -> FloatArray:
        """The long-run noise level each element is scored with; updates it as learning goes."""
        # Refreshes fall after the element that makes the count due: min_history,
        # then every multiple of refresh_every.
        learned = self.count + 1 + np.arange(n)
        due = (learned == self.min_history) | (
            (learned > self.min_history) & (learned % self.refresh_every == 0)
        )
        after = np.flatnonzero(due)
        stops = hist_len + after + 1
        sigmas = np.zeros(len(after), dtype=np.float64)
        full = stops >= self.window
        if full.any():
            rows = sliding_window_view(joined, self.window)[stops[full] - self.window]
            sigmas[full] = diff_sigmas(rows)
        for k in np.flatnonzero(~full).tolist():  # a young series' partial windows
            sigmas[k] = diff_sigma(joined[: stops[k]])
        long_run = np.empty(n, dtype=np.float64)
        start = 0
        for k, j in enumerate(after.tolist()):
            long_run[start : j + 1] = self.long_run.value
            if stops[k] >= 2:
                self.long_run.fold(float(sigmas[k]))
            start = j + 1
        long_run[start:] = self.long_run.value
        self.count += n
        return long_run


class Flatline(Detector):
    """Surprise of a run of identical values (a stuck sensor).

    With ``q`` the learned probability that a value repeats its predecessor
    exactly (Laplace-smoothed count over the series so far), a run of ``r``
    identical values has probability about ``q ** (r - 1)``; the score is its
    surprise ``-log10`` of that. Score range: [0, inf), 0 for a value that
    differs from the previous one.
    """

    name = "flatline"
    score_range = "[0, inf): -log10 probability of the current run of repeats"
    calibrator = "surprise"

    def __init__(self) -> None:
        self.last: float | None = None
        self.run = 0
        self.pairs = 0
        self.repeats = 0

    def score_one(self, x: float) -> float:
        """Surprise of the run that ``x`` would extend."""
        if self.last is None or x != self.last:
            return 0.0
        q = (self.repeats + 1) / (self.pairs + 2)
        return float(-(self.run + 1) * np.log10(q))

    def learn_one(self, x: float) -> None:
        """Count the pair (previous, x) and extend or restart the run."""
        if self.last is not None:
            self.pairs += 1
            if x == self.last:
                self.repeats += 1
                self.run += 1
            else:
                self.run = 0
        self.last = x

    def score_learn_many(self, xs: FloatArray) -> FloatArray:
        """Vectorised score-then-learn."""
        n = len(xs)
        if n <= SMALL_BATCH:  # plain Python is some 100 times cheaper on a reading or two
            return super().score_learn_many(xs)
        prev = np.concatenate(([np.nan if self.last is None else self.last], xs[:-1]))
        has_prev = np.ones(n, dtype=bool)
        if self.last is None:
            has_prev[0] = False
        same = (xs == prev) & has_prev
        run = repeat_runs(same, self.run)
        pairs_before = self.pairs + np.cumsum(has_prev) - has_prev
        repeats_before = self.repeats + np.cumsum(same) - same
        q = (repeats_before + 1) / (pairs_before + 2)
        out = np.where(same, -run * np.log10(q), 0.0)
        self.pairs = int(pairs_before[-1] + has_prev[-1])
        self.repeats = int(repeats_before[-1] + same[-1])
        self.run = int(run[-1])
        self.last = float(xs[-1])
        return np.asarray(out, dtype=np.float64)


def _missing_many(intervals: FloatArray, typical: FloatArray) -> IntArray:
    """:meth:`Gap._missing` of each interval against its typical one (NaN: none yet)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(typical > 0, np.round(intervals / np.where(typical > 0, typical, 1)), 1)
    return np.maximum(m.astype(np.int64) - 1, 0)


def _window_medians(joined: FloatArray, window: int, count: int) -> FloatArray:
    """Medians of the first ``count`` sliding windows of ``joined``.

    Event intervals are mostly one value repeated: a window holding only the
    latest value has it as its median, and only the other windows are sorted.
    """
    common = joined[-1]
    odd = np.concatenate(([0], np.cumsum(joined != common)))
    mixed = (odd[window : window + count] - odd[:count]) > 0
    out = np.full(count, common, dtype=np.float64)
    if mixed.any():
        out[mixed] = row_medians(sliding_window_view(joined, window)[:count][mixed])
    return out


class Gap(Detector):
    """Surprise of a gap in a series' event times (a dropout).

    The input is the interval since the previous reading. The typical interval
    is the median of the last ``window`` intervals; a gap of ``g`` holds
    ``m = round(g / typical) - 1`` missing readings. With ``pi`` the learned
    probability that an expected reading is missing (Laplace-smoothed), the
    score is the surprise of ``m`` misses in a row, ``-m log10 pi``. Score
    range: [0, inf), 0 when nothing is missing.
    """

    name = "gap"
    score_range = "[0, inf): -log10 probability of the missing readings"
    calibrator = "surprise"

    def __init__(self, window: int = 64, min_history: int = 8) -> None:
        self.window = window
        self.min_history = min_history
        self.history = np.empty(0, dtype=np.float64)
        self.slots = 0
        self.missing = 0
        self.typical = math.nan  # median of the history once it holds min_history values

    def _typical_of(self, hist: FloatArray) -> float:
        if len(hist) < self.min_history:
            return math.nan
        return float(row_medians(hist[None, :])[0])

    @staticmethod
    def _missing(x: float, typical: float) -> int:
        if not typical > 0:  # nan (too little history) or a non-positive interval
            return 0
        return max(round(x / typical) - 1, 0)

    def score_one(self, x: float) -> float:
        """Surprise of the readings missing before this one."""
        m = self._missing(x, self.typical)
        if m == 0:
            return 0.0
        pi = (self.missing + 1) / (self.slots + 2)
        return float(-m * np.log10(pi))

    def learn_one(self, x: float) -> None:
        """Count expected and missing readings, and remember the interval."""
        m = self._missing(x, self.typical)
        self.slots += m + 1
        self.missing += m
        self.history = np.concatenate((self.history, (x,)))[-self.window :]
        self.typical = self._typical_of(self.history)

    def score_learn_many(self, xs: FloatArray) -> FloatArray:
        """Vectorised score-then-learn over full windows."""
        n = len(xs)
        if n <= SMALL_BATCH:  # the per-event form, with its median kept, is cheaper
            return super().score_learn_many(xs)
        missing = np.zeros(n, dtype=np.int64)
        # While the window fills, each interval is judged by the median of all before it.
        i = min(n, self.window - len(self.history))
        hist = np.concatenate((self.history, xs[:i]))
        if i:
            before = len(self.history) + np.arange(i)  # intervals known before each
            typical = np.full(i, np.nan)
            known = before >= self.min_history
            if known.any():
                typical[known] = padded_medians(prefix_windows(hist, before[known]), before[known])
            missing[:i] = _missing_many(xs[:i], typical)
        if i < n:
            joined = np.concatenate((hist, xs[i:]))
            missing[i:] = _missing_many(xs[i:], _window_medians(joined, self.window, n - i))
            hist = joined[-self.window :]
        missing_before = self.missing + np.cumsum(missing) - missing
        slots_before = self.slots + np.cumsum(missing + 1) - (missing + 1)
        pi = (missing_before + 1) / (slots_before + 2)
        out = np.where(missing > 0, -missing * np.log10(pi), 0.0)
        self.history = hist.copy()
        self.typical = self._typical_of(self.history)
        self.missing += int(missing.sum())
        self.slots += int((missing + 1).sum())
        return np.asarray(out, dtype=np.float64)
