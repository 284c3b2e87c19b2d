"""The hot path of the value-detector flows: many series per Bytewax key.

Keying every step by series makes the runtime's per-key costs (a state
object, a snapshot at every epoch, an item per series and step) grow with
the number of series: with 10,000 sensors a 1,000-message batch becomes
1,000 items of one reading each, three times over. Here the series are
spread over a fixed number of *shards* (``crc32(series) % shards``):

    raw batch -> decode -> one ShardBatch per shard touched (columns, grouped
                 by series; no object per series)
              -> score: normalize, detect, alert policy per series, in one
                 stateful step whose state per shard holds its series
              -> scored rounds or batches, and dead letters

For settings whose state is all numbers (the sensors flow's), a shard keeps
its series in columns and scores their short batches in rounds
(:mod:`operators.columns`); for others (the ``context`` detector, a
normalizer that learns) it keeps each series' state as objects, pickled
series by series at snapshots (:mod:`operators.snapshot`), and scores the
one-reading batches together (:mod:`operators.singles`). Either way each
series is scored with the numbers of the per-series functions of
:mod:`operators.steps`; only the grouping differs.

Example:
    >>> shard_of("3", 64), shard_of("3", 64) == shard_of("3", 64)
    ('27', True)

"""

from __future__ import annotations

import gc
import pickle
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import TypeVar

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators import snapshot as snap
from operators.alerting import AlertPolicy, AlertState
from operators.columns import ColumnSnapshot, ColumnSpec, SeriesColumns
from operators.decode import decode_batch, decode_flat
from operators.detectors import make_detector
from operators.events import (
    DeadLetter,
    IntArray,
    RawBatch,
    Scored,
    ScoredBatch,
    SeriesBatch,
    ShardBatch,
)
from operators.metrics import SeriesCount, step_metrics
from operators.normalize import Normalizer
from operators.serde import WireFormat
from operators.singles import Entry, fast_singles_for, score_singles
from operators.snapshot import PackedStates
from operators.steps import (
    DetectConfig,
    DetectState,
    NormalizeState,
    alert_counted,
    counted,
    detect_batch,
    new_detect_state,
    normalize_batch,
)

#: Readings of a series in one shard batch from which it may be scored on its
#: own, with its state as objects (kept so while its batches stay long); shorter
#: batches are scored in rounds with the other series' (:mod:`operators.columns`).
LONG_BATCH = 8
#: A round's fixed cost is shared by its series: with many series in a shard
#: batch, batches up to a third of their number (at most :data:`LONGEST_ROUNDS`)
#: are still scored in rounds. Scored alone, a series pays about 100 µs a call
#: whatever its length; in rounds about 1.3 µs a reading and 150 µs a round.
LONGEST_ROUNDS = 64

#: Shards per flow unless configured: enough to spread over many workers,
#: few enough that a batch of many series makes few items.
DEFAULT_SHARDS = 64

ShardItem = ShardBatch
T = TypeVar("T")

#: Allocations between young-generation collections (CPython's default is 700).
#: The score step keeps a few dozen long-lived objects per series; at the
#: default, collections that walk them all took a third of the CPU with 100,000
#: series. Garbage cycles are rare here (states are trees), so waiting longer
#: between collections costs little memory.
GC_THRESHOLD = (100_000, 50, 100)


def shard_of(series: str, shards: int) -> str:
    """The shard (a Bytewax key) of a series: stable across processes and runs."""
    return str(shard_index(series, shards))


def shard_index(series: str, shards: int) -> int:
    """The shard of a series as a number."""
    return zlib.crc32(series.encode()) % shards


#: Series whose shard is remembered, per shard count (cleared when it grows past this).
SHARD_CACHE = 1 << 20
_shard_cache: dict[int, dict[str, int]] = {}


def _shard_indices(names: list[str], shards: int) -> list[int]:
    """:func:`shard_index` of each name, from a per-process memo."""
    memo = _shard_cache.setdefault(shards, {})
    found = list(map(memo.get, names))
    if None in found:
        if len(memo) > SHARD_CACHE:
            memo.clear()
        for i, name in enumerate(names):
            if found[i] is None:
                found[i] = memo[name] = shard_index(name, shards)
    return found  # type: ignore[return-value]


def stable_order(keys: IntArray, bound: int) -> IntArray:
    """``np.argsort(keys, kind="stable")`` for keys in ``[0, bound)``.

    numpy radix-sorts 16-bit integers (a few ns an element) but merge-sorts
    wider ones (13-35 ns), so small keys are narrowed first; the order is the same.
    """
    if bound <= np.iinfo(np.uint16).max:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable")


