"""Seeded, labelled simulator of telescope frames: sequences of 16-bit images of sky fields.

Each camera (ids ``cameras``, the message key) takes one frame every
``interval_s`` seconds of event time, observing its targets in turn
(``sequence_len`` frames each). A target's sky is fixed (``fields``): a
synthetic star field (``"synthetic"``: stars of power-law brightness with a
Moffat PSF) or a real image that ships inside a package (``"m13"``,
``"hubble"``; see :mod:`generators.skyfield`). Frames show it with a sky
background and gentle gradient, seeing that changes from frame to frame,
small tracking shifts, shot and read noise, bias, gain and 16-bit saturation.

The first ``references`` frames of each camera and target are clean and
usable (the reference frames a flow indexes). After them, frames may be:

* **anomalous**, with a ground-truth :class:`~operators.frames.Box` per
  injected anomaly: ``asteroid`` (a faint point moving between consecutive
  frames), ``satellite_trail`` (a PSF-wide line across part of the frame),
  ``hot_pixel`` (one to three adjacent pixels), ``hot_column`` (a bright
  column segment), ``cosmic_ray`` (sharp hits of one to four pixels, several
  per frame). Amplitudes are in units of the sky noise and default to
  realistic ranges: an asteroid is 3 to 25 sigma at its peak, about the
  brightness of the faint to middling stars of the field (the median star
  detected at 5 sigma peaks at about 11), not a beacon.
* **unusable** (``Frame.unusable`` set, no anomaly drawn), with the cue in the
  header so that a flow can route them away: ``clouds`` (stars dimmed and
  patchy, sky brighter, weather 20-60), ``defocus`` (a donut PSF, focus 150-600
  steps off ``nominal_focus``), ``weather`` (weather 0-35). Usable frames have
  weather 75-100 and focus within a few steps of nominal.

Example:
    >>> cfg = TelescopeSimConfig(count=3, width=64, height=48, references=1, stars=20)
    >>> [(f.frame_id, f.shape, f.pixels.dtype.name) for f in iter_frames(cfg)]
    [('cam1-000000', (48, 64), 'uint16'), ('cam1-000001', (48, 64), 'uint16'), \
('cam1-000002', (48, 64), 'uint16')]
    >>> key, value = next(iter_messages(cfg))
    >>> key, value[:4]
    (b'cam1', b'VGFR')

"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from generators.framerender import Sky, make_frame
from generators.framesim import FramePlan, plan_frames
from generators.simkit import SimConfigError, settings_from_env
from generators.skyfield import FIELDS
from operators.config import Env
from operators.framecodec import encode_frame, write_fits
from operators.frames import ANOMALY_KINDS, UNUSABLE_KINDS, Frame

__all__ = [
    "SETTING_HELP",
    "FrameStream",
    "TelescopeSimConfig",
    "iter_frames",
    "iter_messages",
]

_WHO = "telescope simulator"
_MIN_START = datetime(2000, 1, 1, tzinfo=UTC)
_MAX_START = datetime(2100, 1, 1, tzinfo=UTC)

Range = tuple[float, float]
LenRange = tuple[int, int]

#: One line of help per setting (``vigil-generate frames --help``).
SETTING_HELP = {
    "seed": "random seed (same seed, same bytes)",
    "count": "frames in all, across cameras (0: endless)",
    "width": "frame width, pixels",
    "height": "frame height, pixels",
    "exposure_s": "exposure time, seconds (sky and star electrons scale with it)",
    "gain": "electrons per ADU",
    "bias": "bias offset, ADU",
    "read_noise": "read noise, electrons",
    "latitude_deg": "site latitude, degrees",
    "longitude_deg": "site longitude, degrees east",
    "temperature_c": "temperature at the start, degrees Celsius",
    "nominal_focus": "focuser position in focus, steps",
    "cameras": "comma list of camera ids (message keys)",
    "targets": "comma list of target names (header OBJECT)",
    "fields": "field of each target: synthetic, m13 or hubble (one: all targets)",
    "sequence_len": "frames of one target before a camera moves to the next (0: never)",
    "references": "clean, usable frames first per camera and target",
    "interval_s": "event-time seconds between a camera's frames",
    "sky_rate": "sky background, electrons per pixel per second",
    "sky_gradient": "fractional change of the sky level across the frame",
    "stars": "stars of a synthetic field",
    "star_rate": "flux range of the stars, electrons per second",
    "star_index": "power-law index of the star fluxes, dN/dF ~ F**-index",
    "base_rate": "real fields: electrons per pixel per second at the image's 99.9th percentile",
    "seeing_fwhm": "range of the seeing FWHM, pixels",
    "tracking_std": "step of the tracking random walk, pixels per frame",
    "pixel_scale": "arcseconds per pixel (header RA/Dec of tracking shifts)",
    "defocus_steps": "focuser steps off nominal of a defocused frame",
    "defocus_px_per_step": "donut radius per focuser step off nominal, pixels",
    "asteroid_len": "frames an asteroid track lasts at most",
    "asteroid_speed": "asteroid motion, pixels per frame",
    "satellite_trail_len": "satellite trail length, pixels",
    "hot_column_len": "hot column segment length, pixels",
    "cosmic_ray_count": "cosmic-ray hits in a frame that has them",
    **{f"{k}_prob": f"probability per frame of {k.replace('_', ' ')}" for k in ANOMALY_KINDS},
    **{f"{k}_snr": f"{k.replace('_', ' ')} peak, in sky noise sigmas" for k in ANOMALY_KINDS},
    **{f"{k}_prob": f"probability per frame that it is unusable by {k}" for k in UNUSABLE_KINDS},
}


@dataclass(frozen=True, slots=True)
class TelescopeSimConfig:
    """Settings of the telescope simulator (see the module docstring and ``SETTING_HELP``).

    Attributes:
        seed: Seed of every random stream (>= 0).
        count: Frames in all, across cameras (0: unbounded).
        width: Frame width, pixels.
        height: Frame height, pixels.
        cameras: Camera ids.
        targets: Target names.
        fields: Field kind of each target (:data:`~generators.skyfield.FIELDS`);
            a single entry applies to every target.
        sequence_len: Frames of one target before a camera moves on (0: never;
            camera ``c`` starts on target ``c % len(targets)``).
        references: Clean, usable frames first per camera and target.
        start: Event time of the first frame, timezone-aware.
        interval_s: Event-time seconds between two frames of a camera.
        exposure_s: Exposure time; sky and star electrons scale with it.
        sky_rate: Sky background, e-/pixel/s.
        sky_gradient: Largest fractional change of the sky across the frame.
        gain: Electrons per ADU.
        bias: Bias offset, ADU.
        read_noise: Read noise, electrons.
        stars: Stars of a synthetic field.
        star_rate: Range of star fluxes, e-/s.
        star_index: Power-law index of star fluxes.
        base_rate: Real fields: e-/pixel/s at the image's 99.9th percentile.
        seeing_fwhm: Range of the seeing FWHM, pixels.
        tracking_std: Step of the tracking random walk, pixels per frame.
        pixel_scale: Arcseconds per pixel.
        latitude_deg: Site latitude.
        longitude_deg: Site longitude, east positive.
        temperature_c: Temperature at the start (it falls 0.4 degrees an hour).
        nominal_focus: Focuser position in focus, steps.
        defocus_steps: Range of focuser steps off nominal of a defocused frame.
        defocus_px_per_step: Donut radius per step off nominal, pixels.
        asteroid_prob: Probability per frame that an asteroid track starts
            (likewise ``satellite_trail_prob``, ``hot_pixel_prob``,
            ``hot_column_prob``, ``cosmic_ray_prob`` for one in a frame).
        asteroid_len: Frames an asteroid track lasts at most.
        asteroid_speed: Asteroid motion, pixels per frame.
        asteroid_snr: Peak of an asteroid in sky noise sigmas (likewise the other ``*_snr``).
        satellite_trail_len: Length of a trail, pixels.
        hot_column_len: Length of a hot column segment, pixels.
        cosmic_ray_count: Hits in a frame with cosmic rays.
        clouds_prob: Probability per frame that it is cloudy (likewise
            ``defocus_prob``, ``weather_prob``).

    Example:
        >>> TelescopeSimConfig(targets=("M13", "M31")).field_of(1)
        'synthetic'
        >>> TelescopeSimConfig(sequence_len=2, targets=("a", "b")).target_of(0, 5)
        0

    """

    seed: int = 42
    count: int = 200
    width: int = 650
    height: int = 500
    cameras: tuple[str, ...] = ("cam1",)
    targets: tuple[str, ...] = ("M31",)
    fields: tuple[str, ...] = ("synthetic",)
    sequence_len: int = 100
    references: int = 20
    start: datetime = datetime(2024, 9, 1, 20, tzinfo=UTC)
    interval_s: float = 75.0
    exposure_s: float = 60.0
    sky_rate: float = 15.0
    sky_gradient: float = 0.08
    gain: float = 1.5
    bias: float = 1000.0
    read_noise: float = 6.0
    stars: int = 600
    star_rate: Range = (10.0, 40_000.0)
    star_index: float = 1.8
    base_rate: float = 600.0
    seeing_fwhm: Range = (2.2, 4.0)
    tracking_std: float = 0.5
    pixel_scale: float = 1.0
    latitude_deg: float = 48.4
    longitude_deg: float = 8.9
    temperature_c: float = 12.0
    nominal_focus: float = 7200.0
    defocus_steps: Range = (150.0, 600.0)
    defocus_px_per_step: float = 0.02
    asteroid_prob: float = 0.03
    asteroid_len: LenRange = (4, 20)
    asteroid_speed: Range = (1.5, 6.0)
    asteroid_snr: Range = (3.0, 25.0)
    satellite_trail_prob: float = 0.03
    satellite_trail_len: Range = (80.0, 500.0)
    satellite_trail_snr: Range = (3.0, 30.0)
    hot_pixel_prob: float = 0.03
    hot_pixel_snr: Range = (8.0, 100.0)
    hot_column_prob: float = 0.02
    hot_column_len: LenRange = (30, 250)
    hot_column_snr: Range = (3.0, 15.0)
    cosmic_ray_prob: float = 0.05
    cosmic_ray_count: LenRange = (1, 4)
    cosmic_ray_snr: Range = (10.0, 150.0)
    clouds_prob: float = 0.03
    defocus_prob: float = 0.03
    weather_prob: float = 0.03

    @property
    def sky_sigma(self) -> float:
        """The sky noise in electrons, the unit of the ``*_snr`` amplitudes.

        Example:
            >>> round(TelescopeSimConfig().sky_sigma, 2)
            30.59

        """
        return math.sqrt(self.sky_rate * self.exposure_s + self.read_noise**2)

    def field_of(self, target: int) -> str:
        """The field kind of target index ``target``."""
        return self.fields[target if len(self.fields) > 1 else 0]

    def target_of(self, camera: int, tick: int) -> int:
        """The target index camera ``camera`` observes at its frame ``tick``."""
        turn = tick // self.sequence_len if self.sequence_len else 0
        return (camera + turn) % len(self.targets)

    def unusable_kind(self, u: float) -> str | None:
        """The unusable kind a uniform draw ``u`` in [0, 1) selects, ``None`` for usable."""
        edge = 0.0
        for kind in UNUSABLE_KINDS:
            edge += float(getattr(self, f"{kind}_prob"))
            if u < edge:
                return kind
        return None

    def validate(self) -> None:
        """Check every setting.

        Raises:
            SimConfigError: naming the field, what was expected and what arrived.

        Example:
            >>> TelescopeSimConfig(fields=("mars",)).validate()
            Traceback (most recent call last):
            ...
            generators.simkit.SimConfigError: telescope simulator: fields: expected \
