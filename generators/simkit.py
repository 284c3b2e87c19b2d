"""What every simulator shares: settings errors, columnar chunks, interleaving and encoding.

A simulator is a set of per-series streams that each produce the next ``n``
ticks at once (values, label codes and which ticks are emitted at all). The
whole stream interleaves them in event-time order, every series' reading of
tick ``t`` (in series order) before tick ``t + 1``, as :class:`SimChunk`
objects; :class:`ChunkEncoder` turns a chunk into the wire messages, byte
for byte those of :func:`operators.serde.encode_reading`.
:class:`Simulation` is what :class:`generators.source.SimulatorSource` needs
of a simulator's settings.

Example:
    >>> import numpy as np
    >>> class Ramp:
    ...     def __init__(self, k): self.k, self.t = k, 0
    ...     def next_chunk(self, n):
    ...         values = self.k * 10.0 + self.t + np.arange(n)
    ...         self.t += n
    ...         return values, np.zeros(n, np.int8), np.ones(n, bool)
    >>> [chunk] = interleave([Ramp(0), Ramp(1)], count=5, ticks_per_chunk=16)
    >>> chunk.series.tolist(), chunk.ticks.tolist(), chunk.values.tolist()
    ([0, 1, 0, 1, 0], [0, 0, 1, 1, 2], [0.0, 10.0, 1.0, 11.0, 2.0])

"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from operators.config import ConfigError, Env
from operators.events import FloatArray, IntArray
from operators.serde import WireFormat

__all__ = [
    "ChunkEncoder",
    "SeriesStream",
    "SimChunk",
    "SimConfigError",
    "Simulation",
    "interleave",
    "setting_from_env",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Labels = npt.NDArray[np.int8]


class SimConfigError(ValueError):
    """A simulator setting is invalid; ``field`` names it.

    Args:
        field: The setting at fault.
        message: What was expected and what arrived.
        simulator: Which simulator, for the message.

    """

    def __init__(self, field: str, message: str, simulator: str = "simulator") -> None:
        super().__init__(f"{simulator}: {field}: {message}")
        self.field = field
        self.detail = message


def setting_from_env(env: Env, field: str, default: Any) -> Any:
    """The simulator setting ``field`` from ``VIGIL_SIM_<FIELD>``, parsed like its default.

    Integers, numbers, ISO 8601 times (UTC when no offset), words, comma lists
    of words (a tuple of strings) and ``lo,hi`` pairs (a tuple of two numbers).

    Raises:
        ConfigError: naming the variable, what was expected and what arrived.

    Example:
        >>> setting_from_env(Env({"VIGIL_SIM_LEN": "3,9"}), "len", (1, 2))
        (3, 9)
        >>> setting_from_env(Env({"VIGIL_SIM_IDS": "a, b"}), "ids", ("0",))
        ('a', 'b')

    """
    name = f"SIM_{field.upper()}"
    if isinstance(default, str):
        return env.text(name, default)
    if isinstance(default, tuple) and default and isinstance(default[0], str):
        return tuple(env.items(name, default))
    if isinstance(default, int):
        return env.integer(name, default)
    if isinstance(default, float):
        return env.number(name, default)
    if isinstance(default, datetime):
        raw = env.raw(name)
        if raw is None:
            return default
        try:
            ts = datetime.fromisoformat(raw)
        except ValueError:
            raise ConfigError(f"VIGIL_{name}: expected an ISO 8601 time, got {raw!r}") from None
        return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    items = env.items(name, [str(x) for x in default])
    kind = type(default[0])
    try:
        pair = tuple(kind(x) for x in items)
    except ValueError:
        pair = ()
    if len(pair) != 2:
        msg = f"VIGIL_{name}: expected lo,hi ({kind.__name__}s), got {','.join(items)!r}"
        raise ConfigError(msg)
    return pair


@dataclass(frozen=True, slots=True, eq=False)
class SimChunk:
    """Consecutive events of a simulated stream, columnar.

    Attributes:
        start: Index of the first event in the whole stream.
        ticks: Tick of each event (its event time is ``start + tick * interval``).
        series: Series index of each event.
        values: Value of each event.
        labels: Label code of each event, an index into the simulator's labels.

    """

    start: int
    ticks: IntArray
    series: IntArray
    values: FloatArray
    labels: Labels

    def __len__(self) -> int:
        return len(self.values)

    def take(self, mask: npt.NDArray[np.bool_]) -> SimChunk:
        """The events where ``mask`` holds (``start`` is kept)."""
        return SimChunk(
            self.start, self.ticks[mask], self.series[mask], self.values[mask], self.labels[mask]
        )


class SeriesStream(Protocol):
    """One series of a simulator, produced a chunk of ticks at a time."""

    def next_chunk(self, n: int) -> tuple[FloatArray, Labels, npt.NDArray[np.bool_]]:
        """Values, label codes and emitted flags of the next ``n`` ticks."""
        ...


def interleave(
    streams: Sequence[SeriesStream], count: int, ticks_per_chunk: int
) -> Iterator[SimChunk]:
    """The streams' emitted events in event-time order, as chunks.

    Args:
        streams: One stream per series, in series order.
        count: Events in all (0: unbounded).
        ticks_per_chunk: Ticks drawn from every stream per chunk; the events
            do not depend on it when each stream's draws do not.

    """
    k = len(streams)
    emitted = tick = 0
    while not count or emitted < count:
        parts = [s.next_chunk(ticks_per_chunk) for s in streams]
        # Rows are ticks, columns series: row-major order is event-time order.
        emit = np.stack([p[2] for p in parts], axis=1).ravel()
        idx = np.flatnonzero(emit)
        if count:
            idx = idx[: count - emitted]
        values = np.stack([p[0] for p in parts], axis=1).ravel()[idx]
        labels = np.stack([p[1] for p in parts], axis=1).ravel()[idx]
        series, ticks = idx % k, tick + idx // k
        yield SimChunk(emitted, ticks.astype(np.int64), series.astype(np.int64), values, labels)
        emitted += len(idx)
        tick += ticks_per_chunk


class ChunkEncoder:
    """Encodes chunks into wire messages, byte-identical to :func:`encode_reading`.

    JSON is assembled from cached pieces: the series id and label per code,
    the timestamp per tick, and every value formatted by one
    :func:`orjson.dumps` call over the chunk.

    Args:
        series_ids: Id of each series index (also the message key).
        labels: Label of each label code (``None``: normal).
        start: Event time of tick 0, timezone-aware.
        interval_us: Microseconds of event time between two ticks.
        fmt: Field names of the wire format.

    Example:
        >>> from operators.serde import METRICS
        >>> enc = ChunkEncoder(("a",), (None,), datetime(2024, 1, 1, tzinfo=UTC), 500_000, METRICS)
        >>> enc.timestamps(1, 2)
        [b'2024-01-01 00:00:00.500000', b'2024-01-01 00:00:01']

    """

    def __init__(
        self,
        series_ids: Sequence[str],
        labels: Sequence[str | None],
        start: datetime,
        interval_us: int,
        fmt: WireFormat,
    ) -> None:
        self.start_us = (start - _EPOCH) // timedelta(microseconds=1)
        self.interval_us = interval_us
        self.keys = [s.encode() for s in series_ids]
        series_field = orjson.dumps(fmt.series_field)
        self.heads = [b'{%b:%b,"ts":"' % (series_field, orjson.dumps(s)) for s in series_ids]
        self.middle = b'",%b:' % orjson.dumps(fmt.value_field)
        self.tails = [b',"label":' + orjson.dumps(label) + b"}" for label in labels]

    def timestamps(self, first: int, last: int) -> list[bytes]:
        """Event times of ticks ``first..last`` inclusive, formatted as ``format_ts`` does."""
        us = self.start_us + np.arange(first, last + 1, dtype=np.int64) * self.interval_us
        text = np.datetime_as_string(us.astype("datetime64[us]"), unit="us").tolist()
        whole = (us % 1_000_000 == 0).tolist()
        # 'YYYY-mm-ddTHH:MM:SS.ffffff': the fraction only when there is one, as format_ts.
        return [
            (f"{t[:10]} {t[11:19]}" if w else f"{t[:10]} {t[11:]}").encode()
            for t, w in zip(text, whole, strict=True)
        ]

    def encode(self, chunk: SimChunk) -> tuple[list[bytes], list[bytes]]:
        """Keys and values of the chunk's events."""
        if not len(chunk):
            return [], []
        t0 = int(chunk.ticks[0])
        stamps = self.timestamps(t0, int(chunk.ticks[-1]))
        numbers = orjson.dumps(chunk.values.tolist())[1:-1].split(b",")
        keys, heads, middle, tails = self.keys, self.heads, self.middle, self.tails
        series = chunk.series.tolist()
        values = [
            b"%b%b%b%b%b" % (heads[s], stamps[t - t0], middle, v, tails[lab])
            for s, t, v, lab in zip(
                series, chunk.ticks.tolist(), numbers, chunk.labels.tolist(), strict=True
            )
        ]
        return [keys[s] for s in series], values


