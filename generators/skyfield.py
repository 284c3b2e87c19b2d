"""The sky and optics model of the telescope simulator: star fields, real base images, PSFs.

Pure numpy, no I/O but reading the two images that ship inside packages:

* ``"m13"``: astropy's ``m13.fits`` (a 300x300 SkyView image of the globular
  cluster M13 at 1"/pixel), shipped as test data in the astropy wheel under
  ``astropy/io/fits/hdu/compressed/tests/data/``.
* ``"hubble"``: scikit-image's ``hubble_deep_field.jpg`` (872x1000, colour),
  shipped in ``skimage/data/`` and read here with Pillow, so nothing is ever
  downloaded (``skimage.data.hubble_deep_field()`` would fetch it when absent).

Coordinates are pixels: a target's sky is fixed in *sky pixels* (a tangent
plane at 1 pixel per pixel), and a frame shows it shifted by the pointing
offset ``(dx, dy)``: a source at sky ``(x, y)`` lands on pixel ``(x - dx, y - dy)``.

Example:
    >>> import numpy as np
    >>> psf = Psf(fwhm=3.0)
    >>> img = splat((30, 40), np.array([20.0]), np.array([12.0]), np.array([1000.0]), psf)
    >>> round(float(img.sum())), divmod(int(img.argmax()), 40)
    (1000, (12, 20))

"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "BASE_FIELDS",
    "FIELDS",
    "Psf",
    "StarField",
    "altaz",
    "base_image",
    "base_path",
    "blur",
    "draw_segment",
    "resample",
    "smooth_field",
    "splat",
]

Image = npt.NDArray[np.float64]
#: Field kinds: synthetic stars, or a real image as the base of the sky.
FIELDS = ("synthetic", "m13", "hubble")
#: Real images: where they ship and the sky position of their centre (RA, Dec degrees).
BASE_FIELDS: dict[str, tuple[str, str, float, float]] = {
    "m13": ("astropy", "io/fits/hdu/compressed/tests/data/m13.fits", 250.4226, 36.4602),
    "hubble": ("skimage", "data/hubble_deep_field.jpg", 189.2058, 62.2161),
}
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True, slots=True)
class Psf:
    """A point-spread function: a Moffat profile, or a defocused donut.

    Attributes:
        fwhm: Full width at half maximum of the seeing, pixels.
        beta: Moffat exponent (about 3 for ground-based seeing).
        donut: Radius of the defocused ring, pixels (0: in focus, Moffat).
        obstruction: Inner radius of the ring as a fraction of ``donut``
            (the secondary mirror's shadow).
        extent: Half-size of a stamp, pixels (0: 3 FWHM in focus, the ring
            plus 3 sigma defocused); a source is drawn only within it.

    Example:
        >>> Psf(3.0).radius, Psf(3.0, donut=8.0).radius
        (9, 12)

    """

    fwhm: float
    beta: float = 3.0
    donut: float = 0.0
    obstruction: float = 0.4
    extent: int = 0

    @property
    def sigma(self) -> float:
        """The Gaussian sigma of the seeing, pixels."""
        return self.fwhm / _FWHM_PER_SIGMA

    @property
    def radius(self) -> int:
        """Half-size of a stamp: ``extent``, or 3 FWHM in focus, the ring plus 3 sigma defocused."""
        if self.extent > 0:
            return self.extent
        if self.donut > 0:
            return math.ceil(self.donut + 3.0 * self.sigma)
        return math.ceil(3.0 * self.fwhm)

    def stamps(self, fx: Image, fy: Image) -> Image:
        """Unit-flux stamps ``(n, 2r+1, 2r+1)`` of sources ``(fx, fy)`` off pixel centres."""
        u = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        dx = u[None, None, :] - fx[:, None, None]
        dy = u[None, :, None] - fy[:, None, None]
        r2 = dx * dx + dy * dy
        if self.donut > 0:
            r = np.sqrt(r2)
            s = max(self.sigma, 0.5)
            outer = 1.0 / (1.0 + np.exp((r - self.donut) / s))
            inner = 1.0 / (1.0 + np.exp((self.obstruction * self.donut - r) / s))
            prof = outer * inner
        else:
            alpha2 = (self.fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / self.beta) - 1.0))) ** 2
            prof = (1.0 + r2 / alpha2) ** -self.beta
        out: Image = prof / prof.sum(axis=(1, 2), keepdims=True)
        return out

    def peak(self) -> float:
        """Fraction of a centred source's flux in its brightest pixel."""
        return float(self.stamps(np.zeros(1), np.zeros(1)).max())


def splat(shape: tuple[int, int], x: Image, y: Image, flux: Image, psf: Psf) -> Image:
    """An image of point sources at pixel positions ``(x, y)`` with total ``flux`` each.

    Sources whose stamp misses the image are left out; flux falling outside is lost.
    """
    h, w = shape
    r = psf.radius
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    keep = (ix + r >= 0) & (ix - r < w) & (iy + r >= 0) & (iy - r < h)
    if not keep.any():
        return np.zeros(shape)
    ix, iy = ix[keep], iy[keep]
    stamps = psf.stamps(x[keep] - ix, y[keep] - iy) * flux[keep, None, None]
    u = np.arange(-r, r + 1)
    rows = iy[:, None, None] + u[None, :, None]
    cols = ix[:, None, None] + u[None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = rows[valid] * w + cols[valid]
    summed = np.bincount(flat, weights=stamps[valid], minlength=h * w)
    return np.asarray(summed, dtype=np.float64).reshape(shape)


def draw_segment(
    image: Image,
    p0: tuple[float, float],
    p1: tuple[float, float],
    peak: float,
    sigma: float,
    box: tuple[int, int, int, int],
) -> None:
    """Add a line segment of Gaussian cross-section (``peak`` on its axis) inside ``box``.

    Args:
        image: Where to add it.
        p0: One end ``(x, y)``.
        p1: The other end.
        peak: Value on the axis.
        sigma: Gaussian sigma of the cross-section, pixels.
        box: ``(x0, y0, x1, y1)``: only pixels inside are drawn (the ground truth box).

    Example:
        >>> img = np.zeros((5, 9))
        >>> draw_segment(img, (1.0, 2.0), (7.0, 2.0), 10.0, 0.7, (0, 0, 9, 5))
        >>> img[2].round(1).tolist()
        [3.6, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 3.6]

    """
    x0, y0, x1, y1 = box
    xs = np.arange(x0, x1, dtype=np.float64)[None, :] - p0[0]
    ys = np.arange(y0, y1, dtype=np.float64)[:, None] - p0[1]
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    length2 = max(vx * vx + vy * vy, 1e-12)
    t = np.clip((xs * vx + ys * vy) / length2, 0.0, 1.0)  # nearest point of the segment
    d2 = (xs - t * vx) ** 2 + (ys - t * vy) ** 2
    image[y0:y1, x0:x1] += peak * np.exp(-d2 / (2.0 * sigma * sigma))


def resample(base: Image, xs: Image, ys: Image) -> Image:
    """Bilinear samples of ``base`` at columns ``xs`` and rows ``ys`` (a separable grid).

    Positions outside the image take the value of its nearest edge.

    Example:
        >>> resample(np.array([[0.0, 2.0], [4.0, 6.0]]), np.array([0.5]), np.array([0.0, 0.5]))
        array([[1.],
               [3.]])

    """
    h, w = base.shape
    xs = np.clip(xs, 0.0, w - 1.0)
    ys = np.clip(ys, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(xs).astype(np.int64), w - 2)
    y0 = np.minimum(np.floor(ys).astype(np.int64), h - 2)
    wx = xs - x0
    wy = (ys - y0)[:, None]
    # Columns first, on only the rows needed, then rows: two contiguous gathers.
    lo, hi = int(y0.min()), int(y0.max()) + 2
    rows = np.ascontiguousarray(base[lo:hi])
    cols = np.take(rows, x0, axis=1) * (1.0 - wx) + np.take(rows, x0 + 1, axis=1) * wx
    out: Image = (
        np.take(cols, y0 - lo, axis=0) * (1.0 - wy) + np.take(cols, y0 + 1 - lo, axis=0) * wy
    )
    return out


def blur(image: Image, sigma: float) -> Image:
    """A separable Gaussian blur of ``sigma`` pixels (edges repeated); ``sigma <= 0.1``: a copy.

    Example:
        >>> img = np.zeros((9, 9)); img[4, 4] = 1.0
        >>> out = blur(img, 1.0)
        >>> round(float(out.sum()), 6), bool(out[4, 4] < 0.2)
        (1.0, True)

    """
    if sigma <= 0.1:
        return image.copy()
    r = math.ceil(3.0 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = image
    for axis in (0, 1):
        pad = [(r, r) if a == axis else (0, 0) for a in (0, 1)]
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, weight in enumerate(k):
            acc += weight * (padded[i : i + n] if axis == 0 else padded[:, i : i + n])
        out = acc
    return out


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], modes: int = 3) -> Image:
    """A smooth random field of zero mean and unit standard deviation (clouds, patchy sky).

    A sum of the lowest ``modes`` spatial frequencies in each direction with
    random phases and amplitudes falling as ``1 / k**1.5``, computed as outer
    products (no interpolation kinks).

    Example:
        >>> f = smooth_field(np.random.default_rng(1), (50, 80))
        >>> f.shape, abs(float(f.mean())) < 1e-9, round(float(f.std()), 6)
        ((50, 80), True, 1.0)

    """
    h, w = shape
    xs = np.arange(w) / w
    ys = np.arange(h) / h
    out = np.zeros(shape)
    for kx in range(modes + 1):
        for ky in range(-modes, modes + 1):
            if kx == 0 and ky <= 0:
                continue
            amp = rng.standard_normal() / math.hypot(kx, ky) ** 1.5
            phase = rng.uniform(0.0, 2.0 * math.pi)
            # cos(a + b + phase) = cos(a + phase) cos(b) - sin(a + phase) sin(b)
            a = 2.0 * math.pi * kx * xs + phase
            b = 2.0 * math.pi * ky * ys
            out += amp * (np.outer(np.cos(b), np.cos(a)) - np.outer(np.sin(b), np.sin(a)))
    out -= out.mean()
    return out / max(float(out.std()), 1e-12)


@dataclass(frozen=True, slots=True, eq=False)
class StarField:
    """A fixed field of stars in sky pixels with a power-law brightness distribution.

    Attributes:
        x: Sky column of each star.
        y: Sky row of each star.
        rate: Flux of each star, electrons per second.

    """

    x: Image
    y: Image
    rate: Image

    @classmethod
    def draw(
        cls,
        rng: np.random.Generator,
        count: int,
        extent: tuple[float, float, float, float],
        rate: tuple[float, float],
        index: float,
    ) -> StarField:
        """``count`` stars uniform over ``extent`` (x0, y0, x1, y1), ``dN/dF ~ F**-index``.

        Fluxes follow a power law truncated to ``rate`` (lo, hi): most stars
        are faint, a few are bright enough to saturate.

        Example:
            >>> f = StarField.draw(np.random.default_rng(0), 500, (0, 0, 100, 100), (1, 1e4), 2.0)
            >>> bool(np.median(f.rate) < 10 < f.rate.max() <= 1e4)
            True

        """
        x0, y0, x1, y1 = extent
        x = rng.uniform(x0, x1, count)
        y = rng.uniform(y0, y1, count)
        lo, hi = rate
        u = rng.random(count)
        a = 1.0 - index
        if abs(a) < 1e-9:  # dN/dF ~ 1/F: uniform in log F
            flux = lo * (hi / lo) ** u
        else:
            flux = (lo**a + u * (hi**a - lo**a)) ** (1.0 / a)
        return cls(x, y, flux)


def base_path(kind: str) -> Path:
    """Where the real image of field ``kind`` ships (see the module docstring).

    Raises:
        FileNotFoundError: naming the package to install when it is absent.

    """
    package, relative, _, _ = BASE_FIELDS[kind]
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"field {kind!r} needs {package}: pip install {package}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"field {kind!r}: this {package} does not ship {path}")
    return path


@lru_cache(maxsize=4)
def base_image(kind: str) -> Image:
    """The real image of field ``kind``, background 0, its 99.9th percentile 1 (read-only).

    Example:
        >>> img = base_image("m13")
        >>> img.shape, float(img.min()), round(float(np.percentile(img, 99.9)), 3)
        ((300, 300), 0.0, 1.0)

    """
    path = base_path(kind)
    if kind == "m13":
        from operators.frameimage import read_fits

        pixels, _ = read_fits(path.read_bytes())
        raw = pixels.astype(np.float64)
    else:
        from PIL import Image as PilImage

        with PilImage.open(path) as im:
            raw = np.asarray(im.convert("L"), dtype=np.float64)
    sky = float(np.median(raw))
    top = float(np.percentile(raw, 99.9))
    out = np.clip((raw - sky) / max(top - sky, 1e-9), 0.0, None)
    out.flags.writeable = False
    return out


def altaz(
    ra_deg: float, dec_deg: float, lat_deg: float, lon_deg: float, ut: datetime
) -> tuple[float, float]:
    """Altitude and azimuth (degrees, azimuth from north through east) of a sky position.

    Uses the mean sidereal time (good to a fraction of a degree; no
    precession, nutation or refraction), which is all a header needs.

    Example:
        >>> from datetime import datetime, timezone
        >>> ut = datetime(2024, 9, 1, 20, tzinfo=timezone.utc)
        >>> [round(v, 1) for v in altaz(250.4226, 36.4602, 48.4, 8.9, ut)]
        [58.6, 262.7]

    """
    jd = ut.timestamp() / 86_400.0 + 2_440_587.5
    gmst = 280.46061837 + 360.98564736629 * (jd - 2_451_545.0)
    ha = math.radians((gmst + lon_deg - ra_deg) % 360.0)
    dec, lat = math.radians(dec_deg), math.radians(lat_deg)
    sin_alt = math.sin(dec) * math.sin(lat) + math.cos(dec) * math.cos(lat) * math.cos(ha)
    alt = math.asin(max(-1.0, min(1.0, sin_alt)))
    az = math.atan2(
        -math.cos(dec) * math.sin(ha),
        math.sin(dec) * math.cos(lat) - math.cos(dec) * math.sin(lat) * math.cos(ha),
    )
    return math.degrees(alt), math.degrees(az) % 360.0