def _taker(order: IntArray) -> Callable[[Sequence[T]], tuple[T, ...]]:
    """A function picking the items at ``order`` of a sequence, as a tuple."""
    picks = order.tolist()
    if len(picks) == 1:
        return lambda seq: (seq[picks[0]],)
    getter = itemgetter(*picks)
    return lambda seq: getter(seq)


@dataclass(frozen=True, slots=True, eq=False)
class ShardDecoded:
    """What decoding one raw batch gave: a batch per shard (keyed), and dead letters."""

    items: list[tuple[str, ShardBatch]]
    errs: tuple[DeadLetter, ...]


def decode_shards(raw: RawBatch, fmt: WireFormat, shards: int) -> ShardDecoded:
    """Decode a raw batch into one :class:`ShardBatch` per shard it touches.

    A batch of plainly valid readings goes column by column, with no object
    per series (:func:`~operators.decode.decode_flat`); any other is decoded
    message by message, which names each bad message's fault.
    """
    flat = decode_flat(raw, fmt)
    if flat is None:
        out = decode_batch(raw, fmt)
        groups: dict[str, list[SeriesBatch]] = {}
        for each in out.oks:
            groups.setdefault(shard_of(each.series, shards), []).append(each)
        return ShardDecoded([(k, ShardBatch.of(v)) for k, v in groups.items()], out.errs)
    # Series in order of first appearance; readings sorted by (shard, series), stably.
    names = list(dict.fromkeys(flat.series))
    index = dict(zip(names, range(len(names)), strict=True))
    codes = np.fromiter(map(index.__getitem__, flat.series), np.int64, len(flat.series))
    shard_of_name = np.fromiter(_shard_indices(names, shards), np.int64, len(names))
    name_order = stable_order(shard_of_name, shards)
    rank = np.empty(len(names), dtype=np.int64)
    rank[name_order] = np.arange(len(names))
    order = stable_order(rank[codes], len(names))
    counts = np.bincount(codes, minlength=len(names))[name_order]
    bounds = np.concatenate(([0], np.cumsum(counts)))
    per_shard = np.bincount(shard_of_name, minlength=shards)
    first_name = np.concatenate(([0], np.cumsum(per_shard)))
    ts_ms, values = flat.ts_ms[order], flat.values[order]
    offsets = np.asarray(raw.offsets, dtype=np.int64)[order]
    take = _taker(order)
    labels, payloads = take(flat.labels), take(raw.values)
    sorted_names = [names[i] for i in name_order.tolist()]
    items = []
    for shard in np.flatnonzero(per_shard).tolist():
        lo, hi = int(first_name[shard]), int(first_name[shard + 1])
        start, stop = int(bounds[lo]), int(bounds[hi])
        batch = ShardBatch(
            names=tuple(sorted_names[lo:hi]),
            bounds=bounds[lo : hi + 1] - start,
            ts_ms=ts_ms[start:stop],
            values=values[start:stop],
            labels=labels[start:stop],
            origin=raw.origin,
            partition=raw.partition,
            offsets=offsets[start:stop],
            raw=payloads[start:stop],
        )
        items.append((str(shard), batch))
    return ShardDecoded(items, ())


@dataclass(frozen=True)
class ShardDecodeOut:
    """Streams out of :func:`decode_to_shards`."""

    oks: KeyedStream[ShardItem]
    errs: Stream[DeadLetter]


@operator
def decode_to_shards(
    step_id: str, up: Stream[RawBatch], flow_name: str, fmt: WireFormat, shards: int
) -> ShardDecodeOut:
    """Decode raw batches into a batch per shard (:func:`decode_shards`); bad messages dead-letter.

    Args:
        step_id: Unique id.
        up: Raw micro-batches from a source.
        flow_name: Name of the flow, for metrics.
        fmt: Field names of the wire format.
        shards: Number of shards the series are spread over.

    """
    if shards < 1:
        raise ValueError(f"{step_id}: expected shards >= 1, got {shards}")
    decode = counted(flow_name, lambda raw: decode_shards(raw, fmt, shards))

    def _decode(raw: RawBatch) -> list[tuple[str, ShardItem] | DeadLetter]:
        out = decode(raw)
        items: list[tuple[str, ShardItem] | DeadLetter] = list(out.items)
        items.extend(out.errs)
        return items

    decoded = op.flat_map("decode", up, _decode)
    split = op.branch("split", decoded, lambda x: isinstance(x, tuple))
    oks: KeyedStream[ShardItem] = split.trues  # type: ignore[assignment]
    errs: Stream[DeadLetter] = split.falses  # type: ignore[assignment]
    return ShardDecodeOut(oks, errs)


