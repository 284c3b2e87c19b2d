"""Decode micro-batches of raw messages into per-series columnar batches.

Decoding is pure: it turns one :class:`~operators.events.RawBatch` into the
readings it holds, grouped by series in source order, and a dead letter for
every message that is not a valid reading.

Example:
    >>> from operators.events import RawBatch
    >>> raw = RawBatch("sensors", 0, (b"1", b"1"), (
    ...     b'{"sensor_id":"1","ts":"2024-01-01 00:00:00","temp":22.5}', b"not json"), (0, 1))
    >>> out = decode_batch(raw)
    >>> [(b.series, b.values.tolist()) for b in out.oks]
    [('1', [22.5])]
    >>> out.errs[0].offset, out.errs[0].reason.split(" (")[0]
    (1, 'payload: expected JSON, got invalid JSON')

"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter

import numpy as np
import orjson

from operators.events import DeadLetter, FloatArray, IntArray, RawBatch, SeriesBatch
from operators.serde import (
    MAX_SERIES_LEN,
    MAX_TS_MS,
    MIN_TS_MS,
    SENSORS,
    DecodeError,
    WireFormat,
    decode_fields,
    parse_ts_text,
)

STEP = "decode"
_NUMBER_TYPES = {float, int}
_LABEL_TYPES = {str, type(None)}


@dataclass(frozen=True, slots=True, eq=False)
class Decoded:
    """What decoding one raw batch gave: readings per series and dead letters."""

    oks: tuple[SeriesBatch, ...]
    errs: tuple[DeadLetter, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Flat:
    """The fields of every message of a raw batch that is all plainly valid readings."""

    series: Sequence[str]
    ts_ms: IntArray
    values: FloatArray
    labels: list[str | None]


class _Columns:
    """Growing columns of one series while a batch is decoded."""

    __slots__ = ("channels", "labels", "offsets", "raw", "ts", "values")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.values: list[float] = []
        self.labels: list[str | None] = []
        self.offsets: list[int] = []
        self.raw: list[bytes | None] = []
        self.channels: list[tuple[float, ...]] = []


def decode_batch(raw: RawBatch, fmt: WireFormat = SENSORS) -> Decoded:
    """Decode every message of a raw batch.

    A batch whose messages are all plainly valid single-value readings takes a
    columnar path (one pass per field over the whole batch); any other batch
    is decoded message by message, which names each bad message's fault. Both
    paths give the same readings.

    Args:
        raw: Messages in source order.
        fmt: Field names of the wire format.

    Returns:
        Readings grouped by series (order within a series kept, series in
        order of first appearance) and one dead letter per bad message.

    """
    if fmt.channels is None and len(raw):
        fast = _decode_columnar(raw, fmt)
        if fast is not None:
            return Decoded(fast, ())
    return _decode_each(raw, fmt)


def _decode_columnar(raw: RawBatch, fmt: WireFormat) -> tuple[SeriesBatch, ...] | None:
    """The readings of ``raw``, or ``None`` unless every message is plainly valid."""
    flat = decode_flat(raw, fmt)
    return None if flat is None else _group(raw, flat.series, flat.ts_ms, flat.values, flat.labels)


def decode_flat(raw: RawBatch, fmt: WireFormat) -> Flat | None:
    """The fields of every message of ``raw``, or ``None`` unless every one is plainly valid.

    "Plainly valid" is stricter than valid: a series id taken from the key or
    given as a number sends the batch down the per-message path
    (:func:`decode_batch`), whose rules decide it. Single-value formats only.
    """
    if fmt.channels is not None or not len(raw):
        return None
    try:
        objs = list(map(orjson.loads, raw.values))  # type: ignore[arg-type]
    except (orjson.JSONDecodeError, TypeError):  # TypeError: a tombstone (None)
        return None
    if set(map(type, objs)) != {dict}:
        return None
    try:  # one C call per message and field, for the three every reading has
        series = list(map(itemgetter(fmt.series_field), objs))
        stamps = list(map(itemgetter("ts"), objs))
        numbers = list(map(itemgetter(fmt.value_field), objs))
    except KeyError:
        return None
    if set(map(type, series)) != {str}:
        return None
    lengths = set(map(len, series))
    if min(lengths) == 0 or max(lengths) > MAX_SERIES_LEN:
        return None
    if set(map(type, stamps)) != {str}:
        return None
    try:
        ts_ms = np.fromiter(map(parse_ts_text, stamps), np.int64, len(stamps))
    except DecodeError:
        return None
    if ts_ms.min() < MIN_TS_MS or ts_ms.max() >= MAX_TS_MS:
        return None
    if not set(map(type, numbers)) <= _NUMBER_TYPES:
        return None
    values = np.array(numbers, dtype=np.float64)
    if not np.isfinite(values).all():
        return None
    labels = list(map(dict.get, objs, repeat("label")))
    if not set(map(type, labels)) <= _LABEL_TYPES:
        return None
    return Flat(series, ts_ms, values, labels)


def _group(
    raw: RawBatch,
    series: Sequence[str],
    ts_ms: IntArray,
    values: FloatArray,
    labels: list[str | None],
) -> tuple[SeriesBatch, ...]:
    """One batch per series from the columns of a decoded raw batch."""
    # dict.fromkeys keeps the order of first appearance; the lookups run in C.
    index = {name: i for i, name in enumerate(dict.fromkeys(series))}
    codes = np.fromiter(map(index.__getitem__, series), np.int64, len(series))
    offsets = np.asarray(raw.offsets, dtype=np.int64)
    payloads = raw.values
    if len(index) > 1:
        order = np.argsort(codes, kind="stable")
        ts_ms, values, offsets = ts_ms[order], values[order], offsets[order]
        picks = order.tolist()
        labels = [labels[i] for i in picks]
        payloads = tuple(payloads[i] for i in picks)
    ends = np.cumsum(np.bincount(codes, minlength=len(index))).tolist()
    out = []
    start = 0
    for name, end in zip(index, ends, strict=True):
        out.append(
            SeriesBatch(
                series=name,
                ts_ms=ts_ms[start:end],
                values=values[start:end],
                labels=tuple(labels[start:end]),
                origin=raw.origin,
                partition=raw.partition,
                offsets=offsets[start:end],
                raw=tuple(payloads[start:end]),
            )
        )
        start = end
    return tuple(out)


def _decode_each(raw: RawBatch, fmt: WireFormat) -> Decoded:
    """Decode message by message: a dead letter for each bad one, with its fault."""
    columns: dict[str, _Columns] = {}
    errs: list[DeadLetter] = []
    for key, value, offset in zip(raw.keys, raw.values, raw.offsets, strict=True):
        try:
            if fmt.channels is None:
                series, ts_ms, temp, label = decode_fields(key, value, fmt)
                channels = None
            else:
                series, ts_ms, channels, label = fmt.channels(key, value)
                temp = channels[fmt.primary]
        except DecodeError as exc:
            errs.append(DeadLetter(raw.origin, raw.partition, offset, key, value, STEP, str(exc)))
            continue
        col = columns.get(series)
        if col is None:
            col = columns[series] = _Columns()
        col.ts.append(ts_ms)
        col.values.append(temp)
        col.labels.append(label)
        col.offsets.append(offset)
        col.raw.append(value)
        if channels is not None:
            col.channels.append(channels)
    oks = tuple(
        SeriesBatch(
            series=series,
            ts_ms=np.asarray(col.ts, dtype=np.int64),
            values=np.asarray(col.values, dtype=np.float64),
            labels=tuple(col.labels),
            origin=raw.origin,
            partition=raw.partition,
            offsets=np.asarray(col.offsets, dtype=np.int64),
            raw=tuple(col.raw),
            channels=np.asarray(col.channels, dtype=np.float64) if col.channels else None,
        )
        for series, col in columns.items()
    )
    return Decoded(oks, tuple(errs))