class Simulation(Protocol):
    """What :class:`generators.source.SimulatorSource` needs of a simulator's settings."""

    @property
    def series_ids(self) -> tuple[str, ...]:
        """Id of each series index, the message key."""
        ...

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        ...

    def chunks(self) -> Iterator[SimChunk]:
        """The simulated stream, in event-time order."""
        ...

    def encoder(self) -> ChunkEncoder:
        """The encoder of this stream's chunks."""
        ...


def sim_messages(sim: Simulation) -> Iterator[tuple[bytes, bytes]]:
    """A simulator's stream as Kafka ``(key, value)`` pairs, chunk by chunk.

    Raises:
        SimConfigError: when a setting is invalid.

    """
    encoder = sim.encoder()
    for chunk in sim.chunks():
        keys, values = encoder.encode(chunk)
        yield from zip(keys, values, strict=True)


class _Validating(Protocol):
    """A simulator's settings: a dataclass that checks itself."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def validate(self) -> None: ...


V = TypeVar("V", bound=_Validating)


def validated(cfg: V) -> V:
    """``cfg`` once ``cfg.validate()`` passes; a bad setting names its ``VIGIL_SIM_*`` variable.

    Raises:
        ConfigError: for the first invalid setting.

    """
    try:
        cfg.validate()
    except SimConfigError as exc:
        raise ConfigError(f"VIGIL_SIM_{exc.field.upper()}: {exc.detail}") from None
    return cfg


def settings_from_env(base: V, env: Env, **fixed: Any) -> V:
    """``base`` with every field read from its ``VIGIL_SIM_<FIELD>`` variable, then validated.

    Fields given in ``fixed`` take that value instead of a variable's.

    Raises:
        ConfigError: naming the variable at fault.

    """
    values = {
        f.name: setting_from_env(env, f.name, getattr(base, f.name))
        for f in fields(base)
        if f.name not in fixed
    }
    return validated(replace(base, **values, **fixed))
