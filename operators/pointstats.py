"""Frames in noise units, and per-cell point statistics the patch features carry.

:class:`Normalisation` turns a ``uint16`` frame into the patch model's input (sky
subtracted, divided by the noise, squashed); :class:`PointStats` computes, from the
same frame in noise units, the per-cell numbers that :class:`~operators.embedding.PatchEmbedder`
appends to the model's features (sharpness, point flux). Pure numpy, no BLAS.

Example:
    >>> frame = np.random.default_rng(0).poisson(900, (64, 48)).astype(np.uint16)
    >>> z = Normalisation()(frame)
    >>> z.shape, z.dtype, bool(0.0 <= z.min() <= z.max() <= 1.0)
    ((64, 48), dtype('float32'), True)
    >>> PointStats()(frame, 16).shape
    (12, 17)

"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from operators.frames import PixelArray

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Normalisation:
    """Robust, exposure-independent scaling of a frame to ``[0, 1]`` for the model.

    In order: a 3x3 binomial smoothing (it lowers the pixel noise about 2.5 times
    and keeps a hot pixel a sharp peak); the sky level (median) is subtracted and the
    result divided by the noise (1.4826 x the median absolute deviation), both taken
    on every ``sample_step``-th row and column; values within ``noise_floor`` noise
    units of the sky are shrunk to zero (so sky noise barely moves the features and
    faint sources stand out); then ``offset + scale * asinh(z / softening)``, clipped
    to ``[0, 1]``. With the defaults the sky is 0.25, a 5-sigma source 0.45 and 1
    reaches at about 900 sigma.

    The defaults were chosen on seeded simulated star fields: they gave the best
    patch AUROC over faint moving points, trails, hot pixels, hot columns and cosmic
    rays among the settings tried (no smoothing, 5-tap smoothing, floors 0 to 2.5).

    Example:
        >>> z = Normalisation()(np.array([[1000, 1010], [990, 3000]], np.uint16))
        >>> z.dtype, bool(z.min() >= 0.0), bool(z.max() <= 1.0)
        (dtype('float32'), True, True)

    """

    smooth: bool = True
    noise_floor: float = 1.5
    softening: float = 1.0
    scale: float = 0.1
    offset: float = 0.25
    sample_step: int = 4

    def __call__(self, pixels: PixelArray) -> FloatArray:
        """The normalised frame, ``float32 (H, W)`` in ``[0, 1]``."""
        return self.squash(self.standardise(pixels))

    def standardise(self, pixels: PixelArray) -> FloatArray:
        """The (smoothed) frame in noise units about the sky, ``float32 (H, W)``, a new array."""
        x = pixels.astype(np.float32)
        if self.smooth:
            x = _binomial3(x)
        sky, noise = sky_and_noise(x, self.sample_step)
        x -= sky
        x *= 1.0 / (noise * self.softening)
        return x

    def squash(self, z: FloatArray) -> FloatArray:
        """The model input from :meth:`standardise`'s output, computed in place."""
        floor = self.noise_floor / self.softening
        z -= np.clip(z, -floor, floor)
        np.arcsinh(z, out=z)
        z *= self.scale
        z += self.offset
        return np.clip(z, 0.0, 1.0, out=z)


def sky_and_noise(x: FloatArray, step: int) -> tuple[float, float]:
    """Sky level (median) and noise (1.4826 x MAD) on every ``step``-th row and column.

    Example:
        >>> sky_and_noise(np.array([[1.0, 2.0], [3.0, 10.0]], np.float32), 1)
        (2.5, 1.4826)

    """
    sample = x[::step, ::step]
    sky = float(np.median(sample))
    noise = 1.4826 * float(np.median(np.abs(sample - sky)))
    if not noise > 0.0:  # a flat or mostly constant frame
        noise = float(sample.std()) or 1.0
    return sky, noise


def _binomial3(x: FloatArray) -> FloatArray:
    """``[1, 2, 1] / 4`` along both axes, edges repeated."""
    p = np.pad(x, 1, mode="edge")
    v = p[:-2] + p[2:]
    v += 2.0 * p[1:-1]
    h = v[:, :-2] + v[:, 2:]
    h += 2.0 * v[:, 1:-1]
    h *= 1.0 / 16.0
    return h


