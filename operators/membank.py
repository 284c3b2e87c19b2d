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

What Milvus Lite 3.2 does differently and what the bank does about it (flush
and wait for index builds before a search that follows writes, build
parameters sent nested, every search restricted to one partition, distances
returned as square roots), and the search and indexing speed through Lite:
:mod:`operators.banklite`. The collection's schema and index, and which
failures mean that Milvus is unavailable: :mod:`operators.bankmilvus`.

When Milvus does not answer (a server stopped, restarting or unreachable), a
request fails after ``timeout_s`` or at once with :class:`BankUnavailableError`
(:func:`unavailable` tells such failures from the others), and
:meth:`MemoryBank.recover` makes the bank usable again once the server is back
(a restarted server reopens collections released). The retrying itself is the
caller's (:class:`operators.framepipe.FramePipeline`, with
:mod:`operators.retry`).

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

import logging
import os
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from operators import banklite
from operators.bankmilvus import (
    BankUnavailableError,
    check_schema,
    new_collection,
    unavailable,
)
from operators.banktypes import (
    CONDITION_FIELDS,
    DEFAULT_INDEX_PARAMS,
    DEFAULT_SEARCH_PARAMS,
    INSERT_BATCH,
    MAX_NQ,
    METRIC,
    BankConfig,
    BankConnectionError,
    BankError,
    BankSchemaError,
    FloatArray,
    Neighbours,
    PatchMeta,
    UnknownTargetError,
    check_name,
    partition_name,
    patch_ids,
    quote,
    search_filter,
)

__all__ = [
    "CONDITION_FIELDS",
    "DEFAULT_INDEX_PARAMS",
    "DEFAULT_SEARCH_PARAMS",
    "METRIC",
    "BankConfig",
    "BankConnectionError",
    "BankError",
    "BankSchemaError",
    "BankUnavailableError",
    "MemoryBank",
    "Neighbours",
    "PatchMeta",
    "UnknownTargetError",
    "partition_name",
    "patch_ids",
    "quote",
    "search_filter",
    "unavailable",
]

logger = logging.getLogger(__name__)


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
            banklite.acquire(uri)
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
            banklite.release(self._lite_path)
            self._lite_path = None
        self._partitions.clear()
        self._frames.clear()

    def recover(self) -> None:
        """After Milvus failed to answer: reload the collection and forget what was cached.

        A restarted server holds the collection released; a request that timed
        out may have been carried out after all (a partition created or
        dropped), so the partitions and stored frames are read again.

        Raises:
            BankUnavailableError: Milvus still does not answer.

        """
        self._call("load_collection")
        self._refresh_partitions()
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
        check_name("target", target)
        check_name("frame_id", frame_id)
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
        for start in range(0, len(records), INSERT_BATCH):
            self._call(write, records[start : start + INSERT_BATCH], partition_name=part)
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
        for start in range(0, len(q), MAX_NQ):
            res = self._call("search", data=list(q[start : start + MAX_NQ]), filter=expr,
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
        """``client.<method>(collection, ...)``; a Milvus failure names the call and the bank.

        Raises:
            BankUnavailableError: Milvus did not answer within ``timeout_s`` or is gone.
            BankError: Milvus refused the request.

        """
        import grpc  # type: ignore[import-untyped]
        from pymilvus import MilvusException

        if self._client is None:
            raise BankError(f"memory bank: {method} needs an open bank; call open() first")
        try:
            fn = getattr(self._client, method)
            return fn(self.cfg.collection, *args, timeout=self.cfg.timeout_s, **kwargs)
        except (MilvusException, grpc.RpcError) as err:
            error = BankUnavailableError if unavailable(err) else BankError
            detail = " ".join(str(err).split())  # a gRPC error spans several lines
            raise error(
                f"memory bank: {method} on collection {self.cfg.collection!r} at "
                f"{self.cfg.uri!r} failed: {detail}"
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
            check_schema(self._call("describe_collection"), cfg)
        else:
            schema, index = new_collection(self._client, cfg, lite=self._lite)
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
            banklite.mark_written(self._lite_path)

    def _settle(self) -> None:
        """Before a search that follows writes to Milvus Lite: flush, then index everything."""
        path = self._lite_path
        if (self._dirty or (path is not None and banklite.written(path))) and self._lite:
            self._call("flush")
            if path is None or not banklite.wait_for_indexes(path, self.cfg):
                # Loading builds the missing segment indexes before it returns. Of a remote
                # Lite server, a compaction started later leaves its merged segment
                # unindexed for a while: build the bank before scoring against it.
                self._call("release_collection")
                self._call("load_collection")
            if path is not None:
                banklite.settled(path)
        self._dirty = False
