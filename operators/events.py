"""Event types that cross the steps of every Vigil dataflow.

Records are frozen, slotted dataclasses. The hot path carries *micro-batches*
(:class:`RawBatch`, :class:`SeriesBatch`, :class:`ScoredBatch`): one Bytewax
item holds many events, so the per-item cost of the runtime is paid once per
batch rather than once per event. Columns inside a batch are numpy arrays;
timestamps are event time in integer milliseconds since the Unix epoch (UTC).

Example:
    >>> from datetime import datetime, timezone
    >>> r = Reading("3", datetime(2024, 1, 1, tzinfo=timezone.utc), 24.5, None)
    >>> r.ts_ms
    1704067200000

"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def ms_to_datetime(ts_ms: int) -> datetime:
    """Convert epoch milliseconds to a timezone-aware UTC datetime.

    Example:
        >>> ms_to_datetime(0).isoformat()
        '1970-01-01T00:00:00+00:00'

    """
    return datetime.fromtimestamp(ts_ms / 1000.0, tz=UTC)


def datetime_to_ms(ts: datetime) -> int:
    """Convert a timezone-aware datetime to epoch milliseconds.

    Raises:
        ValueError: if ``ts`` is naive (event time must carry its zone).

    """
    if ts.tzinfo is None:
        msg = f"expected a timezone-aware datetime, got naive {ts!r}"
        raise ValueError(msg)
    return round(ts.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Reading:
    """One scalar reading of one series at one event time.

    Attributes:
        series: Key of the series (a sensor id).
        ts: Event time, timezone-aware UTC.
        value: The measured value.
        label: Ground-truth anomaly kind when a generator knows it
            (``None`` for a normal reading).

    """

    series: str
    ts: datetime
    value: float
    label: str | None = None

    @property
    def ts_ms(self) -> int:
        """Event time in epoch milliseconds."""
        return datetime_to_ms(self.ts)


@dataclass(frozen=True, slots=True)
class RawBatch:
    """Undecoded messages as a source delivers them, in source order.

    Attributes:
        origin: Where the bytes came from (a Kafka topic, or ``"simulator"``).
        partition: Source partition the messages came from.
        keys: Message keys (``None`` when absent).
        values: Message payloads (``None`` for a tombstone).
        offsets: Position of each message within its partition.

    """

    origin: str
    partition: int
    keys: tuple[bytes | None, ...]
    values: tuple[bytes | None, ...]
    offsets: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be processed, kept with its cause.

    Attributes:
        origin: Source topic (or ``"simulator"``).
        partition: Source partition.
        offset: Offset of the message within its partition.
        key: The original key bytes.
        value: The original payload bytes, unchanged.
        step: The step that rejected the message.
        reason: What was expected and what arrived.

    """

    origin: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    step: str
    reason: str


