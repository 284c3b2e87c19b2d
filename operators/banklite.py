"""Milvus Lite inside this process: banks sharing one file, waiting for its index builds.

Milvus Lite (a ``uri`` ending in ``.db``) runs in the process that opens it:
pymilvus starts its gRPC server in a thread, and it serves that one file until
the last client of this process lets it go. The :class:`~operators.membank.MemoryBank`
objects of one process (Bytewax workers are threads) count their uses here, so
the server stops (flushing and unlocking the file) only when the last closes,
and a write by one bank makes every bank of the file settle before it searches.

What Milvus Lite 3.2 does, and what :class:`~operators.membank.MemoryBank` does about it:

* Rows not yet in an indexed segment (the write buffer, or a segment whose
  index a background thread is still building) are searched by brute force
  through a ``(queries, rows, dim)`` array: 1,300 queries x 100k rows x 64
  floats is 33 GB. So writes only mark the bank dirty, and the next search
  flushes and waits for the index builds first. ``FLAT`` is that brute force
  too, so it is refused for Lite files.
* pymilvus 3 sends index build parameters as flat pairs, which Lite ignores
  (IVF got ``nlist`` 128 whatever was asked): they are sent nested.
* Each search walks every row of the searched partitions in Python (about
  1 us a row) and builds Python objects for every hit (about 0.1 ms a query),
  whatever the index: ``partition_names`` bounds the first (a partition key
  would not); nothing bounds the second.
* Distances come back squared (returned here as their square root); a count
  without a filter ignores partitions (partition statistics are used);
  ``output_fields=[]`` returns every field, vectors included (searches ask for
  the id); collections reopen released after a restart (``open`` loads them).
* A delete by filter scans every row, so :meth:`MemoryBank.add` only deletes
  frames it knows it stored before.

Speed (``benchmarks/membank_speed.py``, measured on a shared 2-core machine
under a load average of 2-4, one faiss thread, clustered synthetic features):
median seconds of one search of a frame's 1,300 or 5,000 patches against one
target's partition, through Milvus Lite (``+filter``: ``weather >= 30``) and
with the same index in faiss alone; recall@1 against exact numpy search.

    rows dim  index, search params   Lite 1,300 +filter 5,000  faiss 1,300 5,000 recall@1
    100k  64  HNSW ef=32 (default)         0.19    0.27  0.67        0.050  0.22    1.000
    100k  64  HNSW ef=16                   0.17    0.29  0.56        0.036  0.15    1.000
    100k  64  IVF_FLAT nprobe=8            0.21    0.27  0.62        0.028  0.11    0.996
    100k  64  IVF_FLAT nprobe=4            0.14    0.20  0.51        0.018  0.05    0.982
    100k  64  IVF_SQ8 nprobe=8             0.22    0.38  0.80        0.034  0.13    0.978
    100k 128  HNSW ef=32 (default)         0.25    0.23  0.80        0.062  0.23    1.000
    100k 128  IVF_FLAT nprobe=8            0.19    0.26  0.52        0.037  0.15    0.994
    200k  64  HNSW ef=32 (default)         0.27    0.26  0.62        0.087  0.33    1.000
    200k  64  IVF_FLAT nprobe=8            0.23    0.33  0.76        0.042  0.15    0.998
    200k 128  HNSW ef=32 (default)         0.30    0.32  0.88        0.076  0.30    1.000
    200k 128  IVF_FLAT nprobe=8            0.35    0.54  0.74        0.066  0.28    0.998

Through Lite the index hardly matters: its per-row and per-hit Python work
dominates, and one frame's search takes 0.14-0.35 s at 1,300 patches (3 to 7
frames/s from the search alone), 0.5-1.1 s at 5,000. The default, HNSW with
``M=16, efConstruction=200, ef=32``, found the exact nearest neighbour of every
sampled patch at every size, where IVF's misses overstated a distance by up to
27%; and it needs no k-means training on each segment Lite indexes. Adding
100k rows takes 7-14 s (1,300 a call); flushing and indexing them 30-45 s for
HNSW, 8-14 s for IVF (200k rows: 50-67 s and 13-25 s).
"""

from __future__ import annotations

import logging
import threading

from operators.banktypes import BankConfig

logger = logging.getLogger(__name__)

_LOCK = threading.Lock()
_USERS: dict[str, int] = {}
_WRITTEN: set[str] = set()  # files written since their last flush-and-index


def acquire(path: str) -> None:
    """One more bank of this process uses the Lite file ``path`` (an absolute path)."""
    with _LOCK:
        _USERS[path] = _USERS.get(path, 0) + 1


def release(path: str) -> None:
    """One bank less; the last one stops the file's server (it flushes and unlocks the file)."""
    with _LOCK:
        _USERS[path] -= 1
        if _USERS[path] > 0:
            return
        del _USERS[path]
    from milvus_lite import server_manager_instance  # type: ignore[import-untyped]

    server_manager_instance.release_server(path)


def mark_written(path: str) -> None:
    """A bank wrote to ``path``: every bank of the file must settle before its next search."""
    _WRITTEN.add(path)


def written(path: str) -> bool:
    """True when some bank wrote to ``path`` since it was last settled."""
    return path in _WRITTEN


def settled(path: str) -> None:
    """``path`` was flushed and indexed."""
    _WRITTEN.discard(path)


def wait_for_indexes(path: str, cfg: BankConfig) -> bool:
    """Wait for the in-process Lite server's background index builds; False if unreachable.

    Milvus Lite 3.2 has no request for this, so its server manager's private
    state is used (pinned by ``milvus-lite~=3.2``). Building an index can take
    minutes: the wait is logged every ``timeout_s``, never abandoned half-way.
    """
    from milvus_lite import server_manager_instance

    try:
        collection = server_manager_instance._servers[path][1].get_collection(cfg.collection)
        drain = collection._wait_for_bg
    except (AttributeError, KeyError, IndexError, TypeError):
        logger.warning("memory bank: Milvus Lite internals changed; reloading %s instead", path)
        return False
    waited = 0.0
    while True:
        try:
            drain(timeout=cfg.timeout_s)
            return True
        except TimeoutError:
            waited += cfg.timeout_s
            logger.warning("memory bank: Milvus Lite still indexing %s after %.0f s", path, waited)