@dataclass
class SeriesState:
    """Everything the score step keeps for one series."""

    normalize: NormalizeState
    detect: DetectState
    alert: AlertState


@dataclass(frozen=True)
class Scorer:
    """How the score step treats every series: normalizer, detectors, policy."""

    make_normalizer: Callable[[], Normalizer]
    detect: DetectConfig
    policy: AlertPolicy
    flow_name: str
    shards: int = DEFAULT_SHARDS

    def new_state(self) -> SeriesState:
        """Fresh state for a series seen for the first time."""
        return SeriesState(
            NormalizeState(self.make_normalizer()), new_detect_state(self.detect), AlertState()
        )

    def score(self, state: SeriesState, batch: SeriesBatch) -> list[ScoredBatch | DeadLetter]:
        """Normalize, detect and apply the policy to one series' batch (updates ``state``)."""
        out: list[ScoredBatch | DeadLetter] = []
        for item in normalize_batch(state.normalize, batch, self.flow_name):
            if isinstance(item, DeadLetter):
                out.append(item)
                continue
            detected = detect_batch(self.detect, state.detect, item)
            out.append(alert_counted(self.policy, state.alert, detected, self.flow_name))
        return out


class _ScoreLogic(StatefulBatchLogic[ShardItem, Scored | DeadLetter, bytes]):
    def __init__(self, scorer: Scorer, states: PackedStates[SeriesState]) -> None:
        self.scorer = scorer
        self.states = states
        self.metrics = step_metrics(scorer.flow_name, "score")
        self.series = SeriesCount(scorer.flow_name)
        self.fast_singles = fast_singles_for(new_detect_state(scorer.detect).value)

    def on_batch(self, values: list[ShardItem]) -> tuple[Iterable[Scored | DeadLetter], bool]:
        started = time.perf_counter()
        out: list[Scored | DeadLetter] = []
        states = self.states
        events = 0
        # Batches of one reading wait here to be scored together (operators.singles);
        # a longer batch first lets them through, so each series keeps its order.
        singles: list[Entry] = []
        for item in values:
            for batch in item.batches():
                events += len(batch)
                state = states.use(batch.series)
                if self.fast_singles and len(batch) == 1:
                    singles.append((state.normalize, state.detect, state.alert, batch))
                    continue
                if singles:
                    out.extend(self._score_singles(singles))
                    singles = []
                out.extend(self.scorer.score(state, batch))
        if singles:
            out.extend(self._score_singles(singles))
        scored = sum(len(x) for x in out if isinstance(x, ScoredBatch))
        self.metrics.observe(events, scored, time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def _score_singles(self, entries: list[Entry]) -> list[ScoredBatch | DeadLetter]:
        scorer = self.scorer
        return score_singles(
            entries,
            scorer.detect,
            scorer.policy,
            scorer.flow_name,
            lambda e: scorer.score(SeriesState(e[0], e[1], e[2]), e[3]),
        )

    def snapshot(self) -> bytes:
        # The shard count rides along: resumed with another, series would land on
        # keys that do not hold their state and start afresh.
        packed = self.states.snapshot()
        live = len(self.states.live)
        self.series.set(live=live, packed_only=len(packed) - live)
        return snap.dumps((self.scorer.shards, packed))


class _ColumnLogic(StatefulBatchLogic[ShardItem, Scored | DeadLetter, bytes]):
    """The score step on a columnar store (:mod:`operators.columns`)."""

    def __init__(self, scorer: Scorer, states: SeriesColumns) -> None:
        self.scorer = scorer
        self.states = states
        self.metrics = step_metrics(scorer.flow_name, "score")
        self.series = SeriesCount(scorer.flow_name)

    def on_batch(self, values: list[ShardItem]) -> tuple[Iterable[Scored | DeadLetter], bool]:
        started = time.perf_counter()
        out: list[Scored | DeadLetter] = []
        events = 0
        for item in values:
            events += len(item)
            out.extend(self._score_item(item))
        scored = sum(len(x) for x in out if not isinstance(x, DeadLetter))
        self.metrics.observe(events, scored, time.perf_counter() - started)
        return out, StatefulBatchLogic.RETAIN

    def _score_item(self, item: ShardBatch) -> list[Scored | DeadLetter]:
        """Score short batches in rounds (round r: each one's r-th reading), long ones apart."""
        states = self.states
        rows = states.rows(item.names)
        lengths = np.diff(item.bounds)
        out: list[Scored | DeadLetter] = []
        short = lengths < min(max(LONG_BATCH, len(rows) // 3), LONGEST_ROUNDS)
        for i in np.flatnonzero(~short).tolist():
            out.extend(self._per_series(int(rows[i]), item.batch(i)))
        picks = np.flatnonzero(short)
        depth = int(lengths[picks].max()) if len(picks) else 0
        for r in range(depth):
            if r:
                picks = picks[lengths[picks] > r]
            round_rows = rows[picks]
            if states.live:  # rows whose objects hold the latest state: back into the rows
                for row in set(round_rows.tolist()) & states.live.keys():
                    states.settle(row)
            pos = item.bounds[picks] + r
            out.extend(states.score_round(item, picks, round_rows, pos, self._per_series))
        return out

    def _per_series(self, row: int, batch: SeriesBatch) -> list[Scored | DeadLetter]:
        """The per-series functions on the row's state as objects (kept live)."""
        return list(self.scorer.score(self.states.live_state(row), batch))

    def snapshot(self) -> bytes:
        self.series.set(live=len(self.states), packed_only=0)
        # numpy pickles each column straight from its buffer (protocol 5): one copy.
        data = (self.scorer.shards, self.states.snapshot())
        return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)


ScoreLogic = _ScoreLogic | _ColumnLogic


def score_logic(step_id: str, scorer: Scorer, resume: bytes | None) -> ScoreLogic:
    """A shard's score logic, fresh or from its snapshot.

    Settings whose state is all numbers (:class:`~operators.columns.ColumnSpec`)
    keep it in columns; others keep an object per series. A store written with
    objects resumes in columns when every series' state fits them.

    Raises:
        ValueError: the snapshot was written with another shard count, or in
            columns with other settings.

    """
    spec = ColumnSpec.of(scorer.make_normalizer, scorer.detect)

    def columns() -> SeriesColumns:
        assert spec is not None
        return SeriesColumns(spec, scorer.policy, scorer.flow_name)

    if resume is None:
        if spec is not None:
            return _ColumnLogic(scorer, columns())
        return _ScoreLogic(scorer, PackedStates(scorer.new_state))
    shards, states = snap.loads(resume)
    if shards != scorer.shards:
        msg = (
            f"{step_id}: the recovery store was written with VIGIL_SHARDS={shards}, this "
            f"flow runs with {scorer.shards}; resume with {shards} or start a new store"
        )
        raise ValueError(msg)
    if isinstance(states, ColumnSnapshot):
        store = None if spec is None else columns()
        if store is None or not store.restore(states):
            msg = (
                f"{step_id}: the recovery store was written with other normalizer or detector "
                "settings than this flow's; resume with those settings or start a new store"
            )
            raise ValueError(msg)
        return _ColumnLogic(scorer, store)
    if spec is not None:
        store = columns()
        loaded = (
            (k, v if isinstance(v, SeriesState) else snap.loads(v)) for k, v in states.items()
        )
        if all(store.put(k, v) for k, v in loaded):
            return _ColumnLogic(scorer, store)
    if any(isinstance(v, SeriesState) for v in states.values()):
        # A store written before series were packed one by one.
        return _ScoreLogic(scorer, PackedStates(scorer.new_state, live=states))
    return _ScoreLogic(scorer, PackedStates(scorer.new_state, packed=states))


def relax_gc() -> None:
    """Collect garbage less often (:data:`GC_THRESHOLD`), unless already set as rarely."""
    if gc.get_threshold()[0] < GC_THRESHOLD[0]:
        gc.set_threshold(*GC_THRESHOLD)


@dataclass(frozen=True)
class ScoreOut:
    """Streams out of :func:`score_shards`: scored batches (unkeyed) and dead letters."""

    scored: Stream[Scored]
    errs: Stream[DeadLetter]


@operator
def score_shards(step_id: str, up: KeyedStream[ShardItem], scorer: Scorer) -> ScoreOut:
    """Normalize, score and apply the alert policy to every series of each shard.

    Args:
        step_id: Unique id.
        up: Per-shard groups of per-series batches.
        scorer: Normalizer, detectors and policy of every series.

    """
    scorer.policy.validate()
    make_detector(scorer.detect.detector, dict(scorer.detect.options))  # fail at build time

    def builder(resume: bytes | None) -> ScoreLogic:
        relax_gc()
        return score_logic(step_id, scorer, resume)

    items = op.key_rm("unkey", op.stateful_batch("score", up, builder))
    split = op.branch("split", items, lambda x: not isinstance(x, DeadLetter))
    scored: Stream[Scored] = split.trues  # type: ignore[assignment]
    errs: Stream[DeadLetter] = split.falses  # type: ignore[assignment]
    return ScoreOut(scored, errs)
