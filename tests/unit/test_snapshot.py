"""Snapshot pickling: arrays as bytes come back equal, owned and writable."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from operators import snapshot
from operators.detectors import make_detector

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "array",
    [
        np.array([1.5, np.nan, -np.inf, 0.0]),
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.arange(12, dtype=np.float32).reshape(3, 4)[:, 1:3],  # a strided view
        np.array([True, False]),
        np.array([1 + 2j]),
        np.empty(0),
        np.array(3.25),  # 0-d
        np.array([1.0, 2.0]).astype(">f8"),  # big-endian
    ],
    ids=["float", "int2d", "view", "bool", "complex", "empty", "0d", "big-endian"],
)
def test_numeric_arrays_round_trip_exactly(array: np.ndarray) -> None:
    back = snapshot.loads(snapshot.dumps({"a": array}))["a"]
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    assert back.tobytes() == array.tobytes()
    assert back.flags.writeable
    assert back.flags.owndata
    back[...] = 0  # a writable copy, not a view of the snapshot's bytes


def test_other_arrays_keep_numpy_pickling() -> None:
    objects = np.array([{"x": 1}, None], dtype=object)
    records = np.array([(1, 2.0)], dtype=[("n", "i4"), ("v", "f8")])
    stamps = np.array(["2024-01-01"], dtype="datetime64[ms]")
    back = snapshot.loads(snapshot.dumps((objects, records, stamps)))
    assert back[0].tolist() == [{"x": 1}, None]
    assert back[1].dtype.names == ("n", "v")
    assert back[1].tolist() == [(1, 2.0)]
    assert back[2].dtype == stamps.dtype
    assert back[2].tolist() == stamps.tolist()


def test_detector_state_resumes_with_the_same_scores() -> None:
    rng = np.random.default_rng(3)
    warm, rest = rng.normal(20.0, 1.0, 300), rng.normal(20.0, 1.0, 50)
    det = make_detector("robust-z", {"stats_every": 4})
    det.score_learn_many(warm)
    resumed = snapshot.loads(snapshot.dumps(det))
    assert resumed.score_learn_many(rest).tolist() == det.score_learn_many(rest).tolist()


def test_plain_pickles_still_load() -> None:
    # Stores written before arrays were pickled as bytes.
    state = {"h": np.arange(4.0)}
    assert snapshot.loads(pickle.dumps(state))["h"].tolist() == [0.0, 1.0, 2.0, 3.0]
