"""The memory bank's settings, row metadata, stable ids and filters (no Milvus client here).

Split from :mod:`operators.membank`, which re-exports every name.

Example:
    >>> search_filter("weather >= 60", "f1")
    '(weather >= 60) and frame_id != "f1"'

"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from operators.frames import FrameHeader

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
MAX_NQ = 16_384  # Milvus's limit on query vectors per search request
INSERT_BATCH = 10_000  # rows per insert request, far below gRPC's message limit
MAX_NAME_BYTES = 512  # VARCHAR length of target and frame_id
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


def check_name(field: str, value: str) -> None:
    """Refuse an empty name, or one longer than its Milvus text field holds."""
    if not value or len(value.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"add: {field} must be 1 to {MAX_NAME_BYTES} bytes, got {value!r}")


# Milvus Lite files this process serves, and how many open banks use each.
