"""Pickling operator state for snapshots, with numpy arrays as plain bytes.

Bytewax asks every stateful step for a snapshot at the end of each epoch,
whether or not recovery is on, so a shard holding thousands of series pays for
pickling them every few seconds. numpy's own pickling of an array goes through
``__reduce_ex__`` and a dtype object, which costs more than the few values a
series' window holds; here a numeric array is stored as its bytes, dtype code
and shape, and rebuilt as an owned, writable copy. The numbers round-trip
exactly. Arrays of Python objects, structured dtypes and subclasses keep
numpy's own pickling.

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
from typing import Any

import numpy as np

#: Kinds of dtype stored as raw bytes: booleans, integers, floats, complex.
_PLAIN_KINDS = frozenset("biufc")


def rebuild_array(data: bytes, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """The array :func:`dumps` stored (a name snapshots refer to: keep it)."""
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()


def _reduce_array(a: np.ndarray) -> Any:
    if type(a) is not np.ndarray or a.dtype.kind not in _PLAIN_KINDS or a.dtype.names:
        return a.__reduce_ex__(pickle.HIGHEST_PROTOCOL)
    return rebuild_array, (a.tobytes(), a.dtype.str, a.shape)


def dumps(obj: object) -> bytes:
    """Pickle ``obj`` (highest protocol), numeric numpy arrays as bytes."""
    out = io.BytesIO()
    pickler = pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = {np.ndarray: _reduce_array}
    pickler.dump(obj)
    return out.getvalue()


def loads(data: bytes) -> Any:
    """Unpickle a snapshot written by :func:`dumps` (or by plain :func:`pickle.dumps`)."""
    return pickle.loads(data)