#: A pixel is sharp when it exceeds this many times the mean of its 8 neighbours: a star
#: sampled with a FWHM of 2.2 pixels or more peaks at most about 2.3 times that mean.
SHARP_RATIO = 2.5


@dataclass(frozen=True, slots=True)
class PointStats:
    """Per-cell statistics of point sources, appended to the model's features.

    The model sees a smoothed frame through stages that average 3x3 neighbourhoods,
    which washes out single-pixel defects, and its ImageNet features barely tell a
    faint new point from the noise (frame AUROC on simulated nights: hot pixels 0.51,
    cosmic rays 0.74, asteroids 0.93). These numbers, from the frame in noise units
    (so exposure and sky level do not matter), fill in:

    * **Sharpness** (1 value): the cell's largest excess of a pixel over
      :data:`SHARP_RATIO` times the mean of its 8 neighbours, divided by that ratio,
      ``log1p``-compressed, times ``sharp_weight``. Hot pixels and cosmic rays are
      sharper than the point-spread function, stars are not: on star fields it
      stays at the noise's level except for those.
    * **Point flux** (4 values, the cell's 8-pixel quadrants): the smoothed frame of
      :meth:`Normalisation.standardise` above ``point_sigma`` noise units,
      ``log1p``-compressed per pixel (a bright star counts by its area more than by
      its flux, so seeing barely moves it), summed with triangular weights 16 pixels
      wide (a star that drifts across a quadrant boundary moves its weight
      gradually), ``log1p``-compressed again, times ``point_weight``. A faint new
      point on empty sky raises it from about zero, while a bright star's value
      barely moves when seeing or pointing change (with a square root instead,
      bright-star cells raised the false alarms of three tuning nights from
      0.12 / 0.03 / 0.08 to 0.20 / 0.04 / 0.09 per normal frame).
    * **Parity slots.** The four point values go to one of four slots chosen by the
      parity of the cell's row and column (zeros in the other three), so that a
      2 x 2 max-pooling of cells into one patch (``operators.framepipe.pool_patches``)
      keeps every cell's values instead of the largest of four.

    The weights set their share of the L2 distance next to the model's features
    (same-cell distances between reference frames of about 15 to 20). Measured with
    ``benchmarks/frames_quality.py`` on held-out simulated nights (README), and tuned on
    other seeds: frame AUROC from 0.75-0.89 to 0.98-1.0 on five of six nights and 0.89
    on one with a faint asteroid track, with 2 x 2 pooling (hot pixels and cosmic rays
    0.99-1.0); the sharpness alone gave 0.88-0.94,
    per-cell maxima instead of sums flagged stars drifting across cell edges, and
    sums over whole cells lost asteroids next to stars.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> frame = rng.normal(1000.0, 10.0, (64, 64))
        >>> frame[20, 40] += 300.0  # a hot pixel in cell (1, 2)
        >>> stats = PointStats()(frame.astype(np.uint16), 16)
        >>> stats.shape, int(stats[:, 0].argmax())
        ((16, 17), 6)

    """

    sharp_weight: float = 30.0
    point_weight: float = 7.5
    point_sigma: float = 3.5
    sample_step: int = 4

    #: Values per cell: the sharpness, then the 4 quadrant sums in each of 4 parity slots.
    DIM: ClassVar[int] = 17

    def __call__(
        self, pixels: PixelArray, stride: int, smoothed: FloatArray | None = None
    ) -> FloatArray:
        """The statistics of each ``stride``-pixel cell, ``float32 (cells, DIM)``, row-major.

        Args:
            pixels: The frame, ``uint16 (H, W)``.
            stride: Pixels per cell side (even).
            smoothed: :meth:`Normalisation.standardise` of the frame, if already at hand.

        """
        x = pixels.astype(np.float32)
        sky, noise = sky_and_noise(x, self.sample_step)
        x -= sky
        x *= 1.0 / noise
        if smoothed is None:
            smoothed = Normalisation(sample_step=self.sample_step).standardise(pixels)
        h, w = x.shape
        rows, cols = -(-h // stride), -(-w // stride)
        p = np.pad(x, 1, mode="edge")
        box = p[:-2] + p[1:-1]
        box += p[2:]
        box = box[:, :-2] + box[:, 1:-1] + box[:, 2:]
        box -= x  # the 8 neighbours' sum
        x -= (SHARP_RATIO / 8.0) * box
        excess = cell_max(x, stride) * (1.0 / SHARP_RATIO)
        out = np.zeros((rows * cols, self.DIM), np.float32)
        out[:, 0] = self.sharp_weight * np.log1p(np.maximum(excess, 0.0))
        flux = np.maximum(smoothed - self.point_sigma, 0.0)
        np.log1p(flux, out=flux)
        half = stride // 2
        sums = np.zeros((2 * rows, 2 * cols), np.float32)
        fine = tent_sums(tent_sums(flux, half, axis=0), half, axis=1)
        sums[: fine.shape[0], : fine.shape[1]] = fine
        quads = sums.reshape(rows, 2, cols, 2).transpose(0, 2, 1, 3).reshape(rows * cols, 4)
        cell_row, cell_col = np.divmod(np.arange(rows * cols), cols)
        first = 1 + 4 * (2 * (cell_row % 2) + cell_col % 2)
        where = first[:, None] + np.arange(4)
        out[np.arange(rows * cols)[:, None], where] = self.point_weight * np.log1p(quads)
        return out


def cell_max(x: FloatArray, stride: int) -> FloatArray:
    """Largest value of each ``stride``-pixel cell, row-major (edge cells may be smaller)."""
    by_rows = np.maximum.reduceat(x, np.arange(0, x.shape[0], stride), axis=0)
    return np.maximum.reduceat(by_rows, np.arange(0, x.shape[1], stride), axis=1).ravel()


def tent_sums(x: FloatArray, step: int, axis: int) -> FloatArray:
    """Sums of ``x`` along ``axis`` with triangular weights ``2 * step`` wide, one per block.

    Block ``i`` of ``step`` pixels has its centre at ``(i + 0.5) * step - 0.5``; a pixel
    gives ``1 - d / step`` of itself to the nearest centre (``d`` its distance) and the
    rest to the next one on its side, so each pixel's weights sum to 1; beyond the
    outermost centres a pixel goes wholly to its own. Elementwise sums, no BLAS (whose
    threads cost more than the work on a frame).

    Example:
        >>> tent_sums(np.eye(8, dtype=np.float32)[0:1].T * 8.0, 4, axis=0).ravel().tolist()
        [8.0, 0.0]
        >>> tent_sums(np.arange(8, dtype=np.float32), 4, axis=0).round(3).tolist()
        [6.75, 21.25]

    """
    n = x.shape[axis]
    blocks = -(-n // step)
    k = np.arange(n)
    own = k // step
    u = (k - ((own + 0.5) * step - 0.5)) / step  # in (-0.5, 0.5)
    shape = [1] * x.ndim
    shape[axis] = n
    near = (1.0 - np.abs(u)).astype(np.float32).reshape(shape)
    far = np.abs(u).astype(np.float32).reshape(shape)
    starts = np.arange(0, n, step)
    out = np.add.reduceat(x * near, starts, axis=axis)
    spill = x * far
    lower = np.add.reduceat(np.where((u < 0).reshape(shape), spill, 0.0), starts, axis=axis)
    upper = np.add.reduceat(np.where((u > 0).reshape(shape), spill, 0.0), starts, axis=axis)
    # Block i's lower half spills to block i - 1 (block 0's stays), its upper half to i + 1.
    index = [slice(None)] * x.ndim

    def at(sl: slice) -> tuple[slice, ...]:
        index[axis] = sl
        return tuple(index)

    out[at(slice(0, blocks - 1))] += lower[at(slice(1, blocks))]
    out[at(slice(0, 1))] += lower[at(slice(0, 1))]
    out[at(slice(1, blocks))] += upper[at(slice(0, blocks - 1))]
    out[at(slice(blocks - 1, blocks))] += upper[at(slice(blocks - 1, blocks))]
    return out.astype(np.float32, copy=False)
