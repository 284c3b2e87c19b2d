"""River's HalfSpaceTrees behind the Vigil detector interface.

``hst-original`` is the configuration of the original warehouse pipeline
(5 trees, height 3, window 30, seed 42, on values min-max scaled to [0, 1]);
``hst`` is River's default configuration. Score range: [0, 1], higher is more
anomalous (River's own score). River is untyped, so it stays in this module.

Example:
    >>> d = make_hst_original()
    >>> d.score_one(0.5)
    0.0

"""

from __future__ import annotations

from typing import Any

from operators.detectors.base import Detector


class HalfSpaceTrees(Detector):
    """A River ``HalfSpaceTrees`` scoring ``{"value": x}``.

    Args:
        n_trees: Number of trees.
        height: Height of each tree.
        window_size: Number of values per reference window.
        seed: Random seed of the tree structure.

    """

    name = "hst"
    score_range = "[0, 1]: River HalfSpaceTrees score"
    calibrator = "unit"

    def __init__(
        self, n_trees: int = 10, height: int = 8, window_size: int = 250, seed: int = 42
    ) -> None:
        self.params: dict[str, Any] = {
            "n_trees": n_trees,
            "height": height,
            "window_size": window_size,
            "seed": seed,
        }
        # Imported here: River pulls in SciPy (about a second), which flows that
        # never build this detector should not pay at start-up.
        from river import anomaly

        self.model: Any = anomaly.HalfSpaceTrees(**self.params)

    def score_one(self, x: float) -> float:
        """River's anomaly score of ``x``."""
        return float(self.model.score_one({"value": x}))

    def learn_one(self, x: float) -> None:
        """Update the trees' mass counts with ``x``."""
        self.model.learn_one({"value": x})


class HalfSpaceTreesOriginal(HalfSpaceTrees):
    """The original pipeline's configuration: ``n_trees=5, height=3, window_size=30, seed=42``."""

    name = "hst-original"

    def __init__(self) -> None:
        super().__init__(n_trees=5, height=3, window_size=30, seed=42)


def make_hst_original() -> HalfSpaceTreesOriginal:
    """Build the original pipeline's detector."""
    return HalfSpaceTreesOriginal()
