"""Where each target's calibration lives: a small Milvus collection next to the patch bank.

Every process that opens the bank (the flow's workers, ``vigil-frames score``
on another machine) must judge a target's frames the same way, so the
calibration (:class:`operators.framescore.Calibration`) and the references'
image statistics (:class:`operators.framequality.ReferenceStats`) are kept in
the same Milvus as the patches: one row per target, the record as JSON text.
Milvus needs a vector field in every collection; this one's is a 2-value
placeholder that is never searched.

Example:
    >>> import json
    >>> import numpy as np
    >>> from operators.framescore import Calibration
    >>> cal = Calibration("M31", (2, 2), 16, 1.5, np.ones(4, np.float32), 3.0,
    ...                   np.ones(3, np.float32))
    >>> m = TargetModel(cal, ReferenceStats(focus=7200.0, signal=900.0, background=1000.0))
    >>> TargetModel.from_json(m.to_json()).calibration.threshold
    3.0

"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from operators.framequality import ReferenceStats
from operators.framescore import Calibration

#: Name of the collection of calibrations.
COLLECTION = "vigil_calibrations"
_MAX_JSON = 65_535


@dataclass(frozen=True, slots=True)
class TargetModel:
    """What scoring one target needs besides the bank's patches.

    Attributes:
        calibration: Cell scales, threshold and position weight.
        reference: The reference frames' focus, star signal and sky level.

    """

    calibration: Calibration
    reference: ReferenceStats

    @property
    def target(self) -> str:
        """The target."""
        return self.calibration.target

    def to_json(self) -> str:
        """The model as JSON text."""
        return json.dumps(
            {"calibration": self.calibration.to_record(), "reference": asdict(self.reference)},
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> TargetModel:
        """Rebuild a model from :meth:`to_json` text."""
        record = json.loads(text)
        return cls(
            calibration=Calibration.from_record(record["calibration"]),
            reference=ReferenceStats(**record["reference"]),
        )


class RecordStore:
    """Per-target records in a Milvus collection that is read, never searched.

    Subclasses name their fields (:meth:`_fields`, the target's field among
    them); Milvus needs a vector field in every collection, so a 2-value
    placeholder with a flat index is added.

    Args:
        client: An open ``pymilvus.MilvusClient`` (the bank's).
        collection: Collection name (default: the class's ``collection``).

    """

    collection = ""

    def __init__(self, client: Any, collection: str | None = None) -> None:
        self._client = client
        self._collection = collection or self.collection
        self._ready = False

    def _fields(self, schema: Any) -> None:
        """Add the record's fields to a new collection's schema."""
        raise NotImplementedError

    def _ensure(self) -> None:
        """Create the collection if it is missing, and load it (once per store)."""
        if self._ready:
            return
        from pymilvus import DataType, MilvusClient

        c = self._client
        if not c.has_collection(self._collection):
            schema = MilvusClient.create_schema(auto_id=False)
            self._fields(schema)
            schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=2)
            index = c.prepare_index_params()
            index.add_index("placeholder", index_type="FLAT", metric_type="L2")
            c.create_collection(self._collection, schema=schema, index_params=index)
        c.load_collection(self._collection)
        self._ready = True

    def delete(self, target: str) -> None:
        """Forget the target's records."""
        self._ensure()
        self._client.delete(self._collection, filter=f"target == {json.dumps(target)}")


class ModelStore(RecordStore):
    """Target models (calibration and reference statistics), one row a target."""

    collection = COLLECTION

    def _fields(self, schema: Any) -> None:
        from pymilvus import DataType

        schema.add_field("target", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("model", DataType.VARCHAR, max_length=_MAX_JSON)

    def save(self, model: TargetModel) -> None:
        """Store (or replace) the target's model.

        Raises:
            ValueError: the model does not fit the text field (a grid too fine).

        """
        text = model.to_json()
        if len(text.encode()) > _MAX_JSON:
            msg = (
                f"calibration of {model.target!r}: {len(text.encode())} bytes of JSON exceed the "
                f"{_MAX_JSON} a Milvus text field holds; use a coarser patch grid"
            )
            raise ValueError(msg)
        self._ensure()
        row = {"target": model.target, "model": text, "placeholder": [0.0, 0.0]}
        # Delete then insert: Milvus Lite does not serve the timestamp an upsert asks for.
        self.delete(model.target)
        self._client.insert(self._collection, [row])

    def load(self, target: str) -> TargetModel | None:
        """The target's model, or ``None`` when it was never indexed."""
        self._ensure()
        rows = self._client.query(
            self._collection, filter=f"target == {json.dumps(target)}", output_fields=["model"]
        )
        return TargetModel.from_json(rows[0]["model"]) if rows else None
