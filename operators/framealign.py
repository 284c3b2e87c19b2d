"""Tracking shifts between star fields: star centroids, and sub-pixel resampling.

Frames of one target drift by a few pixels (tracking). :func:`measure_shift`
finds the shift of a (filtered) frame from the centroids of a reference's
brightest stars, and :func:`shifted` resamples an image by it (bilinear), for
difference imaging (:mod:`operators.framediff`). Pure numpy and scipy.

Example:
    >>> yy, xx = np.mgrid[:64, :64]
    >>> field = lambda y, x: 50.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 4.0)
    >>> ref = field(30.0, 33.0).astype(np.float32)
    >>> stars = find_stars(ref, 5, 20.0, 7)
    >>> stars.tolist()
    [[30, 33]]
    >>> dy, dx = measure_shift(field(31.4, 32.2).astype(np.float32), stars,
    ...                        centroids(ref, stars, 7), 7)
    >>> round(dy, 2), round(dx, 2)
    (1.4, -0.8)

"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def shifted(padded: F32, pad: int, shape: tuple[int, int], dy: float, dx: float) -> F32:
    """``out[p] = image[p - (dy, dx)]``, bilinear, from the image padded by ``pad`` (edge values).

    Shifts beyond ``pad - 1`` pixels are clamped to it.

    Example:
        >>> img = np.arange(12, dtype=np.float32).reshape(3, 4)
        >>> shifted(np.pad(img, 2, mode="edge"), 2, (3, 4), 0.0, 0.5)[0].tolist()
        [0.0, 0.5, 1.5, 2.5]

    """
    ty = min(max(-dy, -pad + 1.0), pad - 1.0)
    tx = min(max(-dx, -pad + 1.0), pad - 1.0)
    iy, ix = math.floor(ty), math.floor(tx)
    fy, fx = np.float32(ty - iy), np.float32(tx - ix)
    h, w = shape
    y0, x0 = pad + iy, pad + ix
    top = padded[y0 : y0 + h, x0 : x0 + w] * (1 - fx)
    top += padded[y0 : y0 + h, x0 + 1 : x0 + 1 + w] * fx
    low = padded[y0 + 1 : y0 + 1 + h, x0 : x0 + w] * (1 - fx)
    low += padded[y0 + 1 : y0 + 1 + h, x0 + 1 : x0 + 1 + w] * fx
    top *= 1 - fy
    low *= fy
    top += low
    return top


def find_stars(filtered: F32, count: int, sigmas: float, window: int) -> I64:
    """Pixel ``(row, column)`` of the ``count`` brightest isolated peaks, brightest first.

    A peak is the largest value of its centroid window (``window`` pixels about it),
    above ``sigmas``, and two windows from the edges (so that a shifted window stays
    inside). Returns ``(n, 2)`` integers, ``n <= count``.
    """
    w = window
    h, wd = filtered.shape
    if h <= 4 * w or wd <= 4 * w:
        return np.zeros((0, 2), np.int64)
    inner = filtered[2 * w : h - 2 * w, 2 * w : wd - 2 * w]
    top = ndimage.maximum_filter(inner, size=2 * w + 1, mode="constant", cval=-np.inf)
    rows, cols = np.nonzero((inner == top) & (inner > sigmas))
    order = np.argsort(-inner[rows, cols], kind="stable")[:count]
    return np.stack((rows[order], cols[order]), axis=1).astype(np.int64) + 2 * w


def centroids(filtered: F32, centres: I64, window: int) -> F64:
    """Flux-weighted centroids in windows about ``centres`` (background: the window's median).

    A window with no flux above its median gives NaN.
    """
    if len(centres) == 0:
        return np.zeros((0, 2), np.float64)
    offs = np.arange(-window, window + 1)
    h, w = filtered.shape
    cy = np.clip(centres[:, 0], window, h - 1 - window)
    cx = np.clip(centres[:, 1], window, w - 1 - window)
    stamps = filtered[(cy[:, None] + offs)[:, :, None], (cx[:, None] + offs)[:, None, :]]
    n = len(centres)
    base = np.median(stamps.reshape(n, -1), axis=1)
    weights = np.maximum(stamps - base[:, None, None], 0.0).astype(np.float64)
    total = weights.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        dy = (weights.sum(axis=2) * offs).sum(axis=1) / total
        dx = (weights.sum(axis=1) * offs).sum(axis=1) / total
    return np.stack((cy + dy, cx + dx), axis=1)


def measure_shift(
    filtered: F32, stars: I64, star_centroids: F64, window: int
) -> tuple[float, float]:
    """``(dy, dx)`` of a filtered frame against stars measured elsewhere (0 without stars).

    The median of the stars' centroid shifts, measured twice: the second time with the
    windows moved by the first estimate, rounded.
    """
    if len(stars) == 0:
        return 0.0, 0.0
    shift = np.zeros(2)
    for _ in range(2):
        moved = stars + np.round(shift).astype(np.int64)
        d = centroids(filtered, moved, window) - star_centroids
        d = d[np.isfinite(d).all(axis=1)]
        if len(d) == 0:
            return 0.0, 0.0
        shift = np.median(d, axis=0)
    return float(shift[0]), float(shift[1])
