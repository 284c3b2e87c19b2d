"""Difference imaging: a frame minus its target's reference image, through a matched filter.

Astronomers find faint moving points by subtracting a reference image of the
same field from a new frame and filtering the difference with the point-spread
function. :class:`ReferenceImage` does this per frame, in numpy, for the frame
flow's second channel next to the patch distances (:mod:`operators.framescore`):

* **Matched filter** (:func:`matched_filter`): the frame in noise units (sky
  median and MAD noise), correlated with a Gaussian of :attr:`DiffConfig.psf_sigma`
  pixels, scaled so that white noise comes out with unit variance. A point with a
  peak of 3.5 sky sigmas and a FWHM of 3 pixels comes out near 15 sigmas, where
  the 3 x 3 smoothing of the point statistics leaves it near 5 noise units.
* **Reference** (:func:`build_reference`): the references' filtered frames,
  aligned on the first one by the median centroid shift of its brightest
  stars and resampled bilinearly (:mod:`operators.framealign`), then their
  per-pixel median.
* **Difference**: each frame's tracking shift is measured the same way against
  the reference's stars, the reference is resampled onto the frame and subtracted.
  Seeing changes leave residuals proportional to a star's brightness, so the
  difference is divided by ``sqrt(1 + pi / (2 n) + (bright_share * b)^2)``
  (the first two terms: the frame's noise and that of a median of ``n``
  frames), where ``b`` is the reference or, if more, ``halo_share`` times its
  largest value within ``halo_radius`` pixels (a bright star's wings change
  with the seeing far out, where the reference itself is faint). Bright stars'
  residuals stay near the noise, while a new point on empty sky keeps its full
  signal-to-noise.
* **Coverage**: pixels whose reference position lies within
  :attr:`DiffConfig.edge_margin` of where every reference saw the sky are set
  to 0: a star just outside the references' field shows its wings in a frame
  shifted towards it, and would look new.

The result is in sigmas of the filtered noise; :meth:`ReferenceImage.cell_max`
gives the largest value of each grid cell (positive: something appeared;
vanished sources are not scored). Hot pixels are weak here (a single pixel is
narrower than the filter) and are left to the point statistics' sharpness.

Example:
    >>> rng = np.random.default_rng(0)
    >>> yy, xx = np.mgrid[:96, :128]
    >>> star = 3000.0 * np.exp(-((yy - 40.3) ** 2 + (xx - 60.6) ** 2) / 3.0)
    >>> frames = [rng.normal(1000.0, 10.0, (96, 128)) + star for _ in range(6)]
    >>> ref, loo = build_reference([f.astype(np.uint16) for f in frames], stride=32)
    >>> loo.shape, ref.shape
    ((6, 12), (96, 128))
    >>> new = frames[0].copy()
    >>> new += 40.0 * np.exp(-((yy - 70.0) ** 2 + (xx - 20.0) ** 2) / 3.0)  # 4 sigmas
    >>> cells = ref.cell_max(new.astype(np.uint16), 32)
    >>> int(cells.argmax()), bool(cells.max() > 6.0 > float(np.delete(cells, 8).max()))
    (8, True)

"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from operators.framealign import centroids, find_stars, measure_shift, shifted
from operators.frames import PixelArray
from operators.pointstats import cell_max, sky_and_noise

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_MAGIC = b"VGREF1"


@dataclass(frozen=True, slots=True)
class DiffConfig:
    """How frames are differenced (see the module docstring).

    Attributes:
        psf_sigma: Sigma of the Gaussian filter, pixels (1.3: a FWHM of 3.1, the
            middle of the seeing range the simulator draws from).
        bright_share: Share of the reference's filtered value taken as extra noise
            (seeing and sub-pixel alignment residuals of stars).
        edge_margin: Pixels inside the references' common field where the difference
            starts.
        halo_share: Share of a star's filtered peak taken as its brightness out to
            ``halo_radius`` pixels.
        reach: Pixels beyond its edges that a cell's largest difference looks (a
            point on a cell's border marks both cells, as the point statistics'
            triangular weights do).
        stars: Brightest stars whose centroids give the tracking shift.
        star_sigmas: Least filtered peak of such a star, sigmas.
        window: Half-size of a star's centroid window, pixels (the largest shift
            measured).
        sample_step: Every ``sample_step``-th row and column gives sky and noise.

    """

    psf_sigma: float = 1.3
    bright_share: float = 0.3
    edge_margin: int = 8
    halo_share: float = 0.02
    halo_radius: int = 10
    reach: int = 4
    stars: int = 40
    star_sigmas: float = 20.0
    window: int = 7
    sample_step: int = 4

    def __post_init__(self) -> None:
        if not (self.psf_sigma > 0.0 and self.bright_share >= 0.0 and self.edge_margin >= 0):
            msg = (
                "difference: expected psf_sigma > 0, bright_share >= 0 and edge_margin >= 0, "
                f"got {self.psf_sigma}, {self.bright_share}, {self.edge_margin}"
            )
            raise ValueError(msg)
        if not (self.halo_share >= 0.0 and self.halo_radius >= 0):
            msg = (
                "difference: expected halo_share >= 0 and halo_radius >= 0, got "
                f"{self.halo_share}, {self.halo_radius}"
            )
            raise ValueError(msg)
        if self.reach < 0:
            msg = f"difference: expected reach >= 0, got {self.reach}"
            raise ValueError(msg)
        if self.stars < 1 or self.window < 1 or self.sample_step < 1:
            msg = (
                "difference: expected stars, window and sample_step >= 1, got "
                f"{self.stars}, {self.window}, {self.sample_step}"
            )
            raise ValueError(msg)


def matched_filter(pixels: PixelArray, cfg: DiffConfig) -> F32:
    """The frame in noise units, correlated with the PSF: unit variance on pure noise.

    Example:
        >>> x = np.random.default_rng(1).normal(1000.0, 20.0, (200, 200)).astype(np.uint16)
        >>> round(float(matched_filter(x, DiffConfig())[20:-20, 20:-20].std()), 1)
        1.0

    """
    x = pixels.astype(np.float32)
    sky, noise = sky_and_noise(x, cfg.sample_step)
    x -= sky
    radius = max(1, math.ceil(3.0 * cfg.psf_sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / cfg.psf_sigma) ** 2)
    k /= k.sum()
    # Separable: the filtered noise's standard deviation is sum(k**2) per axis, squared.
    gain = np.float32(1.0 / (noise * float((k**2).sum())))
    kernel = k.astype(np.float32)
    y: F32 = ndimage.correlate1d(x, kernel, axis=0, mode="constant")
    y = ndimage.correlate1d(y, kernel, axis=1, mode="constant")
    y *= gain
    return y


@dataclass(frozen=True, slots=True, eq=False)
class ReferenceImage:
    """A target's filtered reference image and what differencing a frame against it needs.

    Attributes:
        padded: The median of the aligned, filtered references (noise units),
            padded by ``pad`` pixels of edge values, ``float32``.
        pad: Padding, pixels (the largest shift resampled).
        bright: The brightness ``b`` of the noise model, padded likewise.
        stars: Window centres of the alignment stars, ``(n, 2)`` pixel ``(row, column)``.
        star_centroids: Their centroids in the reference, ``(n, 2)``.
        field: ``(row0, row1, col0, col1)``: the part of the reference every
            reference frame covered (end exclusive).
        references: Frames in the median.
        cfg: The settings it was built with (frames are differenced with the same).

    """

    padded: F32
    pad: int
    bright: F32
    stars: I64
    star_centroids: F64
    field: tuple[int, int, int, int]
    references: int
    cfg: DiffConfig

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of the frames it serves."""
        h, w = self.padded.shape
        return h - 2 * self.pad, w - 2 * self.pad

    @property
    def image(self) -> F32:
        """The filtered reference, ``(height, width)`` (a view)."""
        p = self.pad
        return self.padded[p:-p, p:-p]

    def difference(self, pixels: PixelArray) -> F32:
        """The frame's filtered difference in sigmas, 0 outside the references' field.

        Raises:
            ValueError: the frame's size differs from the references'.

        """
        if pixels.shape != self.shape:
            msg = f"difference: expected a frame of {self.shape}, got {pixels.shape}"
            raise ValueError(msg)
        y = matched_filter(pixels, self.cfg)
        shift = measure_shift(y, self.stars, self.star_centroids, self.cfg.window)
        return _difference(
            y, (self.padded, self.bright), self.pad, self.references, shift, self.field, self.cfg
        )

    def cell_max(self, pixels: PixelArray, stride: int) -> F32:
        """Largest difference in each ``stride``-pixel cell and ``cfg.reach`` about it."""
        return reach_max(self.difference(pixels), stride, self.cfg.reach)

    def to_bytes(self) -> bytes:
        """The image as compact bytes (``float16`` pixels, zlib), for a store.

        Example:
            >>> ref = ReferenceImage.from_bytes(_example().to_bytes())
            >>> ref.shape, ref.field, ref.references
            ((20, 30), (1, 19, 0, 30), 5)

        """
        head = {
            "shape": list(self.shape),
            "pad": self.pad,
            "stars": self.stars.tolist(),
            "star_centroids": self.star_centroids.tolist(),
            "field": list(self.field),
            "references": self.references,
            "cfg": asdict(self.cfg),
        }
        text = json.dumps(head, separators=(",", ":")).encode()
        body = zlib.compress(self.image.astype(np.float16).tobytes(), 6)
        return _MAGIC + len(text).to_bytes(4, "big") + text + body

    @classmethod
    def from_bytes(cls, data: bytes) -> ReferenceImage:
        """Rebuild an image from :meth:`to_bytes` output.

        Raises:
            ValueError: the bytes are not such an image.

        """
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
            msg = f"reference image: expected bytes starting {_MAGIC!r}, got {data[:8]!r}"
            raise ValueError(msg)
        start = len(_MAGIC) + 4
        size = int.from_bytes(data[len(_MAGIC) : start], "big")
        head = json.loads(data[start : start + size])
        h, w = head["shape"]
        pixels = np.frombuffer(zlib.decompress(data[start + size :]), np.float16)
        if pixels.size != h * w:
            msg = f"reference image: expected {h}x{w} pixels, got {pixels.size}"
            raise ValueError(msg)
        pad = int(head["pad"])
        image = np.pad(pixels.reshape(h, w).astype(np.float32), pad, mode="edge")
        cfg = DiffConfig(**head["cfg"])
        return cls(
            padded=image,
            pad=pad,
            bright=brightness(image, cfg),
            stars=np.asarray(head["stars"], np.int64).reshape(-1, 2),
            star_centroids=np.asarray(head["star_centroids"], np.float64).reshape(-1, 2),
            field=(
                int(head["field"][0]),
                int(head["field"][1]),
                int(head["field"][2]),
                int(head["field"][3]),
            ),
            references=int(head["references"]),
            cfg=cfg,
        )