@dataclass(frozen=True, slots=True, eq=False)
class SeriesBatch:
    """Consecutive decoded readings of one series, columnar.

    Attributes:
        series: Key of the series.
        ts_ms: Event times, epoch milliseconds (int64).
        values: Raw values (float64, all finite).
        labels: Ground-truth anomaly kind per reading, ``None`` when normal
            or unknown.
        origin: Source the readings came from (topic or ``"simulator"``).
        partition: Source partition.
        offsets: Source offset of each reading.
        raw: The original payload bytes of each reading, kept so that a
            later step can still dead-letter a reading with its bytes.
        normalized: Values after the normalize step (``None`` before it).
        channels: Every value of a multi-channel reading, ``(n, channels)``
            (``None``: ``values`` is the only one), for window models.

    """

    series: str
    ts_ms: IntArray
    values: FloatArray
    labels: tuple[str | None, ...]
    origin: str = ""
    partition: int = 0
    offsets: IntArray | None = None
    raw: tuple[bytes | None, ...] = ()
    normalized: FloatArray | None = None
    channels: FloatArray | None = None

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True, eq=False)
class ShardBatch:
    """Decoded readings of several series from one raw batch, grouped by series, columnar.

    The readings of ``names[i]`` are positions ``bounds[i]:bounds[i + 1]`` of
    every column, in their order in the source; a series appears once. With
    many series a source batch holds a reading or two of each, and one such
    item carries them without an object per series.

    Attributes:
        names: Keys of the series, in the order of their readings.
        bounds: Where each series' readings start, and the end (``len(names) + 1``).
        ts_ms: Event times, epoch milliseconds (int64).
        values: Raw values (float64, all finite).
        labels: Ground truth per reading.
        origin: Source the readings came from.
        partition: Source partition.
        offsets: Source offset of each reading.
        raw: The original payload bytes of each reading.

    """

    names: tuple[str, ...]
    bounds: IntArray
    ts_ms: IntArray
    values: FloatArray
    labels: tuple[str | None, ...]
    origin: str
    partition: int
    offsets: IntArray
    raw: tuple[bytes | None, ...]

    def __len__(self) -> int:
        return len(self.values)

    def batch(self, i: int) -> SeriesBatch:
        """The readings of ``names[i]`` as a :class:`SeriesBatch`."""
        start, stop = int(self.bounds[i]), int(self.bounds[i + 1])
        return SeriesBatch(
            self.names[i],
            self.ts_ms[start:stop],
            self.values[start:stop],
            self.labels[start:stop],
            self.origin,
            self.partition,
            self.offsets[start:stop],
            self.raw[start:stop],
        )

    def reading(self, i: int, pos: int) -> SeriesBatch:
        """The reading at position ``pos`` (one of ``names[i]``'s) as a :class:`SeriesBatch`."""
        return SeriesBatch(
            self.names[i],
            self.ts_ms[pos : pos + 1],
            self.values[pos : pos + 1],
            self.labels[pos : pos + 1],
            self.origin,
            self.partition,
            self.offsets[pos : pos + 1],
            self.raw[pos : pos + 1],
        )

    def batches(self) -> tuple[SeriesBatch, ...]:
        """Every series' readings as a :class:`SeriesBatch`, in order."""
        return tuple(self.batch(i) for i in range(len(self.names)))

    @classmethod
    def of(cls, batches: tuple[SeriesBatch, ...] | list[SeriesBatch]) -> ShardBatch:
        """The batches (of distinct series, from one source partition) as one item."""
        if not batches:
            raise ValueError("a shard batch needs at least one series batch")
        lengths = [len(b) for b in batches]
        first = batches[0]
        return cls(
            names=tuple(b.series for b in batches),
            bounds=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
            ts_ms=np.concatenate([b.ts_ms for b in batches]).astype(np.int64),
            values=np.concatenate([b.values for b in batches]).astype(np.float64),
            labels=tuple(x for b in batches for x in b.labels),
            origin=first.origin,
            partition=first.partition,
            offsets=np.concatenate(
                [
                    np.full(len(b), -1, dtype=np.int64) if b.offsets is None else b.offsets
                    for b in batches
                ]
            ).astype(np.int64),
            raw=tuple(
                x
                for b, n in zip(batches, lengths, strict=True)
                for x in (b.raw if b.raw else (None,) * n)
            ),
        )


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert raised by an alert policy.

    Attributes:
        alert_id: Stable id (``uuid5`` of series, event time and detector), so a
            replay of the same input yields the same ids.
        series: Key of the series.
        ts: Event time of the reading that raised the alert.
        value: The raw value of that reading.
        score: Calibrated score in [0, 1].
        severity: ``"warning"`` or ``"critical"``.
        detector: Name of the detector that scored the reading.
        reason: Why: the feature, the expected range and the value.
        label: Ground truth of the reading when known (for evaluation).

    """

    alert_id: str
    series: str
    ts: datetime
    value: float
    score: float
    severity: str
    detector: str
    reason: str
    label: str | None = None


@dataclass(frozen=True, slots=True, eq=False)
class DetectedBatch:
    """A :class:`SeriesBatch` after the detect step, before the alert policy.

    Attributes:
        batch: The readings (with their normalized values).
        raw_scores: The value detector's own scores (its documented range).
        scores: Calibrated scores in [0, 1] of the most anomalous feature.
        features: Index into ``feature_names`` of the feature behind each score.
        feature_names: Names of the features the detect step scored.
        detector: Name of the value detector.
        details: Per-reading detail of the winning feature (for example the
            length of a run of identical values, or a gap in seconds).
        parts: The value detector's named parts behind each raw score
            (:meth:`operators.detectors.base.Detector.explain`), for reasons.
        expected: What a model expected each value to be (a reconstruction), if any.

    """

    batch: SeriesBatch
    raw_scores: FloatArray
    scores: FloatArray
    features: npt.NDArray[np.int8]
    feature_names: tuple[str, ...]
    detector: str
    details: FloatArray
    parts: dict[str, FloatArray] = field(default_factory=dict)
    expected: FloatArray | None = None

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True, slots=True, eq=False)
class ScoredBatch:
    """A :class:`SeriesBatch` after detection and the alert policy.

    Attributes:
        series: Key of the series.
        ts_ms: Event times, epoch milliseconds.
        values: Raw values.
        labels: Ground truth per reading.
        raw_scores: The detector's own scores.
        scores: Calibrated scores in [0, 1].
        alerted: Whether each reading raised an alert.
        threshold: The alert threshold the calibrated scores were held to.
        detector: Name of the detector.
        alerts: The alerts raised within this batch.
        expected: What a model expected each value to be, if any (drawn in views).

    """

    series: str
    ts_ms: IntArray
    values: FloatArray
    labels: tuple[str | None, ...]
    raw_scores: FloatArray
    scores: FloatArray
    alerted: BoolArray
    threshold: float
    detector: str
    alerts: tuple[Alert, ...] = field(default=())
    expected: FloatArray | None = None

    def __len__(self) -> int:
        return len(self.values)


@dataclass(frozen=True, slots=True, eq=False)
class ScoredRows:
    """Scored readings of many series, one row each: a round of the columnar score step.

    The columns of :class:`ScoredBatch` (no ``expected``), except that
    ``series`` names each reading's series and ``alerts`` holds the alerts of
    all of them.
    """

    series: tuple[str, ...]
    ts_ms: IntArray
    values: FloatArray
    labels: tuple[str | None, ...]
    raw_scores: FloatArray
    scores: FloatArray
    alerted: BoolArray
    threshold: float
    detector: str
    alerts: tuple[Alert, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.values)

    def batches(self, picks: list[int] | None = None) -> list[ScoredBatch]:
        """Readings (all, or those at ``picks``) as one-reading :class:`ScoredBatch` items."""
        by_series: dict[str, list[Alert]] = {}
        for a in self.alerts:
            by_series.setdefault(a.series, []).append(a)
        return [
            ScoredBatch(
                series=self.series[i],
                ts_ms=self.ts_ms[i : i + 1],
                values=self.values[i : i + 1],
                labels=self.labels[i : i + 1],
                raw_scores=self.raw_scores[i : i + 1],
                scores=self.scores[i : i + 1],
                alerted=self.alerted[i : i + 1],
                threshold=self.threshold,
                detector=self.detector,
                alerts=tuple(by_series.get(self.series[i], ())) if self.alerted[i] else (),
            )
            for i in (range(len(self)) if picks is None else picks)
        ]


#: What the score steps give: per-series batches, or rows of many series.
Scored = ScoredBatch | ScoredRows
