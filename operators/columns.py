"""Columnar state of a shard's series: one row per series, one array per field.

With many series, a per-series state made of Python objects costs more than
the scoring: building one for a new series takes some 14 µs, pickling it at a
snapshot 29 µs and unpickling it 49 µs, and each reading of a series seen once
a batch goes through a dozen small objects. For the flows' usual settings (a
fixed-bounds normalizer, the ``robust-z`` value detector, the stuck and gap
features and the alert policy) every field of that state is a number or a
window of numbers, so a shard keeps them as arrays with a row per series:

* a new series is a new row (the arrays grow by doubling);
* readings of distinct series are scored together, *one round at a time*:
  each step of each detector's per-event form (``score_one`` then
  ``learn_one``) is one array operation over the round's rows, and a window's
  median, MAD or noise level is refreshed for all the rows due at once;
* a snapshot pickles the arrays, each ring cut to the values it holds.

Windows are rings: a value overwrites the oldest in its row, one write per
row, and a young window fills a row from its first column. Medians ignore
order (a batch of windows of different lengths is sorted at once, the empty
places NaN, which sorts last); the noise level, from successive differences,
reads a ring oldest first, the order in which the per-series objects hold it.
Every number is the one the per-series path gives: the same float operations
in the same order, medians being order statistics.

A reading out of event-time order and a reading at or above the alert
threshold take the per-series functions on the series' state rebuilt as
objects (:meth:`SeriesColumns.state_of_row`). So does a series with a long
batch (the shard step decides, :data:`operators.shards.LONG_BATCH`): its
objects stay *live* while its batches stay long and are written back into the
row (:meth:`SeriesColumns.settle`) before it joins a round again, or at a
snapshot. A test scores the same streams both ways and compares every output
and the state left behind.

Example:
    >>> from operators.alerting import AlertPolicy
    >>> from operators.normalize import FixedMinMax
    >>> from operators.steps import DetectConfig
    >>> spec = ColumnSpec.of(lambda: FixedMinMax(21.0, 85.0), DetectConfig("robust-z"))
    >>> spec is not None, ColumnSpec.of(lambda: FixedMinMax(), DetectConfig("context"))
    (True, None)

"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from operators.alerting import RECENT_WINDOW, AlertPolicy, AlertState
from operators.detectors import make_detector
from operators.detectors.robust import MAD_TO_SIGMA, Flatline, Gap, RobustZ, padded_medians
from operators.detectors.scale import diff_sigmas, finite_z, scale_floor
from operators.events import (
    Alert,
    DeadLetter,
    DetectedBatch,
    FloatArray,
    IntArray,
    ScoredBatch,
    ScoredRows,
    SeriesBatch,
    ShardBatch,
)
from operators.normalize import FixedMinMax, Normalizer
from operators.steps import (
    DetectConfig,
    DetectState,
    NormalizeState,
    alert_counted,
    pick_features,
)

#: Stands for "no time yet" in the int64 time columns.
NO_TIME = np.iinfo(np.int64).min
#: How the windows lie in their rows (rings), part of a snapshot's settings.
LAYOUT = "rings-1"
#: Rows a store starts with; it doubles when full.
FIRST_ROWS = 64

Output = ScoredBatch | ScoredRows | DeadLetter


@dataclass(frozen=True)
class ColumnSpec:
    """The settings a columnar store serves: what every series is scored with.

    Built by :meth:`of`, which answers ``None`` for settings whose state is not
    all numbers (a normalizer that learns, another value detector).
    """

    lo: float
    hi: float
    detect: DetectConfig
    robust: RobustZ
    gap: Gap | None

    @classmethod
    def of(
        cls, make_normalizer: Callable[[], Normalizer], detect: DetectConfig
    ) -> ColumnSpec | None:
        """The spec of these settings, or ``None`` when they need per-series objects."""
        normalizer = make_normalizer()
        if type(normalizer) is not FixedMinMax:
            return None
        value = make_detector(detect.detector, dict(detect.options))
        if type(value) is not RobustZ:
            return None
        return cls(normalizer.lo, normalizer.hi, detect, value, Gap() if detect.gap else None)


@dataclass
class ColumnSnapshot:
    """What a columnar store's snapshot holds: series names and the arrays, trimmed."""

    names: list[str]
    arrays: dict[str, np.ndarray]
    spec: tuple[Any, ...]