def build_reference(
    frames: Sequence[PixelArray], stride: int, cfg: DiffConfig | None = None
) -> tuple[ReferenceImage, F32]:
    """A target's reference image, and each reference's cell maxima against the others.

    The leave-one-out maxima (reference ``i`` differenced against the median of the
    others, ``(references, cells)`` for ``stride``-pixel cells) calibrate the channel
    as the patch distances' leave-one-out search does.

    Raises:
        ValueError: fewer than 3 frames, or frames of different sizes.

    """
    cfg = cfg or DiffConfig()
    shapes = {f.shape for f in frames}
    if len(frames) < 3 or len(shapes) != 1:
        msg = (
            f"reference image: expected >= 3 frames of one size, got {len(frames)} of sizes "
            f"{sorted(shapes)}"
        )
        raise ValueError(msg)
    shape = (int(frames[0].shape[0]), int(frames[0].shape[1]))
    pad = cfg.window + 2
    filtered = [matched_filter(f, cfg) for f in frames]
    anchor = find_stars(filtered[0], cfg.stars, cfg.star_sigmas, cfg.window)
    anchor_c = centroids(filtered[0], anchor, cfg.window)
    first = [measure_shift(y, anchor, anchor_c, cfg.window) for y in filtered]
    aligned = np.stack(
        [
            shifted(np.pad(y, pad, mode="edge"), pad, shape, -dy, -dx)
            for y, (dy, dx) in zip(filtered, first, strict=True)
        ]
    )
    n = len(frames)
    mid = (n - 1) // 2
    kth = sorted({k for k in (mid - 1, mid, mid + 1, mid + 2, n // 2) if 0 <= k < n})
    ordered = np.partition(aligned, kth, axis=0)
    median = ordered[mid] if n % 2 else 0.5 * (ordered[mid] + ordered[n // 2])
    stars = find_stars(median, cfg.stars, cfg.star_sigmas, cfg.window)
    star_c = centroids(median, stars, cfg.window)
    shifts = np.array([measure_shift(y, stars, star_c, cfg.window) for y in filtered])
    ys, xs = np.array(first)[:, 0], np.array(first)[:, 1]
    field = (
        math.ceil(max(0.0, -float(ys.min()))),
        shape[0] - math.ceil(max(0.0, float(ys.max()))),
        math.ceil(max(0.0, -float(xs.min()))),
        shape[1] - math.ceil(max(0.0, float(xs.max()))),
    )
    padded = np.pad(median.astype(np.float32), pad, mode="edge")
    ref = ReferenceImage(
        padded=padded,
        pad=pad,
        bright=brightness(padded, cfg),
        stars=stars,
        star_centroids=star_c,
        field=field,
        references=n,
        cfg=cfg,
    )
    loo = []
    for i in range(n):
        others = np.pad(_median_without(ordered, aligned[i], n), pad, mode="edge")
        q = _difference(
            filtered[i],
            (others, brightness(others, cfg)),
            pad,
            n - 1,
            (float(shifts[i, 0]), float(shifts[i, 1])),
            field,
            cfg,
        )
        loo.append(reach_max(q, stride, cfg.reach))
    return ref, np.stack(loo)


def reach_max(x: F32, stride: int, reach: int) -> F32:
    """Largest value of each ``stride``-pixel cell and ``reach`` pixels about it, row-major.

    Example:
        >>> x = np.zeros((8, 8), np.float32); x[3, 4] = 1.0  # cell (0, 1) of 4, next to (0, 0)
        >>> reach_max(x, 4, 0).tolist(), reach_max(x, 4, 1).tolist()
        ([0.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0])

    """
    if reach == 0:
        return cell_max(x, stride)
    block = math.gcd(stride, reach)
    k, e = stride // block, reach // block
    fine = cell_max(x, block).reshape(-(-x.shape[0] // block), -(-x.shape[1] // block))
    rows, cols = -(-x.shape[0] // stride), -(-x.shape[1] // stride)
    padded = np.full((rows * k + 2 * e, cols * k + 2 * e), -np.inf, np.float32)
    padded[e : e + fine.shape[0], e : e + fine.shape[1]] = fine
    view = np.lib.stride_tricks.sliding_window_view
    by_rows = view(padded, k + 2 * e, axis=0)[::k].max(axis=-1)
    out: F32 = view(by_rows, k + 2 * e, axis=1)[:, ::k].max(axis=-1)
    return out.ravel()


def brightness(image: F32, cfg: DiffConfig) -> F32:
    """The noise model's brightness: the image or ``halo_share`` of its local maximum, >= 0.

    Example:
        >>> img = np.zeros((1, 9), np.float32); img[0, 4] = 100.0
        >>> brightness(img, DiffConfig(halo_share=0.1, halo_radius=2))[0].tolist()
        [0.0, 0.0, 10.0, 10.0, 100.0, 10.0, 10.0, 0.0, 0.0]

    """
    b = np.maximum(image, 0.0)
    if cfg.halo_share > 0.0 and cfg.halo_radius > 0:
        halo = ndimage.maximum_filter(b, size=2 * cfg.halo_radius + 1, mode="nearest")
        halo *= np.float32(cfg.halo_share)
        np.maximum(b, halo, out=b)
    return b


def _median_without(ordered: F32, own: F32, n: int) -> F32:
    """Per pixel, the median of ``n`` values without ``own`` (one of them).

    ``ordered`` is partitioned at the ranks about the middle, so that
    ``ordered[j]`` is the ``j``-th smallest there. Without ``own``, the ``j``-th
    smallest of the others is ``ordered[j]`` when ``own`` ranks above ``j``
    (``own >= ordered[j + 1]``), else ``ordered[j + 1]``.
    """

    def others(j: int) -> F32:
        out: F32 = np.where(own >= ordered[j + 1], ordered[j], ordered[j + 1])
        return out

    m = n - 1
    if m % 2:
        return others((m - 1) // 2)
    return 0.5 * (others(m // 2 - 1) + others(m // 2))


def _difference(
    filtered: F32,
    reference: tuple[F32, F32],
    pad: int,
    references: int,
    shift: tuple[float, float],
    field: tuple[int, int, int, int],
    cfg: DiffConfig,
) -> F32:
    """The filtered frame minus the shifted reference, in sigmas, 0 outside the field.

    ``reference`` is the padded reference image and its padded brightness.
    """
    dy, dx = shift
    shape = (int(filtered.shape[0]), int(filtered.shape[1]))
    diff = filtered - shifted(reference[0], pad, shape, dy, dx)
    ref = shifted(reference[1], pad, shape, dy, dx)
    ref *= np.float32(cfg.bright_share)
    ref *= ref
    ref += np.float32(1.0 + math.pi / (2.0 * references))
    np.sqrt(ref, out=ref)
    diff /= ref
    m = cfg.edge_margin
    r0 = max(0, math.ceil(field[0] + m + dy))
    r1 = min(shape[0], math.floor(field[1] - m + dy))
    c0 = max(0, math.ceil(field[2] + m + dx))
    c1 = min(shape[1], math.floor(field[3] - m + dx))
    out = np.zeros_like(diff)
    if r0 < r1 and c0 < c1:
        out[r0:r1, c0:c1] = diff[r0:r1, c0:c1]
    return out


def _example() -> ReferenceImage:
    """A tiny image for the doctests."""
    return ReferenceImage(
        padded=np.zeros((24, 34), np.float32),
        pad=2,
        bright=np.zeros((24, 34), np.float32),
        stars=np.zeros((0, 2), np.int64),
        star_centroids=np.zeros((0, 2), np.float64),
        field=(1, 19, 0, 30),
        references=5,
        cfg=DiffConfig(),
    )
