"""NAB-style scoring of alerts against anomaly windows (Numenta Anomaly Benchmark v1.1 rules).

Pure functions over row indices of one series; no I/O. The rules:

* Ground truth is a list of anomaly windows per series, inclusive row ranges
  (:func:`windows_from_labels` builds them from per-row labels as NAB does,
  :func:`windows_from_times` maps NAB's timestamp windows onto rows).
* The first ``min(floor(0.15 n), 750)`` rows of a series of ``n`` rows are a
  probationary period: detections there earn and cost nothing, and a window
  with no row after it is not scored.
* Inside a window of ``w`` rows whose last row is ``r``, a detection at row
  ``i`` is worth ``tp_weight * sigma(-(r - i + 1) / w) / sigma(-1)``, with
  ``sigma(x) = 2 / (1 + exp(5 x)) - 1`` (``-1`` past ``x = 3``); only the
  earliest detection of a window counts. A window with none costs ``fn_weight``.
* A detection outside every window costs ``fp_weight * sigma(d / (w' - 1))``,
  ``d`` rows after the last row of the preceding window of ``w'`` rows; it costs
  the full ``fp_weight`` when no window precedes it or that window is one row.
* ``normalised = 100 (raw - null) / (perfect - null)`` with ``null = -fn_weight``
  and ``perfect = tp_weight`` per scored window: 0 is never alerting, 100 is
  every window caught at its first row with no false detection.

The raw score is linear in the three weights, so one :class:`NabTally` per
series holds everything each :data:`PROFILES` entry needs, and tallies add up
across the series of a stream.

Example:
    >>> detections = np.zeros(200, dtype=bool)
    >>> detections[[10, 50, 55, 100]] = True  # probation, window start, again, far after
    >>> t = tally_series(200, [(50, 59)], detections)
    >>> t.windows, t.detected, t.false_detections
    (1, 1, 1)
    >>> round(t.raw(STANDARD), 4), t.null(STANDARD), t.perfect(STANDARD)
    (0.89, -1.0, 1.0)
    >>> round(t.normalised(STANDARD), 2)
    94.5

"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from operators.events import BoolArray, FloatArray, IntArray

#: An anomaly window: first and last row, inclusive.
Window = tuple[int, int]

PROBATION_FRACTION = 0.15
PROBATION_CAP = 750
WINDOW_FRACTION = 0.10
_STEEPNESS = 5.0


@dataclass(frozen=True, slots=True)
class Profile:
    """A NAB application profile: the weight of a hit, a false detection and a miss."""

    name: str
    tp_weight: float
    fp_weight: float
    fn_weight: float


STANDARD = Profile("standard", 1.0, 0.11, 1.0)
PROFILES: tuple[Profile, ...] = (
    STANDARD,
    Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
)


def scaled_sigmoid(x: npt.ArrayLike) -> FloatArray:
    """NAB's ``sigma``: about +0.987 at -1, 0 at 0, about -0.987 at 1, exactly -1 past 3.

    Example:
        >>> scaled_sigmoid([-1.0, 0.0, 4.0]).round(4).tolist()
        [0.9866, 0.0, -1.0]

    """
    arr = np.asarray(x, dtype=np.float64)
    # Clipping first keeps exp() finite; the clipped values are replaced anyway.
    val = 2.0 / (1.0 + np.exp(_STEEPNESS * np.minimum(arr, 3.0))) - 1.0
    return np.where(arr > 3.0, -1.0, val)


_MAX_REWARD = float(scaled_sigmoid(-1.0))


def probation_rows(n_rows: int) -> int:
    """Rows at the start of a series that are neither rewarded nor penalised.

    Example:
        >>> probation_rows(100), probation_rows(10_320)
        (15, 750)

    """
    return min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_CAP)


def merge_windows(windows: Iterable[Window], n_rows: int) -> list[Window]:
    """Clip windows to the rows of the series, then merge those that share a row.

    Example:
        >>> merge_windows([(8, 12), (-3, 2), (11, 20), (30, 40)], 35)
        [(0, 2), (8, 20), (30, 34)]

    """
    out: list[Window] = []
    for start, end in sorted(windows):
        lo, hi = max(start, 0), min(end, n_rows - 1)
        if lo > hi:
            continue
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def windows_from_labels(labelled: npt.ArrayLike) -> list[Window]:
    """NAB windows around the labelled episodes (runs of labelled rows) of one series.

    Each episode is the centre of a window of ``10 % of the rows / episodes``
    rows (at least the episode itself); windows are merged where they overlap
    and clipped to the series.

    Example:
        >>> labelled = np.zeros(100, dtype=bool)
        >>> labelled[[20, 60, 61]] = True
        >>> windows_from_labels(labelled)  # two episodes: 5 rows each
        [(18, 22), (59, 63)]

    """
    mask = np.asarray(labelled, dtype=bool)
    n = len(mask)
    edges = np.flatnonzero(np.diff(mask.astype(np.int8), prepend=0, append=0))
    episodes = list(zip(edges[0::2].tolist(), (edges[1::2] - 1).tolist(), strict=True))
    if not episodes:
        return []
    length = max(round(WINDOW_FRACTION * n / len(episodes)), 1)
    windows: list[Window] = []
    for start, end in episodes:
        extra = max(length - (end - start + 1), 0)
        windows.append((start - extra // 2, end + extra - extra // 2))
    return merge_windows(windows, n)


def windows_from_times(ts_ms: IntArray, edges_ms: Iterable[tuple[int, int]]) -> list[Window]:
    """Map windows given as inclusive event-time ranges onto the rows of one series.

    A window that holds no row is dropped; overlapping ones are merged.

    Example:
        >>> windows_from_times(np.arange(0, 10_000, 1000), [(2000, 4500), (20_000, 30_000)])
        [(2, 4)]

    """
    ts = np.asarray(ts_ms, dtype=np.int64)
    rows = [
        (int(np.searchsorted(ts, start, side="left")), int(np.searchsorted(ts, end, "right")) - 1)
        for start, end in edges_ms
    ]
    return merge_windows(rows, len(ts))


@dataclass(frozen=True, slots=True)
class NabTally:
    """What NAB needs to know about the detections of one or more series.

    Attributes:
        windows: Scored windows (with a row after the probationary period).
        detected: Scored windows with a detection.
        reward: Sum over detected windows of their earliest detection's worth,
            ``sigma(-(r - i + 1) / w) / sigma(-1)``, each in ``(0, 1]``.
        false_detections: Detections after probation outside every window.
        penalty: Sum of their costs, ``sigma(d / (w' - 1))`` or -1, each in ``[-1, 0)``.

    """

    windows: int = 0
    detected: int = 0
    reward: float = 0.0
    false_detections: int = 0
    penalty: float = 0.0

    def __add__(self, other: NabTally) -> NabTally:
        return NabTally(
            self.windows + other.windows,
            self.detected + other.detected,
            self.reward + other.reward,
            self.false_detections + other.false_detections,
            self.penalty + other.penalty,
        )

    def raw(self, profile: Profile) -> float:
        """The raw NAB score under a profile."""
        missed = self.windows - self.detected
        return (
            profile.tp_weight * self.reward
            + profile.fp_weight * self.penalty
            - profile.fn_weight * missed
        )

    def null(self, profile: Profile) -> float:
        """The raw score of never detecting anything."""
        return -profile.fn_weight * self.windows

    def perfect(self, profile: Profile) -> float:
        """The raw score of catching every window at its first row, with no false detection."""
        return profile.tp_weight * self.windows

    def normalised(self, profile: Profile) -> float | None:
        """``100 (raw - null) / (perfect - null)``; None when no window is scored."""
        span = self.perfect(profile) - self.null(profile)
        return 100.0 * (self.raw(profile) - self.null(profile)) / span if span else None

    def summary(self) -> dict[str, object]:
        """The figures as a JSON-ready dict, one entry per profile."""
        out: dict[str, object] = {
            "windows": self.windows,
            "windows_detected": self.detected,
            "false_detections": self.false_detections,
        }
        for p in PROFILES:
            score = self.normalised(p)
            out[p.name] = {
                "score": None if score is None else round(score, 4),
                "raw": round(self.raw(p), 6),
                "null": self.null(p),
                "perfect": self.perfect(p),
            }
        return out


def tally_series(n_rows: int, windows: Sequence[Window], detections: BoolArray) -> NabTally:
    """Score the detections of one series against its windows.

    Args:
        n_rows: Rows of the series.
        windows: Its anomaly windows, sorted, disjoint, within ``0..n_rows - 1``.
        detections: Per row, whether it raised an alert.

    Raises:
        ValueError: when the windows or the detection mask do not fit the series.

    """
    det = np.asarray(detections, dtype=bool)
    if det.shape != (n_rows,):
        msg = f"nab score: detections: expected {n_rows} rows, got shape {det.shape}"
        raise ValueError(msg)
    if merge_windows(windows, n_rows) != list(windows):
        msg = f"nab score: windows: expected sorted, disjoint rows in 0..{n_rows - 1}"
        raise ValueError(msg)
    first_scored = probation_rows(n_rows)
    rows = np.flatnonzero(det)
    rows = rows[rows >= first_scored]
    if not windows:
        return NabTally(false_detections=len(rows), penalty=-float(len(rows)))
    starts = np.array([s for s, _ in windows], dtype=np.int64)
    ends = np.array([e for _, e in windows], dtype=np.int64)
    # The latest window starting at or before each detection (-1: none).
    k = np.searchsorted(starts, rows, side="right") - 1
    prev_end = np.where(k >= 0, ends[np.maximum(k, 0)], -1)
    inside = rows <= prev_end

    hit, first = np.unique(k[inside], return_index=True)
    at = rows[inside][first]
    width = ends[hit] - starts[hit] + 1
    reward = scaled_sigmoid(-(ends[hit] - at + 1) / width) / _MAX_REWARD

    kk = k[~inside]
    before = np.maximum(kk, 0)
    width_before = ends[before] - starts[before] + 1
    far = (kk < 0) | (width_before <= 1)
    distance = rows[~inside] - prev_end[~inside]
    cost = np.where(far, -1.0, scaled_sigmoid(distance / np.maximum(width_before - 1, 1)))

    return NabTally(
        windows=int(np.count_nonzero(ends >= first_scored)),
        detected=len(hit),
        reward=float(reward.sum()),
        false_detections=len(kk),
        penalty=float(cost.sum()),
    )