field kinds among ('synthetic', 'm13', 'hubble'), got ('mars',)

        """

        def need(ok: bool, name: str, expected: str) -> None:
            if not ok:
                got = getattr(self, name)
                raise SimConfigError(name, f"expected {expected}, got {got!r}", _WHO)

        need(self.seed >= 0, "seed", "an integer >= 0")
        need(self.count >= 0, "count", "an integer >= 0 (0: unbounded)")
        need(16 <= self.width <= 8192, "width", "16..8192 pixels")
        need(16 <= self.height <= 8192, "height", "16..8192 pixels")
        for name in ("cameras", "targets"):
            ids = getattr(self, name)
            need(len(ids) >= 1 and len(set(ids)) == len(ids), name, "distinct ids, at least one")
            need(all(0 < len(i) <= 68 for i in ids), name, "ids of 1-68 characters")
        need(set(self.fields) <= set(FIELDS), "fields", f"field kinds among {FIELDS}")
        need(len(self.fields) in (1, len(self.targets)), "fields", "one kind, or one per target")
        need(self.sequence_len >= 0, "sequence_len", "an integer >= 0")
        need(self.references >= 0, "references", "an integer >= 0")
        need(self.start.tzinfo is not None, "start", "a timezone-aware datetime")
        need(_MIN_START <= self.start < _MAX_START, "start", "a time in 2000..2099")
        for name in ("interval_s", "exposure_s", "gain", "pixel_scale"):
            need(0.0 < getattr(self, name) < math.inf, name, "a finite number > 0")
        for name in ("sky_rate", "read_noise", "base_rate", "tracking_std", "defocus_px_per_step"):
            need(0.0 <= getattr(self, name) < math.inf, name, "a finite number >= 0")
        need(0.0 <= self.sky_gradient <= 0.5, "sky_gradient", "a fraction in [0, 0.5]")
        need(0.0 <= self.bias <= 30_000.0, "bias", "0..30000 ADU")
        need(self.sky_sigma > 0.0, "sky_rate", "sky_rate or read_noise > 0")
        need(0 <= self.stars <= 100_000, "stars", "0..100000 stars")
        need(0.0 < self.star_index < 10.0, "star_index", "a power-law index in (0, 10)")
        for name in ("latitude_deg", "temperature_c", "longitude_deg", "nominal_focus"):
            need(math.isfinite(getattr(self, name)), name, "a finite number")
        need(-90.0 <= self.latitude_deg <= 90.0, "latitude_deg", "-90..90 degrees")
        need(-180.0 <= self.longitude_deg <= 360.0, "longitude_deg", "-180..360 degrees")
        for name in ("star_rate", "seeing_fwhm", "asteroid_speed", "satellite_trail_len"):
            lo, hi = getattr(self, name)
            need(0.0 < lo <= hi < math.inf, name, "a range lo,hi with 0 < lo <= hi")
        need(self.seeing_fwhm[1] <= 20.0, "seeing_fwhm", "a FWHM of at most 20 pixels")
        lo, hi = self.defocus_steps
        need(0.0 < lo <= hi < math.inf, "defocus_steps", "a range lo,hi with 0 < lo <= hi")
        need(hi * self.defocus_px_per_step <= 40.0, "defocus_steps", "donuts of <= 40 pixels")
        for kind in (*ANOMALY_KINDS, *UNUSABLE_KINDS):
            name = f"{kind}_prob"
            need(0.0 <= getattr(self, name) <= 1.0, name, "a probability in [0, 1]")
        total = sum(getattr(self, f"{k}_prob") for k in UNUSABLE_KINDS)
        need(total <= 1.0, "clouds_prob", "unusable probabilities summing to <= 1")
        for kind in ANOMALY_KINDS:
            lo, hi = getattr(self, f"{kind}_snr")
            need(0.0 < lo <= hi <= 10_000.0, f"{kind}_snr", "a range lo,hi with 0 < lo <= hi")
        for name in ("asteroid_len", "hot_column_len", "cosmic_ray_count"):
            lo, hi = getattr(self, name)
            need(1 <= lo <= hi, name, "a range lo,hi with 1 <= lo <= hi")

    @classmethod
    def from_env(cls, env: Env | None = None) -> TelescopeSimConfig:
        """Read the ``VIGIL_SIM_<FIELD>`` variables (field name upper-cased).

        Ranges are ``lo,hi``; ids are comma lists; ``VIGIL_SIM_START`` is ISO
        8601 (UTC when no offset).

        Raises:
            ConfigError: naming the variable at fault.

        Example:
            >>> env = Env({"VIGIL_SIM_FIELDS": "m13", "VIGIL_SIM_ASTEROID_SNR": "2,9"})
            >>> cfg = TelescopeSimConfig.from_env(env)
            >>> cfg.fields, cfg.asteroid_snr
            (('m13',), (2.0, 9.0))

        """
        env = env or Env()
        return settings_from_env(cls(), env)


class FrameStream:
    """The simulated stream: frames planned in order, rendered and encoded on demand.

    Planning is cheap and rendering is not, so a source that resumes plans
    the frames it skips without rendering them.

    Args:
        cfg: The settings.
        cameras: Indices of the cameras to plan (``None``: all), in stream order.

    Raises:
        SimConfigError: when a setting is invalid.

    Example:
        >>> stream = FrameStream(TelescopeSimConfig(count=4, cameras=("a", "b"), width=32,
        ...                                         height=32, stars=5), cameras={1})
        >>> [(p.position, p.tick) for p in stream.plans]
        [(1, 0), (3, 1)]

    """

    def __init__(self, cfg: TelescopeSimConfig, cameras: Collection[int] | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.skies = [Sky.make(cfg, i) for i in range(len(cfg.targets))]
        self.plans: Iterator[FramePlan] = plan_frames(
            cfg, self.skies, None if cameras is None else set(cameras)
        )

    def frame(self, plan: FramePlan) -> Frame:
        """The rendered frame of a plan, with its ground truth."""
        return make_frame(self.cfg, plan, self.skies[plan.target])

    def message(
        self, plan: FramePlan, encoding: str = "png", ref_dir: Path | None = None
    ) -> tuple[bytes, bytes]:
        """The Kafka ``(key, value)`` of a plan's frame (see :func:`iter_messages`)."""
        frame = self.frame(plan)
        path = None
        if encoding == "ref":
            if ref_dir is None:
                raise ValueError("encoding 'ref' needs ref_dir, the folder of the frame files")
            ref_dir.mkdir(parents=True, exist_ok=True)
            path = ref_dir / f"{frame.frame_id}.fits"
            write_fits(path, frame)
        return frame.camera.encode(), encode_frame(frame, encoding, ref_path=path)


def iter_frames(cfg: TelescopeSimConfig) -> Iterator[Frame]:
    """The simulated frames in stream order, each with its ground truth.

    Raises:
        SimConfigError: when a setting is invalid.

    """
    stream = FrameStream(cfg)
    for plan in stream.plans:
        yield stream.frame(plan)


def iter_messages(
    cfg: TelescopeSimConfig, encoding: str = "png", *, ref_dir: Path | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """The frames as Kafka ``(key, value)`` pairs (see :mod:`operators.framecodec`).

    Args:
        cfg: The settings.
        encoding: ``"png"``, ``"fits"``, or ``"ref"`` (each frame is written
            to ``ref_dir`` as ``<frame_id>.fits`` and the message names it).
        ref_dir: Folder of the files of ``"ref"`` messages (a shared filesystem).

    Raises:
        SimConfigError: when a setting is invalid.
        ValueError: for ``"ref"`` without ``ref_dir``.

    """
    if encoding == "ref" and ref_dir is None:
        raise ValueError("encoding 'ref' needs ref_dir, the folder of the frame files")
    stream = FrameStream(cfg)
    for plan in stream.plans:
        yield stream.message(plan, encoding, ref_dir)
