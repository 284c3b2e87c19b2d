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

from dataclasses import dataclass

import numpy as np

from operators.events import DeadLetter, RawBatch, SeriesBatch
from operators.serde import SENSORS, DecodeError, WireFormat, decode_fields

STEP = "decode"


@dataclass(frozen=True, slots=True, eq=False)
class Decoded:
    """What decoding one raw batch gave: readings per series and dead letters."""

    oks: tuple[SeriesBatch, ...]
    errs: tuple[DeadLetter, ...]


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

    Args:
        raw: Messages in source order.
        fmt: Field names of the wire format.

    Returns:
        Readings grouped by series (order within a series kept, series in
        order of first appearance) and one dead letter per bad message.

    """
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
