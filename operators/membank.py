"""Memory bank of reference patch features in Milvus, searched by Euclidean distance.

The telescope flow scores a frame PatchCore-style: each patch feature is
compared with the reference patches of the same target, and its distance to
the nearest one is its anomaly score. :class:`MemoryBank` keeps those
references in one Milvus collection, one partition per target, with the
frame metadata as scalar fields so that a search can be restricted to
references taken in usable conditions (``weather >= 60``) or leave a frame
out (calibration). All patches of a frame go in one search request.

Milvus Lite (``uri`` ending in ``.db``, the default) runs inside this process:
pymilvus starts its gRPC server in a thread and faiss does the vector work, so
``OMP_NUM_THREADS``/``faiss.omp_set_num_threads`` decide its threads. A Lite
file serves one process; for several, run ``milvus-lite server --data-dir
FILE.db`` and give its ``http://host:19530`` URI, as for a Milvus server.

What Milvus Lite 3.2 does, and what this module does about it:

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

Example:
    >>> import tempfile, numpy as np
    >>> from datetime import datetime, timezone
    >>> meta = PatchMeta(weather=90.0, altitude_deg=60.0, focus=7200.0,
    ...                  ut=datetime(2024, 9, 1, 22, tzinfo=timezone.utc))
    >>> ref = np.eye(4, dtype=np.float32)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with MemoryBank(BankConfig(uri=f"{tmp}/bank.db", dim=4)) as bank:
    ...         bank.add("M31", "f1", ref, gx=[0, 1, 2, 3], gy=[0, 0, 0, 0], meta=meta)
    ...         d = bank.search("M31", np.array([[0, 0, 0, 2]], np.float32), k=2)
    4
    >>> d.astype(float).round(3).tolist()
    [[1.0, 2.236]]

"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from operators.frames import FrameHeader

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
IdArray = npt.NDArray[np.int64]

#: Metric of the index; distances are returned as Euclidean (its square root).
METRIC = "L2"
#: Scalar fields of each row that a condition may use.
CONDITION_FIELDS = ("frame_id", "gx", "gy", "weather", "altitude", "focus", "ut_ms")
#: Index build parameters and search parameters used unless the config gives its own.
DEFAULT_INDEX_PARAMS: Mapping[str, Mapping[str, int]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "IVF_FLAT": {"nlist": 1024},
    "IVF_SQ8": {"nlist": 1024},
    "FLAT": {},
}
DEFAULT_SEARCH_PARAMS: Mapping[str, Mapping[str, int]] = {
    "HNSW": {"ef": 32},
    "IVF_FLAT": {"nprobe": 8},
    "IVF_SQ8": {"nprobe": 8},
    "FLAT": {},
}
_LITE_REFUSED = frozenset({"FLAT"})
_MAX_NQ = 16_384  # Milvus's limit on query vectors per search request
_INSERT_BATCH = 10_000  # rows per insert request, far below gRPC's message limit
_MAX_NAME_BYTES = 512  # VARCHAR length of target and frame_id
_COLLECTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}")


class BankError(RuntimeError):
    """A memory-bank operation failed in Milvus."""


class BankConnectionError(BankError):
    """Milvus could not be reached, or the Lite file could not be opened."""


class BankSchemaError(BankError):
    """The existing collection does not match the configuration."""


class UnknownTargetError(BankError):
    """The bank holds no reference patches for the target searched."""


@dataclass(frozen=True, slots=True)
class BankConfig:
    """Where the memory bank lives and how it is indexed.

    Attributes:
        uri: A Milvus Lite file (``*.db``, opened in this process) or a server
            URI (``http://host:19530``, also what ``milvus-lite server`` serves).
        token: ``user:password`` or API key of a server; empty for none.
        collection: Collection name.
        dim: Dimension of the patch features.
        index_type: ``HNSW``, ``IVF_FLAT``, ``IVF_SQ8`` or (server only) ``FLAT``.
        index_params: Build parameters; ``None`` for :data:`DEFAULT_INDEX_PARAMS`.
        search_params: Search parameters; ``None`` for :data:`DEFAULT_SEARCH_PARAMS`.
        timeout_s: Seconds any one Milvus request may take.

    """

    uri: str = "vigil-frames.db"
    token: str = ""
    collection: str = "vigil_patches"
    dim: int = 64
    index_type: str = "HNSW"
    index_params: Mapping[str, int] | None = None
    search_params: Mapping[str, int] | None = None
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"BankConfig.dim: expected a positive integer, got {self.dim}")
        if self.index_type not in DEFAULT_INDEX_PARAMS:
            raise ValueError(
                f"BankConfig.index_type: expected one of {sorted(DEFAULT_INDEX_PARAMS)}, "
                f"got {self.index_type!r}"
            )
        if self.is_lite and self.index_type in _LITE_REFUSED:
            raise ValueError(
                f"BankConfig.index_type: Milvus Lite searches {self.index_type} by brute force "
                "over a (queries, rows, dim) array; use HNSW or IVF_FLAT with a .db uri"
            )
        if not _COLLECTION_NAME.fullmatch(self.collection):
            raise ValueError(
                "BankConfig.collection: expected a letter or '_' then letters, digits or '_', "
                f"got {self.collection!r}"
            )
        if self.timeout_s <= 0:
            raise ValueError(f"BankConfig.timeout_s: expected > 0, got {self.timeout_s}")

    @property
    def is_lite(self) -> bool:
        """Whether ``uri`` is a Milvus Lite file (pymilvus's rule: it ends in ``.db``)."""
        return self.uri.endswith(".db")

    @property
    def build_params(self) -> dict[str, int]:
        """Index build parameters in effect."""
        given = self.index_params
        return dict(DEFAULT_INDEX_PARAMS[self.index_type] if given is None else given)

    @property
    def query_params(self) -> dict[str, int]:
        """Search parameters in effect."""
        given = self.search_params
        return dict(DEFAULT_SEARCH_PARAMS[self.index_type] if given is None else given)


@dataclass(frozen=True, slots=True)
class PatchMeta:
    """Frame metadata stored with every reference patch of the frame.

    Attributes:
        weather: Sky quality 0 (overcast) to 100 (photometric).
        altitude_deg: Telescope altitude, degrees.
        focus: Focuser position.
        ut: Start of the exposure, timezone-aware.

    """

    weather: float
    altitude_deg: float
    focus: float
    ut: datetime

    def __post_init__(self) -> None:
        if self.ut.tzinfo is None:
            raise ValueError(f"PatchMeta.ut: expected a timezone-aware time, got {self.ut}")

    @classmethod
    def from_header(cls, header: FrameHeader) -> PatchMeta:
        """The metadata of a frame header."""
        return cls(header.weather, header.altitude_deg, header.focus, header.ut)

    @property
    def ut_ms(self) -> int:
        """``ut`` as milliseconds since the Unix epoch."""
        return round(self.ut.timestamp() * 1000)


@dataclass(frozen=True, slots=True, eq=False)
class Neighbours:
    """Nearest reference patches of each query.

    Attributes:
        distances: Euclidean distances, ``float32`` ``(n, k)``, ascending per
            row; ``inf`` where fewer than ``k`` references matched.
        ids: Row ids (:func:`patch_ids`) of those references, ``-1`` where missing.

    """

    distances: FloatArray
    ids: IdArray


def partition_name(target: str) -> str:
    """Stable partition name of a target: its safe characters and a hash of the exact name.

    Example:
        >>> partition_name("M31"), partition_name("NGC 224 / M31")
        ('t_M31_d6a8ec1821', 't_NGC_224___M31_05c7a1a648')

    """
    safe = re.sub(r"[^A-Za-z0-9_]", "_", target)[:40]
    return f"t_{safe}_{hashlib.blake2b(target.encode(), digest_size=5).hexdigest()}"


def patch_ids(target: str, frame_id: str, gx: Iterable[int], gy: Iterable[int]) -> IdArray:
    """Stable signed 64-bit row ids: blake2b of target, frame id and patch grid cell.

    Example:
        >>> patch_ids("M31", "f1", [0, 1], [0, 0]).tolist() == patch_ids("M31", "f1", [0, 1],
        ...                                                             [0, 0]).tolist()
        True

    """
    prefix = f"{target}\x1f{frame_id}\x1f".encode()
    return np.array(
        [
            int.from_bytes(
                hashlib.blake2b(prefix + f"{x}\x1f{y}".encode(), digest_size=8).digest(),
                "little",
                signed=True,
            )
            for x, y in zip(gx, gy, strict=True)
        ],
        dtype=np.int64,
    )


def quote(text: str) -> str:
    r"""A Milvus filter string literal.

    Example:
        >>> print(quote('a"b\\c'))
        "a\"b\\c"

    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def search_filter(conditions: str | None, exclude_frame: str | None) -> str:
    """The scalar filter of a search: the conditions, and leave ``exclude_frame`` out.

    Example:
        >>> search_filter("weather >= 60", "f1")
        '(weather >= 60) and frame_id != "f1"'

    """
    parts = [] if conditions is None or not conditions.strip() else [f"({conditions})"]
    if exclude_frame is not None:
        parts.append(f"frame_id != {quote(exclude_frame)}")
    return " and ".join(parts)


class MemoryBank:
    """Reference patches of every target in one Milvus collection, a partition per target.

    Building one connects to nothing; :meth:`open` (or ``with``) connects and
    creates the collection with its index, or checks and loads an existing
    one. Bytewax workers that are threads of one process may each open a bank
    on the same Lite file: the in-process server stops when the last closes.

    Args:
        cfg: Where the bank lives and how it is indexed.

    """

    def __init__(self, cfg: BankConfig) -> None:
        self.cfg = cfg
        self._client: Any = None
        self._lite_path: str | None = None  # the Lite file this process serves, while open
        self._lite_server = False  # a `milvus-lite server` behind an http URI
        self._partitions: set[str] = set()
        self._frames: dict[str, set[str]] = {}  # partition -> frames stored, once read
        self._dirty = False

    def open(self) -> Self:
        """Connect, create or check the collection, and load it; a no-op when open."""
        if self._client is not None:
            return self
        from pymilvus import MilvusClient, MilvusException

        cfg, uri = self.cfg, self.cfg.uri
        if cfg.is_lite:
            uri = self._lite_path = os.path.abspath(uri)
            _lite_acquire(uri)
        try:
            self._client = MilvusClient(uri=uri, token=cfg.token, timeout=cfg.timeout_s)
        except MilvusException as err:
            self.close()
            hint = (
                "; a Lite file serves one process (is another using it?): for several, run "
                f"`milvus-lite server --data-dir {uri}` and use its http:// URI"
            )
            raise BankConnectionError(
                f"memory bank: cannot connect to Milvus at {cfg.uri!r}: {err}"
                + (hint if cfg.is_lite else "")
            ) from err
        try:
            version = str(self._client.get_server_version(timeout=cfg.timeout_s))
            self._lite_server = not cfg.is_lite and version.startswith("milvus_lite")
            self._prepare_collection()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Disconnect; stops the in-process Lite server when no other bank uses it."""
        client, self._client = self._client, None
        if client is not None:
            client.close()
        if self._lite_path is not None:
            _lite_release(self._lite_path)
            self._lite_path = None
        self._partitions.clear()
        self._frames.clear()

    @property
    def client(self) -> Any:
        """The open ``MilvusClient`` (for companions such as the calibration store).

        Raises:
            BankError: the bank is not open.

        """
        if self._client is None:
            raise BankError("memory bank: not open; call open() first")
        return self._client

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def add(
        self,
        target: str,
        frame_id: str,
        vectors: npt.ArrayLike,
        gx: Iterable[int],
        gy: Iterable[int],
        meta: PatchMeta,
    ) -> int:
        """Store the patches of one reference frame, replacing what was stored for it before.

        Rows are keyed by :func:`patch_ids`, and a frame stored before is
        deleted first, so adding a frame again (a replay) stores it once. The
        bank knows which frames it stored (it reads a target's frame ids once,
        at its first add): checking by a filter query would cost a pass over
        the whole bank in Milvus Lite at every add.

        Args:
            target: The frame's target (header ``object``).
            frame_id: Stable id of the frame.
            vectors: Patch features, ``(n, dim)``.
            gx: Grid column of each patch, ``n`` integers.
            gy: Grid row of each patch; the ``(gx, gy)`` cells are distinct.
            meta: The frame's metadata, stored on each row.

        Returns:
            Rows stored.

        """
        vecs = self._check_vectors(vectors, "add", "vectors")
        cols, rows = (np.asarray(list(c), dtype=np.int64) for c in (gx, gy))
        if cols.shape != (len(vecs),) or rows.shape != (len(vecs),):
            raise ValueError(
                f"add: gx and gy must hold one integer per vector ({len(vecs)}), "
                f"got shapes {cols.shape} and {rows.shape}"
            )
        _check_name("target", target)
        _check_name("frame_id", frame_id)
        ids = patch_ids(target, frame_id, cols.tolist(), rows.tolist())
        if len(np.unique(ids)) != len(ids):
            raise ValueError(f"add: frame {frame_id!r} repeats a (gx, gy) grid cell")
        part = self._ensure_partition(target)
        stored = self._stored_frames(part)
        self._written()
        if frame_id in stored:
            self._call("delete", filter=f"frame_id == {quote(frame_id)}", partition_name=part)
        fixed = {"target": target, "frame_id": frame_id, "weather": float(meta.weather),
                 "altitude": float(meta.altitude_deg), "focus": float(meta.focus),
                 "ut_ms": meta.ut_ms}  # fmt: skip
        records = [
            {"id": i, "vector": v, "gx": x, "gy": y, **fixed}
            for i, v, x, y in zip(ids.tolist(), vecs, cols.tolist(), rows.tolist(), strict=True)
        ]
        # Lite's insert keeps the latest row of an id; a server's needs upsert for that.
        write = "insert" if self._lite else "upsert"
        for start in range(0, len(records), _INSERT_BATCH):
            self._call(write, records[start : start + _INSERT_BATCH], partition_name=part)
        stored.add(frame_id)
        return len(records)

    def delete_frame(self, target: str, frame_id: str) -> None:
        """Remove every patch of a frame; nothing happens when it is not stored."""
        part = partition_name(target)
        if self._has_partition(part):
            self._written()
            self._call("delete", filter=f"frame_id == {quote(frame_id)}", partition_name=part)
            self._frames.get(part, set()).discard(frame_id)

    def drop_target(self, target: str) -> None:
        """Remove every patch of ``target`` (its partition); nothing happens when none is stored."""
        part = partition_name(target)
        if self._has_partition(part):
            self._written()
            if not self._lite:
                self._call("release_partitions", [part])  # a server drops released ones only
            self._call("drop_partition", part)
            self._partitions.discard(part)
            self._frames.pop(part, None)

    def count(self, target: str | None = None) -> int:
        """Rows stored for ``target``, or for all targets."""
        if target is None:
            return int(self._call("query", filter="", output_fields=["count(*)"])[0]["count(*)"])
        part = partition_name(target)
        if not self._has_partition(part):
            return 0
        if self._lite:
            # Lite counts the whole collection for count(*) without a filter, whatever the
            # partition; its partition statistics are exact (a server's count deleted rows).
            return int(self._call("get_partition_stats", part)["row_count"])
        res = self._call("query", filter="", output_fields=["count(*)"], partition_names=[part])
        return int(res[0]["count(*)"])

    def targets(self) -> list[str]:
        """Targets with reference patches, sorted."""
        names: list[str] = []
        for part in self._refresh_partitions():
            if part.startswith("t_"):
                res = self._call(
                    "query", filter="", output_fields=["target"], partition_names=[part], limit=1
                )
                names.extend(str(r["target"]) for r in res)
        return sorted(names)

    def frame_ids(self, target: str) -> list[str]:
        """Ids of the frames stored for ``target``, sorted; reads every row of the target."""
        part = partition_name(target)
        if not self._has_partition(part):
            return []
        self._frames[part] = self._read_frame_ids(part)
        return sorted(self._frames[part])

    def search(
        self,
        target: str,
        queries: npt.ArrayLike,
        k: int = 1,
        *,
        conditions: str | None = None,
        exclude_frame: str | None = None,
    ) -> FloatArray:
        """Euclidean distances ``(n, k)`` to the nearest references: :meth:`neighbours`'s."""
        found = self.neighbours(
            target, queries, k, conditions=conditions, exclude_frame=exclude_frame
        )
        return found.distances

    def neighbours(
        self,
        target: str,
        queries: npt.ArrayLike,
        k: int = 1,
        *,
        conditions: str | None = None,
        exclude_frame: str | None = None,
    ) -> Neighbours:
        """The ``k`` nearest references of ``target`` to each query, in one search request.

        Args:
            target: Search only this target's partition.
            queries: Patch features of one frame, ``(n, dim)``.
            k: Neighbours per query.
            conditions: Milvus filter on :data:`CONDITION_FIELDS`, such as
                ``"weather >= 60 and altitude > 30"``.
            exclude_frame: Leave this frame's patches out (leave-one-out calibration).

        Returns:
            Distances (``inf`` where fewer than ``k`` references match) and ids.

        Raises:
            UnknownTargetError: No reference of ``target`` was ever stored.
            BankError: Milvus rejected the search (a malformed condition, say).

        """
        q = self._check_vectors(queries, "search", "queries")
        if k < 1:
            raise ValueError(f"search: k must be >= 1, got {k}")
        part = partition_name(target)
        if not self._has_partition(part):
            raise UnknownTargetError(
                f"memory bank: no reference patches for target {target!r} in collection "
                f"{self.cfg.collection!r} at {self.cfg.uri!r}; index reference frames first"
            )
        self._settle()
        dist = np.full((len(q), k), np.inf, dtype=np.float32)
        ids = np.full((len(q), k), -1, dtype=np.int64)
        params = {"metric_type": METRIC, "params": self.cfg.query_params}
        expr = search_filter(conditions, exclude_frame)
        for start in range(0, len(q), _MAX_NQ):
            res = self._call("search", data=list(q[start : start + _MAX_NQ]), filter=expr,
                             limit=k, output_fields=["id"], partition_names=[part],
                             search_params=params)  # fmt: skip
            for row, hits in enumerate(res, start):
                dist[row, : len(hits.ids)] = hits.distances
                ids[row, : len(hits.ids)] = hits.ids
        # Milvus reports squared L2 (rounding can leave a tiny negative).
        np.sqrt(np.maximum(dist, 0.0, out=dist), out=dist)
        return Neighbours(dist, ids)

    def index_info(self) -> dict[str, Any]:
        """The vector index as Milvus describes it: type, metric, build parameters, rows."""
        return dict(self._call("describe_index", "vector"))

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<method>(collection, ...)``; a Milvus failure names the call and the bank."""
        from pymilvus import MilvusException

        if self._client is None:
            raise BankError(f"memory bank: {method} needs an open bank; call open() first")
        try:
            fn = getattr(self._client, method)
            return fn(self.cfg.collection, *args, timeout=self.cfg.timeout_s, **kwargs)
        except MilvusException as err:
            raise BankError(
                f"memory bank: {method} on collection {self.cfg.collection!r} at "
                f"{self.cfg.uri!r} failed: {err}"
            ) from err

    def _check_vectors(self, vectors: npt.ArrayLike, step: str, name: str) -> FloatArray:
        arr = np.ascontiguousarray(vectors, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[1] != self.cfg.dim:
            raise ValueError(f"{step}: {name} must have shape (n, {self.cfg.dim}), got {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{step}: {name} contain NaN or infinite values")
        return arr

    def _prepare_collection(self) -> None:
        cfg = self.cfg
        if self._call("has_collection"):
            self._check_schema(self._call("describe_collection"))
        else:
            from pymilvus import DataType, MilvusClient

            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=cfg.dim)
            for name in ("target", "frame_id"):
                schema.add_field(name, DataType.VARCHAR, max_length=_MAX_NAME_BYTES)
            for name, dtype in (("gx", DataType.INT32), ("gy", DataType.INT32),
                                ("weather", DataType.FLOAT), ("altitude", DataType.FLOAT),
                                ("focus", DataType.FLOAT), ("ut_ms", DataType.INT64)):  # fmt: skip
                schema.add_field(name, dtype)
            # pymilvus 3 sends build parameters as flat key-value pairs; Milvus Lite 3.2 reads
            # only a JSON "params" pair and silently uses its defaults (nlist 128), so nest them.
            build = cfg.build_params
            params = {"params": build} if self._lite else build
            index = self._client.prepare_index_params()
            index.add_index("vector", index_type=cfg.index_type, metric_type=METRIC, params=params)
            self._call("create_collection", schema=schema, consistency_level="Strong")
            # sync=False: waiting would poll AllocTimestamp, which Milvus Lite lacks.
            self._call("create_index", index, sync=False)
        self._call("load_collection")  # collections reopen released after a restart
        self._refresh_partitions()
        info = self.index_info()
        if (info.get("index_type"), info.get("params")) != (cfg.index_type, cfg.build_params):
            logger.warning(
                "memory bank: collection %r at %r has a %s index %s, not the configured %s %s",
                cfg.collection, cfg.uri, info.get("index_type"), info.get("params"),
                cfg.index_type, cfg.build_params,
            )  # fmt: skip

    def _check_schema(self, desc: Mapping[str, Any]) -> None:
        fields = {str(f["name"]): f for f in desc.get("fields", [])}
        where = f"collection {self.cfg.collection!r} at {self.cfg.uri!r}"
        missing = sorted({"id", "vector", "target", *CONDITION_FIELDS} - set(fields))
        if missing:
            raise BankSchemaError(f"memory bank: {where} lacks the fields {missing}")
        dim = int(fields["vector"].get("params", {}).get("dim", -1))
        if dim != self.cfg.dim:
            raise BankSchemaError(
                f"memory bank: {where} holds vectors of dim {dim} but the config says "
                f"{self.cfg.dim}; use another collection or uri for features of this size"
            )

    def _refresh_partitions(self) -> set[str]:
        self._partitions = {str(p) for p in self._call("list_partitions")}
        return self._partitions

    def _has_partition(self, part: str) -> bool:
        return part in self._partitions or part in self._refresh_partitions()

    def _read_frame_ids(self, part: str) -> set[str]:
        it = self._call("query_iterator", batch_size=10_000, filter="",
                        output_fields=["frame_id"], partition_names=[part])  # fmt: skip
        seen: set[str] = set()
        try:
            while batch := it.next():
                seen.update(str(r["frame_id"]) for r in batch)
        finally:
            it.close()
        return seen

    def _stored_frames(self, part: str) -> set[str]:
        if part not in self._frames:
            self._frames[part] = self._read_frame_ids(part)
        return self._frames[part]

    def _ensure_partition(self, target: str) -> str:
        part = partition_name(target)
        if not self._has_partition(part):
            try:
                self._call("create_partition", part)
                self._frames[part] = set()
            except BankError:
                if not self._has_partition(part):  # else another worker created it first
                    raise
        return part

    @property
    def _lite(self) -> bool:
        return self._lite_path is not None or self._lite_server

    def _written(self) -> None:
        self._dirty = True
        if self._lite_path is not None:  # other banks of this process must settle too
            _lite_dirty.add(self._lite_path)

    def _settle(self) -> None:
        """Before a search that follows writes to Milvus Lite: flush, then index everything."""
        path = self._lite_path
        if (self._dirty or path in _lite_dirty) and self._lite:
            self._call("flush")
            if path is None or not _lite_wait_for_indexes(path, self.cfg):
                # Loading builds the missing segment indexes before it returns. Of a remote
                # Lite server, a compaction started later leaves its merged segment
                # unindexed for a while: build the bank before scoring against it.
                self._call("release_collection")
                self._call("load_collection")
            _lite_dirty.discard(path or "")
        self._dirty = False


def _check_name(field: str, value: str) -> None:
    if not value or len(value.encode()) > _MAX_NAME_BYTES:
        raise ValueError(f"add: {field} must be 1 to {_MAX_NAME_BYTES} bytes, got {value!r}")


# Milvus Lite files this process serves, and how many open banks use each.
_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}
_lite_dirty: set[str] = set()  # written since the last flush-and-index


def _lite_acquire(path: str) -> None:
    with _lite_lock:
        _lite_users[path] = _lite_users.get(path, 0) + 1


def _lite_release(path: str) -> None:
    with _lite_lock:
        _lite_users[path] -= 1
        if _lite_users[path] > 0:
            return
        del _lite_users[path]
    from milvus_lite import server_manager_instance  # type: ignore[import-untyped]

    server_manager_instance.release_server(path)  # flushes, closes the file, frees its lock


def _lite_wait_for_indexes(path: str, cfg: BankConfig) -> bool:
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
