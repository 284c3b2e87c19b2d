"""Where each target's reference image lives: a Milvus collection of text chunks next to the bank.

Difference imaging (:mod:`operators.framediff`) needs the target's reference
image in every process that scores its frames, as the calibration does
(:mod:`operators.calstore`). The image (``float16`` pixels, zlib, about 0.6 MB for
650 x 500) is stored base64-encoded in rows of at most :data:`CHUNK` characters,
keyed by target and chunk number, in the same Milvus as the patches. Milvus
needs a vector field in every collection; this one's is a 2-value placeholder
that is never searched.

Example:
    >>> chunks = split_text("abcdefg", 3)
    >>> chunks, "".join(chunks)
    (['abc', 'def', 'g'], 'abcdefg')

"""

from __future__ import annotations

import base64
import json
from typing import Any

from operators.calstore import RecordStore
from operators.framediff import ReferenceImage

#: Name of the collection of reference images.
COLLECTION = "vigil_reference_images"
#: Characters of one row's text (a Milvus text field holds at most 65,535 bytes).
CHUNK = 60_000
_MAX_CHUNKS = 4096


def split_text(text: str, size: int) -> list[str]:
    """``text`` in pieces of ``size`` characters (the last one shorter)."""
    return [text[i : i + size] for i in range(0, len(text), size)]


class ReferenceImageStore(RecordStore):
    """Reference images, in rows of base64 text chunks keyed by target and chunk number."""

    collection = COLLECTION

    def _fields(self, schema: Any) -> None:
        from pymilvus import DataType

        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=600)
        schema.add_field("target", DataType.VARCHAR, max_length=512)
        schema.add_field("chunk", DataType.INT64)
        schema.add_field("data", DataType.VARCHAR, max_length=CHUNK)

    def save(self, target: str, image: ReferenceImage) -> None:
        """Store (or replace) the target's reference image.

        Raises:
            ValueError: the image needs more than 4,096 chunks (a frame far larger
                than a camera's).

        """
        chunks = split_text(base64.b64encode(image.to_bytes()).decode("ascii"), CHUNK)
        if len(chunks) > _MAX_CHUNKS:
            msg = (
                f"reference image of {target!r}: expected at most {_MAX_CHUNKS} chunks of "
                f"{CHUNK} characters, got {len(chunks)}"
            )
            raise ValueError(msg)
        self._ensure()
        rows = [
            {
                "key": f"{target}\x1f{i}",
                "target": target,
                "chunk": i,
                "data": text,
                "placeholder": [0.0, 0.0],
            }
            for i, text in enumerate(chunks)
        ]
        # Delete then insert: Milvus Lite does not serve the timestamp an upsert asks for.
        self.delete(target)
        self._client.insert(self._collection, rows)

    def load(self, target: str) -> ReferenceImage | None:
        """The target's reference image, or ``None`` when none was stored.

        Raises:
            ValueError: the stored chunks are not a whole image.

        """
        self._ensure()
        rows = self._client.query(
            self._collection,
            filter=f"target == {json.dumps(target)}",
            output_fields=["chunk", "data"],
            limit=_MAX_CHUNKS,
        )
        if not rows:
            return None
        rows = sorted(rows, key=lambda r: int(r["chunk"]))
        if [int(r["chunk"]) for r in rows] != list(range(len(rows))):
            msg = (
                f"reference image of {target!r}: expected chunks 0 to {len(rows) - 1}, got "
                f"{[int(r['chunk']) for r in rows]}; index the target again"
            )
            raise ValueError(msg)
        return ReferenceImage.from_bytes(base64.b64decode("".join(r["data"] for r in rows)))
