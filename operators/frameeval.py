"""Judging frame scores: AUROC, patch labels from ground-truth boxes, and the original's method.

The original system resized each frame to 166 x 100 pixels, flattened it
into a 16,600-value vector, L2-normalised it and searched the nearest
references in Milvus by L2 distance; a person read the distances. Its frame
score here is the distance to the nearest reference vector
(:class:`OriginalMethod`), so both methods are judged on the same frames with
the same AUROC. It has no notion of where an anomaly is, so it has no
patch-level figure.

Example:
    >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True]))
    0.75

"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image

from operators.frames import Box, PixelArray

BoolArray = npt.NDArray[np.bool_]
F32 = npt.NDArray[np.float32]

#: The original's embedding size: 166 x 100 pixels.
ORIGINAL_SIZE = (166, 100)


def auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve: the chance a positive outscores a negative (ties count half).

    Raises:
        ValueError: when there is no positive or no negative.

    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        msg = f"auroc: expected positives and negatives, got {pos} and {neg}"
        raise ValueError(msg)
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties (1-based).
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def patch_labels(
    boxes: tuple[Box, ...], grid: tuple[int, int], stride: int, min_overlap: int = 1
) -> BoolArray:
    """Which cells of a ``grid`` (of ``stride`` pixels) hold ``min_overlap`` pixels of a box.

    A box smaller than ``min_overlap`` pixels (a hot pixel) marks the cells it touches.

    Example:
        >>> patch_labels((Box(20, 5, 36, 9, "trail"),), (2, 3), 16).astype(int).tolist()
        [[0, 1, 1], [0, 0, 0]]

    """
    rows, cols = grid
    out = np.zeros(grid, dtype=bool)
    for b in boxes:
        for r in range(max(b.y0 // stride, 0), min((b.y1 - 1) // stride + 1, rows)):
            for c in range(max(b.x0 // stride, 0), min((b.x1 - 1) // stride + 1, cols)):
                ox = min(b.x1, (c + 1) * stride) - max(b.x0, c * stride)
                oy = min(b.y1, (r + 1) * stride) - max(b.y0, r * stride)
                if ox * oy >= min(min_overlap, b.area):
                    out[r, c] = True
    return out


def original_vector(pixels: PixelArray) -> F32:
    """The original's embedding: resized to 166 x 100, flattened, L2-normalised."""
    img = Image.fromarray(pixels.astype(np.float32), mode="F").resize(
        ORIGINAL_SIZE, Image.Resampling.BILINEAR
    )
    v = np.asarray(img, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0.0 else v


class OriginalMethod:
    """The original's nearest-reference distance over whole-frame vectors (exact, in numpy).

    Args:
        references: The reference frames' pixels.

    """

    def __init__(self, references: list[PixelArray]) -> None:
        if not references:
            raise ValueError("original method: expected at least one reference frame, got none")
        self._bank = np.stack([original_vector(p) for p in references])

    def score(self, pixels: PixelArray) -> float:
        """Distance from the frame's vector to the nearest reference vector."""
        d = np.linalg.norm(self._bank - original_vector(pixels)[None, :], axis=1)
        return float(d.min())
