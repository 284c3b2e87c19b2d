"""Operator state for snapshots: numpy arrays as plain bytes, and shards packed series by series.

Bytewax asks every stateful step for a snapshot at the end of each epoch,
whether or not recovery is on, so a shard holding thousands of series pays for
pickling them every few seconds. numpy's own pickling of an array goes through
``__reduce_ex__`` and a dtype object, which costs more than the few values a
series' window holds; here a numeric array is stored as its bytes, dtype code
and shape, and rebuilt as an owned, writable copy. The numbers round-trip
exactly. Arrays of Python objects, structured dtypes and subclasses keep
numpy's own pickling.

A shard of many series (:class:`PackedStates`) keeps each series' state as the
bytes of its last snapshot and re-pickles only the series that changed since;
a series left alone for a whole epoch is held as those bytes alone and
unpickled when its next reading comes. Pickling every series of a shard at every
epoch made the cost of an epoch grow with the series seen so far: with a
million series the flow spent its epochs pickling and slowed to a few thousand
readings a second.

Example:
    >>> import numpy as np
    >>> state = {"history": np.arange(3.0), "count": 3}
    >>> back = loads(dumps(state))
    >>> back["history"].tolist(), back["history"].flags.writeable
    ([0.0, 1.0, 2.0], True)

"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

S = TypeVar("S")

#: Kinds of dtype stored as raw bytes: booleans, integers, floats, complex.
_PLAIN_KINDS = frozenset("biufc")


def rebuild_array(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The array :func:`dumps` stored (a name snapshots refer to: keep it)."""
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()


def _reduce_array(a: np.ndarray) -> Any:
    if type(a) is not np.ndarray or a.dtype.kind not in _PLAIN_KINDS or a.dtype.names:
        return a.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    return rebuild_array, (a.tobytes(), a.dtype.str, a.shape)


class Packer:
    """:func:`dumps` for many small objects: one pickler, reused."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._pickler = pickle.Pickler(self._out, protocol=pickle.HIGHEST_PROTOCOL)
        self._pickler.dispatch_table = {np.ndarray: _reduce_array}

    def __call__(self, obj: object) -> bytes:
        """The bytes :func:`dumps` gives for ``obj``."""
        self._out.seek(0)
        self._out.truncate()
        self._pickler.clear_memo()
        self._pickler.dump(obj)
        return self._out.getvalue()


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` (highest protocol), numeric numpy arrays as bytes."""
    return Packer()(obj)


def loads(data: bytes) -> Any:
    """Unpickle a snapshot written by :func:`dumps` (or by plain :func:`pickle.dumps`)."""
    return pickle.loads(data)


class PackedStates(Generic[S]):
    """The states of a shard's series, snapshotted series by series.

    Every series has the bytes of its state as of the last :meth:`snapshot`
    (``packed``), a live state (``live``) if it was used since the snapshot
    before, or both. :meth:`use` hands out the live state (unpickled, or made
    fresh for a new series) and marks it changed; :meth:`snapshot` pickles the
    changed ones, drops the live state of those left alone since the previous
    snapshot, and returns every series' bytes.

    Args:
        make: A fresh state for a series seen for the first time.
        packed: Series' bytes to resume from.
        live: Series' states to resume from (snapshots written before states
            were packed: they are all pickled at the next snapshot).

    Example:
        >>> states = PackedStates(lambda: {"n": 0})
        >>> states.use("a")["n"] += 1
        >>> first = states.snapshot()
        >>> states.use("b")["n"] += 5
        >>> second = states.snapshot()
        >>> second["a"] is first["a"], sorted(states.live), states.state("a")
        (True, ['b'], {'n': 1})

    """

    def __init__(
        self,
        make: Callable[[], S],
        packed: dict[str, bytes] | None = None,
        live: dict[str, S] | None = None,
    ) -> None:
        self._make = make
        self.packed: dict[str, bytes] = dict(packed or {})
        self.live: dict[str, S] = dict(live or {})
        self._changed: set[str] = set(self.live)
        self._pack = Packer()

    def use(self, key: str) -> S:
        """The series' live state, to be changed: it is pickled at the next snapshot."""
        state = self.live.get(key)
        if state is None:
            data = self.packed.get(key)
            state = self._make() if data is None else loads(data)
            self.live[key] = state
        self._changed.add(key)
        return state

    def state(self, key: str) -> S:
        """The series' state, to read (unpickled afresh when it is not live).

        Raises:
            KeyError: for a series never used.

        """
        state = self.live.get(key)
        return state if state is not None else loads(self.packed[key])

    def snapshot(self) -> dict[str, bytes]:
        """Pickle what changed, let go of what was not used; every series' bytes (do not change)."""
        for key in self._changed:
            self.packed[key] = self._pack(self.live[key])
        for key in [k for k in self.live if k not in self._changed]:
            del self.live[key]
        self._changed.clear()
        return self.packed
