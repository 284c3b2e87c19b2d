"""A JSON-lines file sink for the embedded mode (alerts, dead letters).

Each worker appends to its own file (``name.jsonl`` with one worker,
``name-w<i>.jsonl`` with several), so workers never interleave partial lines.
Delivery is at least once: after a resume, records may repeat, and readers
de-duplicate by the record's id (``alert_id``, or origin/partition/offset).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO

from bytewax.outputs import DynamicSink, StatelessSinkPartition

logger = logging.getLogger(__name__)


def worker_path(path: Path, worker_index: int, worker_count: int) -> Path:
    """The file one worker writes.

    Example:
        >>> worker_path(Path("out/alerts.jsonl"), 1, 2).as_posix()
        'out/alerts-w1.jsonl'

    """
    if worker_count == 1:
        return path
    return path.with_name(f"{path.stem}-w{worker_index}{path.suffix}")


class _JsonlPartition(StatelessSinkPartition[tuple[bytes | None, bytes]]):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._file: IO[bytes] = path.open("ab")
        self._written = 0

    def write_batch(self, items: list[tuple[bytes | None, bytes]]) -> None:
        self._file.write(b"".join(value + b"\n" for _key, value in items))
        self._file.flush()
        self._written += len(items)

    def close(self) -> None:
        self._file.close()
        logger.info("wrote %d records to %s", self._written, self._path)


class JsonlSink(DynamicSink[tuple[bytes | None, bytes]]):
    """Append the value of each ``(key, value)`` message as one line of a file.

    Args:
        path: The file (with several workers, one file per worker beside it).

    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _JsonlPartition:
        """Open this worker's file for appending."""
        return _JsonlPartition(worker_path(self.path, worker_index, worker_count))
