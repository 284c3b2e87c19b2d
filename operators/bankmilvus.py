"""What the memory bank needs of pymilvus beyond plain calls: its collection, and failures.

Split from :mod:`operators.membank`, which re-exports the public names.
:func:`unavailable` tells a Milvus that does not answer (stopped, restarting,
unreachable: worth retrying) from one that refuses a request (a bug or a
malformed filter: not worth it).

The collection: one row per reference patch, the ``id``
(:func:`~operators.banktypes.patch_ids`), the ``vector``, the ``target`` and
``frame_id`` it came from, its grid cell ``gx``/``gy`` and the frame's
conditions (:data:`~operators.banktypes.CONDITION_FIELDS`).

Example:
    >>> desc = {"fields": [{"name": "id"}, {"name": "vector", "params": {"dim": 8}}]}
    >>> check_schema(desc, BankConfig(dim=8))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    operators.banktypes.BankSchemaError: memory bank: collection ... lacks the fields [...]

"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from operators.banktypes import (
    CONDITION_FIELDS,
    MAX_NAME_BYTES,
    METRIC,
    BankConfig,
    BankConnectionError,
    BankSchemaError,
)

#: Milvus's error code for a search or query on a collection not loaded: what a
#: restarted server answers until the collection is loaded again.
_NOT_LOADED = 101


class BankUnavailableError(BankConnectionError):
    """Milvus did not answer, refused the connection, or forgot a loaded collection.

    Trying again later may succeed (after :meth:`operators.membank.MemoryBank.recover`).
    """


def unavailable(exc: BaseException) -> bool:
    """Whether a failure (or its cause) means Milvus is unreachable or was restarted.

    Covers gRPC's UNAVAILABLE and DEADLINE_EXCEEDED (a stopped server), pymilvus's
    failed connection and a collection left released by a restart; a malformed
    request, a missing target or a schema mismatch are not.

    Example:
        >>> from operators.banktypes import BankError
        >>> unavailable(BankUnavailableError("search: no answer"))
        True
        >>> unavailable(BankError("search: malformed filter"))
        False

    """
    import grpc  # type: ignore[import-untyped]
    from pymilvus import MilvusException
    from pymilvus.client.types import Status

    gone = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, BankUnavailableError):
            return True
        if isinstance(seen, grpc.RpcError) and seen.code() in gone:
            return True
        if isinstance(seen, MilvusException) and (
            seen.code in (*gone, Status.CONNECT_FAILED, _NOT_LOADED) or seen.retriable
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def new_collection(client: Any, cfg: BankConfig, *, lite: bool) -> tuple[Any, Any]:
    """The schema and index parameters of a new bank collection.

    Args:
        client: An open ``MilvusClient``.
        cfg: The bank's settings.
        lite: Whether Milvus Lite serves the bank.

    """
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=cfg.dim)
    for name in ("target", "frame_id"):
        schema.add_field(name, DataType.VARCHAR, max_length=MAX_NAME_BYTES)
    for name, dtype in (("gx", DataType.INT32), ("gy", DataType.INT32),
                        ("weather", DataType.FLOAT), ("altitude", DataType.FLOAT),
                        ("focus", DataType.FLOAT), ("ut_ms", DataType.INT64)):  # fmt: skip
        schema.add_field(name, dtype)
    # pymilvus 3 sends build parameters as flat key-value pairs; Milvus Lite 3.2 reads
    # only a JSON "params" pair and silently uses its defaults (nlist 128), so nest them.
    build = cfg.build_params
    params = {"params": build} if lite else build
    index = client.prepare_index_params()
    index.add_index("vector", index_type=cfg.index_type, metric_type=METRIC, params=params)
    return schema, index


def check_schema(desc: Mapping[str, Any], cfg: BankConfig) -> None:
    """Check an existing collection (as ``describe_collection`` gives it) against ``cfg``.

    Raises:
        BankSchemaError: a field is missing, or the vectors have another dimension.

    """
    fields = {str(f["name"]): f for f in desc.get("fields", [])}
    where = f"collection {cfg.collection!r} at {cfg.uri!r}"
    missing = sorted({"id", "vector", "target", *CONDITION_FIELDS} - set(fields))
    if missing:
        raise BankSchemaError(f"memory bank: {where} lacks the fields {missing}")
    dim = int(fields["vector"].get("params", {}).get("dim", -1))
    if dim != cfg.dim:
        raise BankSchemaError(
            f"memory bank: {where} holds vectors of dim {dim} but the config says "
            f"{cfg.dim}; use another collection or uri for features of this size"
        )