class SeriesColumns:
    """The states of a shard's series, as arrays with a row per series.

    Args:
        spec: The settings every series is scored with.
        policy: The alert policy.
        flow_name: Name of the flow, for the alert counter.

    """

    def __init__(self, spec: ColumnSpec, policy: AlertPolicy, flow_name: str) -> None:
        self.spec = spec
        self.policy = policy
        self.flow_name = flow_name
        self.normalizer = FixedMinMax(spec.lo, spec.hi)
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        #: Rows whose state is held as objects for now (a series of long batches
        #: keeps them between batches); their row is stale until :meth:`settle`.
        self.live: dict[int, Any] = {}
        self.a: dict[str, np.ndarray] = {}
        rz = spec.robust
        widths: dict[str, tuple[int, Any, Any]] = {
            "last_ts": (0, np.int64, NO_TIME),
            "det_ts": (0, np.int64, NO_TIME),
            "rz_count": (0, np.int64, 0),
            "rz_hist": (rz.window, np.float64, 0.0),
            "rz_median": (0, np.float64, np.nan),
            "rz_mad": (0, np.float64, np.nan),
            "rz_lr": (0, np.float64, 0.0),
            "rz_lr_n": (0, np.int64, 0),
            "al_above": (0, np.int64, 0),
            "al_last": (0, np.int64, NO_TIME),
            "al_recent": (RECENT_WINDOW, np.float64, 0.0),
            "al_len": (0, np.int64, 0),
            "al_pos": (0, np.int64, 0),
        }
        if spec.detect.stuck:
            widths |= {
                "fl_has": (0, np.bool_, False),
                "fl_last": (0, np.float64, 0.0),
                "fl_run": (0, np.int64, 0),
                "fl_pairs": (0, np.int64, 0),
                "fl_repeats": (0, np.int64, 0),
            }
        if spec.gap is not None:
            widths |= {
                "gp_hist": (spec.gap.window, np.float64, 0.0),
                "gp_len": (0, np.int64, 0),
                "gp_pos": (0, np.int64, 0),
                "gp_slots": (0, np.int64, 0),
                "gp_missing": (0, np.int64, 0),
                "gp_typical": (0, np.float64, np.nan),
            }
        self._fields = widths
        for name in widths:
            self.a[name] = self._new(name, FIRST_ROWS)

    # -- rows ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.names)

    def row(self, series: str) -> int:
        """The series' row, made for a series seen for the first time."""
        row = self.index.get(series)
        return int(self.rows((series,))[0]) if row is None else row

    def _new(self, name: str, rows: int) -> np.ndarray:
        width, dtype, fill = self._fields[name]
        shape = (rows, width) if width else (rows,)
        if fill == 0:  # zeroed pages come from the system on first touch
            return np.zeros(shape, dtype=dtype)
        return np.full(shape, fill, dtype=dtype)

    def _grow(self, rows: int) -> None:
        for name, old in self.a.items():
            new = self._new(name, rows)
            new[: len(old)] = old
            self.a[name] = new

    def _ring_lengths(self, n: int) -> dict[str, IntArray]:
        """How many values each of the first ``n`` rows' rings hold (its first columns)."""
        a = self.a
        lengths = {
            "rz_hist": np.minimum(a["rz_count"][:n], self.spec.robust.window),
            "al_recent": a["al_len"][:n],
        }
        if "gp_hist" in a:
            lengths["gp_hist"] = a["gp_len"][:n]
        return lengths

    # -- objects <-> rows ---------------------------------------------------

    def state(self, series: str) -> Any:
        """The series' state as the per-series path holds it (a new object; read only).

        Raises:
            KeyError: for a series never seen.

        """
        row = self.index[series]
        return self.live[row] if row in self.live else self.state_of_row(row)

    def live_state(self, row: int) -> Any:
        """The row's state as objects, to change: held live until :meth:`settle`."""
        state = self.live.get(row)
        if state is None:
            state = self.live[row] = self.state_of_row(row)
        return state

    def settle(self, row: int) -> None:
        """Write a live row's objects back into the row, and let them go."""
        self.put(self.names[row], self.live.pop(row))

    def state_of_row(self, row: int) -> Any:
        """The state held in ``row`` as objects (a new one; see :meth:`state`)."""
        from operators.shards import SeriesState  # the shard step imports this module

        a, spec = self.a, self.spec
        rz = copy.copy(spec.robust)
        rz.long_run = copy.copy(spec.robust.long_run)
        rz.long_run.value = float(a["rz_lr"][row])
        rz.long_run.updates = int(a["rz_lr_n"][row])
        rz.count = int(a["rz_count"][row])
        rz.history = _unroll(a["rz_hist"][row], rz.count % rz.window, min(rz.count, rz.window))
        rz.median = float(a["rz_median"][row])
        rz.mad = float(a["rz_mad"][row])
        stuck = None
        if spec.detect.stuck:
            stuck = Flatline()
            stuck.last = float(a["fl_last"][row]) if a["fl_has"][row] else None
            stuck.run = int(a["fl_run"][row])
            stuck.pairs = int(a["fl_pairs"][row])
            stuck.repeats = int(a["fl_repeats"][row])
        gap = None
        if spec.gap is not None:
            gap = copy.copy(spec.gap)
            gap.history = _unroll(a["gp_hist"][row], int(a["gp_pos"][row]), int(a["gp_len"][row]))
            gap.slots = int(a["gp_slots"][row])
            gap.missing = int(a["gp_missing"][row])
            gap.typical = float(a["gp_typical"][row])
        return SeriesState(
            NormalizeState(self.normalizer, _time(a["last_ts"][row])),
            DetectState(rz, stuck, gap, _time(a["det_ts"][row])),
            self._alert_of(row),
        )

    def _alert_of(self, row: int) -> AlertState:
        a = self.a
        recent = _unroll(a["al_recent"][row], int(a["al_pos"][row]), int(a["al_len"][row]))
        return AlertState(int(a["al_above"][row]), _time(a["al_last"][row]), recent)

    def put(self, series: str, state: Any) -> bool:
        """Write a per-series state into the series' row; ``False`` if it does not fit the spec."""
        if not self._fits(state):
            return False
        row = self.row(series)
        a = self.a
        a["last_ts"][row] = _no_time(state.normalize.last_ts_ms)
        det: DetectState = state.detect
        rz = det.value
        assert isinstance(rz, RobustZ)
        a["rz_lr"][row] = rz.long_run.value
        a["rz_lr_n"][row] = rz.long_run.updates
        a["rz_count"][row] = rz.count
        _lay_out(a["rz_hist"], row, rz.history, rz.count % rz.window)
        a["rz_median"][row] = rz.median
        a["rz_mad"][row] = rz.mad
        if det.stuck is not None:
            a["fl_has"][row] = det.stuck.last is not None
            a["fl_last"][row] = 0.0 if det.stuck.last is None else det.stuck.last
            a["fl_run"][row] = det.stuck.run
            a["fl_pairs"][row] = det.stuck.pairs
            a["fl_repeats"][row] = det.stuck.repeats
        if det.gap is not None:
            _lay_out(a["gp_hist"], row, det.gap.history, len(det.gap.history) % det.gap.window)
            a["gp_len"][row] = len(det.gap.history)
            a["gp_pos"][row] = len(det.gap.history) % det.gap.window
            a["gp_slots"][row] = det.gap.slots
            a["gp_missing"][row] = det.gap.missing
            a["gp_typical"][row] = det.gap.typical
        a["det_ts"][row] = _no_time(det.last_ts_ms)
        self._put_alert(row, state.alert)
        return True

    def _put_alert(self, row: int, alert: AlertState) -> None:
        a = self.a
        a["al_above"][row] = alert.above
        a["al_last"][row] = _no_time(alert.last_alert_ms)
        _lay_out(a["al_recent"], row, alert.recent, len(alert.recent) % RECENT_WINDOW)
        a["al_len"][row] = len(alert.recent)
        a["al_pos"][row] = len(alert.recent) % RECENT_WINDOW

    def _fits(self, state: Any) -> bool:
        """Whether ``state`` is one this store's rows can hold exactly."""
        spec = self.spec
        norm, det = state.normalize.normalizer, state.detect
        rz, template = det.value, spec.robust
        return (
            type(norm) is FixedMinMax
            and (norm.lo, norm.hi) == (spec.lo, spec.hi)
            and type(rz) is RobustZ
            and _settings(rz) == _settings(template)
            and rz.long_run.weight == template.long_run.weight
            and (det.stuck is not None) == spec.detect.stuck
            and (det.gap is None) == (spec.gap is None)
            and (det.gap is None or spec.gap is None or _settings(det.gap) == _settings(spec.gap))
        )

    # -- snapshots ----------------------------------------------------------

    def snapshot(self) -> ColumnSnapshot:
        """The names and the used rows of every array (views: pickle them before any change).

        Rows held as objects are written back first (and stay live).
        """
        for row, state in self.live.items():
            self.put(self.names[row], state)
        n = len(self.names)
        arrays: dict[str, np.ndarray] = {k: v[:n] for k, v in self.a.items()}
        for name, length in self._ring_lengths(n).items():
            # A ring fills from its first column: keep only the values it holds.
            width = arrays[name].shape[1]
            if (length < width).any():
                arrays[name] = arrays[name][np.arange(width) < length[:, None]]
        return ColumnSnapshot(list(self.names), arrays, self._spec_key())

    def _spec_key(self) -> tuple[Any, ...]:
        spec = self.spec
        gap = None if spec.gap is None else _settings(spec.gap)
        robust = (*_settings(spec.robust), spec.robust.long_run.weight)
        return (LAYOUT, spec.lo, spec.hi, spec.detect.stuck, robust, gap)

    def restore(self, snap: ColumnSnapshot) -> bool:
        """Take the rows of a snapshot; ``False`` (nothing taken) if written with other settings."""
        if snap.spec != self._spec_key() or set(snap.arrays) != set(self.a):
            return False
        n = len(snap.names)
        if n > len(self.a["last_ts"]):
            self._grow(max(n, FIRST_ROWS))
        rings = {k: v for k, v in snap.arrays.items() if self.a[k].ndim == 2}
        for k, v in snap.arrays.items():
            if k not in rings:
                self.a[k][:n] = v
        for name, length in self._ring_lengths(n).items():
            values = rings[name]
            if values.ndim == 2:
                self.a[name][:n] = values
            else:  # only the values held (see snapshot)
                self.a[name][:n][np.arange(self.a[name].shape[1]) < length[:, None]] = values
        self.names = list(snap.names)
        self.index = {name: i for i, name in enumerate(self.names)}
        return True

    # -- scoring ------------------------------------------------------------

    def rows(self, names: tuple[str, ...]) -> IntArray:
        """The rows of these distinct series (made for those seen for the first time)."""
        get = self.index.get
        found = list(map(get, names))
        if None in found:
            new = [name for name, row in zip(names, found, strict=True) if row is None]
            first, end = len(self.names), len(self.names) + len(new)
            if end > len(self.a["last_ts"]):
                self._grow(max(end, 2 * len(self.a["last_ts"])))
            self.index.update(zip(new, range(first, end), strict=True))
            self.names.extend(new)
            found = list(map(get, names))
        return np.array(found, dtype=np.int64)

    def score_round(
        self,
        item: ShardBatch,
        picks: IntArray,
        rows: IntArray,
        pos: IntArray,
        slow: Callable[[int, SeriesBatch], list[Output]],
    ) -> list[Output]:
        """Score one reading of each picked series of ``item`` (distinct rows).

        Args:
            item: A shard's batch.
            picks: Which of its series.
            rows: Their rows.
            pos: Where their reading is in ``item``'s columns.
            slow: The per-series path for a row and batch (a reading out of
                event-time order, which becomes a dead letter).

        Returns:
            The dead letters' outputs, then the round's scored rows.

        """
        a = self.a
        ts = item.ts_ms[pos]
        last = a["last_ts"][rows]
        late = (last != NO_TIME) & (ts <= last)
        out: list[Output] = []
        if late.any():
            for k in np.flatnonzero(late).tolist():
                out.extend(slow(int(rows[k]), item.reading(int(picks[k]), int(pos[k]))))
            keep = ~late
            picks, rows, pos, ts = picks[keep], rows[keep], pos[keep], ts[keep]
        if len(rows):
            out.append(self._score(item, picks, rows, pos, ts))
        return out

    def _score(
        self, item: ShardBatch, picks: IntArray, rows: IntArray, pos: IntArray, ts: IntArray
    ) -> ScoredRows:
        a, spec, policy = self.a, self.spec, self.policy
        x = item.values[pos]
        a["last_ts"][rows] = ts
        xn = (x - spec.lo) / (spec.hi - spec.lo)  # FixedMinMax.transform_one's operations
        value_raw = self._robust(rows, xn)
        names = spec.detect.feature_names()
        stuck = self._flatline(rows, x) if spec.detect.stuck else None
        if spec.gap is not None:
            gap = self._gap(rows, ts)
        else:
            gap = None
            a["det_ts"][rows] = ts
        scores, features, detail = pick_features(RobustZ.calibrator, value_raw, stuck, gap)
        hot = scores >= policy.threshold
        alerted = np.zeros(len(rows), dtype=bool)
        alerts: list[Alert] = []
        if hot.any():
            self._note_ordinary(rows[~hot], x[~hot])
            small = features.astype(np.int8)
            for k in np.flatnonzero(hot).tolist():
                row = int(rows[k])
                alert = self._alert_of(row)
                det = DetectedBatch(
                    batch=item.reading(int(picks[k]), int(pos[k])),
                    raw_scores=value_raw[k : k + 1],
                    scores=scores[k : k + 1],
                    features=small[k : k + 1],
                    feature_names=names,
                    detector=spec.detect.detector,
                    details=detail[k : k + 1],
                )
                done = alert_counted(policy, alert, det, self.flow_name)
                self._put_alert(row, alert)
                alerted[k] = done.alerted[0]
                alerts.extend(done.alerts)
        else:
            self._note_ordinary(rows, x)
        series = item.names
        return ScoredRows(
            series=tuple(map(series.__getitem__, picks.tolist())),
            ts_ms=ts,
            values=x,
            labels=tuple(map(item.labels.__getitem__, pos.tolist())),
            raw_scores=value_raw,
            scores=scores,
            alerted=alerted,
            threshold=policy.threshold,
            detector=spec.detect.detector,
            alerts=tuple(alerts),
        )

    def _robust(self, rows: IntArray, xn: FloatArray) -> FloatArray:
        """``RobustZ.score_one`` then ``learn_one`` for each row's value."""
        a, rz = self.a, self.spec.robust
        med = a["rz_median"][rows]
        ready = ~np.isnan(med)
        raw = np.zeros(len(rows), dtype=np.float64)
        if ready.any():
            r = rows[ready]
            m = med[ready]
            scale = np.maximum(
                MAD_TO_SIGMA * a["rz_mad"][r], scale_floor(rz.floor_ratio, a["rz_lr"][r], m)
            )
            raw[ready] = finite_z(xn[ready] - m, scale)
        count = a["rz_count"][rows]
        # The long-run refresh point before learning (RobustZ._next_refresh).
        due = np.where(
            count < rz.min_history,
            rz.min_history,
            (count // rz.refresh_every + 1) * rz.refresh_every,
        )
        a["rz_hist"][rows, count % rz.window] = xn
        count = count + 1
        a["rz_count"][rows] = count
        fold = count == due
        if fold.any():
            self._fold_long_run(rows[fold], count[fold])
        stats = (count >= rz.min_history) & ((count - rz.min_history) % rz.stats_every == 0)
        if stats.any():
            r, c = rows[stats], count[stats]
            k = np.minimum(c, rz.window)
            window = _padded(a["rz_hist"], r, k)
            med_now = padded_medians(window, k)
            a["rz_median"][r] = med_now
            a["rz_mad"][r] = padded_medians(np.abs(window - med_now[:, None]), k)
        return raw

    def _fold_long_run(self, rows: IntArray, count: IntArray) -> None:
        """``LongRunScale.update`` with each row's window (of at least 2 values here)."""
        a, rz = self.a, self.spec.robust
        for sub, hist in _windows(a["rz_hist"], rows, np.minimum(count, rz.window), count):
            sigma = diff_sigmas(hist)
            updates = a["rz_lr_n"][sub] + 1
            a["rz_lr_n"][sub] = updates
            w = np.maximum(1.0 / updates, rz.long_run.weight)
            value = a["rz_lr"][sub]
            a["rz_lr"][sub] = value + w * (sigma - value)

    def _flatline(self, rows: IntArray, x: FloatArray) -> tuple[FloatArray, FloatArray]:
        """``Flatline.score_one`` then ``learn_one`` on raw values; the run each value ends."""
        a = self.a
        has = a["fl_has"][rows]
        same = has & (x == a["fl_last"][rows])
        run = a["fl_run"][rows]
        pairs = a["fl_pairs"][rows]
        repeats = a["fl_repeats"][rows]
        raw = np.zeros(len(rows), dtype=np.float64)
        if same.any():
            q = (repeats[same] + 1) / (pairs[same] + 2)
            raw[same] = -(run[same] + 1) * np.log10(q)
        ended = np.where(same, run + 2, 1).astype(np.float64)
        a["fl_pairs"][rows] = pairs + has
        a["fl_repeats"][rows] = repeats + same
        a["fl_run"][rows] = np.where(same, run + 1, 0)
        a["fl_last"][rows] = x
        a["fl_has"][rows] = True
        return raw, ended

    def _gap(self, rows: IntArray, ts: IntArray) -> tuple[FloatArray, FloatArray]:
        """``Gap.score_one`` then ``learn_one`` on each row's interval; the intervals."""
        a = self.a
        gap = self.spec.gap
        assert gap is not None
        prev = a["det_ts"][rows]
        a["det_ts"][rows] = ts
        seen = prev != NO_TIME
        # A series' first reading has no interval to judge: 0 s, never scored.
        interval = np.where(seen, (ts - np.where(seen, prev, ts)) / 1000.0, 0.0)
        raw = np.zeros(len(rows), dtype=np.float64)
        if not seen.any():
            return raw, interval
        r, iv = rows[seen], interval[seen]
        typical = a["gp_typical"][r]
        known = typical > 0  # nan (too little history) or a non-positive interval: nothing missing
        missing = np.zeros(len(r), dtype=np.int64)
        if known.any():
            ratio = np.round(iv[known] / typical[known])
            missing[known] = np.maximum(ratio.astype(np.int64) - 1, 0)
        slots = a["gp_slots"][r]
        missed = a["gp_missing"][r]
        some = missing > 0
        if some.any():
            pi = (missed[some] + 1) / (slots[some] + 2)
            part = np.zeros(len(r), dtype=np.float64)
            part[some] = -missing[some] * np.log10(pi)
            raw[seen] = part
        a["gp_slots"][r] = slots + missing + 1
        a["gp_missing"][r] = missed + missing
        hist, pos = a["gp_hist"], a["gp_pos"][r]
        before = a["gp_len"][r]
        dropped = hist[r, pos]
        hist[r, pos] = iv
        a["gp_pos"][r] = (pos + 1) % gap.window
        length = np.minimum(before + 1, gap.window)
        a["gp_len"][r] = length
        young = length < gap.min_history
        a["gp_typical"][r[young]] = np.nan
        # A full window whose dropped interval equals the new one keeps its median.
        due = ~young & ((before < gap.window) | (dropped != iv))
        if due.any():
            sub, k = r[due], length[due]
            a["gp_typical"][sub] = padded_medians(_padded(hist, sub, k), k)
        return raw, interval

    def _note_ordinary(self, rows: IntArray, values: FloatArray) -> None:
        """``AlertState.note_ordinary`` for each row's raw value."""
        if len(rows):
            a = self.a
            a["al_above"][rows] = 0
            pos = a["al_pos"][rows]
            a["al_recent"][rows, pos] = values
            a["al_pos"][rows] = (pos + 1) % RECENT_WINDOW
            a["al_len"][rows] = np.minimum(a["al_len"][rows] + 1, RECENT_WINDOW)


def _time(value: np.int64) -> int | None:
    return None if value == NO_TIME else int(value)


def _no_time(value: int | None) -> int:
    return NO_TIME if value is None else value


def _unroll(ring: FloatArray, pos: int, k: int) -> FloatArray:
    """The ``k`` values of a ring (next write at ``pos``), oldest first, as a new array."""
    return ring[(pos - k + np.arange(k)) % len(ring)]


def _lay_out(array: np.ndarray, row: int, values: FloatArray, pos: int) -> None:
    """Write chronological ``values`` into a row's ring so the next write goes to ``pos``."""
    width = array.shape[1]
    array[row] = 0.0
    array[row, (pos - len(values) + np.arange(len(values))) % width] = values


def _padded(array: np.ndarray, rows: IntArray, lengths: IntArray) -> FloatArray:
    """Rows' ring windows (a copy), NaN where a window shorter than the ring has no value.

    A ring fills from its first column, so a short window is its first ``length`` columns.
    """
    window = array[rows]
    if (lengths < array.shape[1]).any():
        window[np.arange(array.shape[1]) >= lengths[:, None]] = np.nan
    return window


def _windows(
    array: np.ndarray, rows: IntArray, lengths: IntArray, learned: IntArray
) -> Iterator[tuple[IntArray, FloatArray]]:
    """Rows' ring windows oldest first, grouped by length: each group's rows and windows (2-D).

    A ring fills from its first column, so a window shorter than the ring is
    its first ``length`` columns. A full one starts after its newest value
    (``learned``, the values written so far, modulo the width).
    """
    width = array.shape[1]
    full = lengths >= width
    if full.any():
        sub = rows[full]
        cols = (learned[full, None] + np.arange(width)) % width
        yield sub, array[sub[:, None], cols]
    if not full.all():
        part, part_len = rows[~full], lengths[~full]
        for k in np.unique(part_len).tolist():
            sub = part[part_len == k]
            yield sub, array[sub, :k]


def _settings(obj: object) -> tuple[Any, ...]:
    """A detector's constructor settings (its plain-number attributes that never change)."""
    names = ("window", "min_history", "floor_ratio", "refresh_every", "stats_every")
    return tuple(getattr(obj, n, None) for n in names)
