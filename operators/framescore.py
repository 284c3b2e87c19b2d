"""Frame scores from patch distances: leave-one-out calibration, anomaly maps and boxes.

The memory bank answers, for every patch of a frame, the distance to its
nearest reference patch. This module turns those distances into a decision,
with no constant threshold:

* **Where a patch is.** PatchCore compares a patch with every reference patch,
  wherever it lies. On a star field that misses the interesting cases: a new
  faint point (an asteroid, a hot pixel) looks like the faint stars elsewhere
  in the field. So each patch vector carries its grid cell, scaled by a
  *position weight* (:func:`with_position`): the nearest reference is then,
  in effect, the same part of the sky in another reference frame, and a
  patch is anomalous when it differs from what that part of the sky looked
  like. The weight is :data:`POSITION_FACTOR` times the typical distance
  between the same cell in two reference frames (:func:`position_weight`),
  so it follows the scale of the features.
* **Per-cell scale.** Cells differ: a bright star's patch varies more from
  frame to frame (seeing, shot noise) than empty sky. Each reference frame
  is searched against the bank without itself (leave-one-out), and a cell's
  scale is a high quantile of its leave-one-out distances. A patch score is
  its distance in units of its cell's scale.
* **Frame threshold.** The frame score is its largest patch score. The
  reference frames' own leave-one-out frame scores (each scaled by cells
  calibrated without it) are fitted with a Gumbel law of maxima, and the
  threshold is its quantile at the chosen false-alarm rate per frame.
* **Difference channel.** Optionally, each cell also has the largest
  matched-filtered difference between the frame and the target's reference
  image (:mod:`operators.framediff`), scaled like the distances by a per-cell
  quantile of the references' leave-one-out values (never below their median:
  the channel is in sigmas already, and 20 references give a noisy quantile).
  The two channels are put on one scale by their own leave-one-out thresholds
  (the difference is multiplied by the distances' threshold over its own), and
  a cell scores the larger of the two, so a frame alerts when either channel
  sees what the references never showed.
* **Boxes.** Cells above the threshold seed regions that grow through
  neighbouring cells half-way there from their own scale (hysteresis,
  :func:`grow_level`); each region becomes a box in pixels.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> loo = rng.gamma(4.0, 0.25, size=(30, 12)).astype(np.float32)  # 30 refs, 3x4 cells
    >>> cal = calibrate("M31", loo, grid=(3, 4), stride=16, position=1.0)
    >>> d = np.median(loo, axis=0)
    >>> d[5] *= 8.0  # one cell far from every reference
    >>> result = score_patches(d, cal, shape=(48, 64))
    >>> result.score > cal.threshold, [(b.x0, b.y0, b.x1, b.y1) for b in result.boxes]
    (True, [(16, 16, 32, 32)])

"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from operators.frames import Box, MapArray

F32 = npt.NDArray[np.float32]

#: Position weight in units of the typical same-cell distance between references.
POSITION_FACTOR = 4.0
#: Quantile of a cell's leave-one-out distances taken as its scale.
CELL_QUANTILE = 0.9
#: Floor of a cell's scale, as a share of the median scale (no cell divides by ~0).
SCALE_FLOOR = 0.25
#: Default false-alarm rate per usable normal frame.
FALSE_ALARM_RATE = 0.005
#: Regions grow through neighbouring cells this share of the way from the cells' scale (1)
#: to the threshold.
GROW_SHARE = 0.5
_EULER_GAMMA = 0.5772156649015329


@dataclass(frozen=True, slots=True)
class Calibration:
    """What scoring a target's frames needs, fitted on its reference frames.

    Attributes:
        target: The target (header ``object``).
        grid: Patch grid ``(rows, cols)`` the calibration was fitted on.
        stride: Pixels per grid cell.
        position: Position weight of the patch vectors (:func:`with_position`).
        cell_scale: Distance scale of each cell, ``float32`` (rows * cols,).
        threshold: Frame threshold, in cell-scale units.
        loo_scores: Leave-one-out frame scores of the reference frames.
        false_alarm_rate: Per-frame false-alarm rate the threshold was set for.
        diff_scale: Scale of each cell's difference, ``float32`` (rows * cols,);
            ``None`` without the difference channel.
        diff_weight: Factor putting scaled differences on the distances' scale.

    """

    target: str
    grid: tuple[int, int]
    stride: int
    position: float
    cell_scale: F32
    threshold: float
    loo_scores: F32
    false_alarm_rate: float = FALSE_ALARM_RATE
    diff_scale: F32 | None = None
    diff_weight: float = 0.0

    def to_record(self) -> dict[str, object]:
        """A JSON-ready dict (for the bank's calibration store)."""
        return {
            "target": self.target,
            "grid": list(self.grid),
            "stride": self.stride,
            "position": self.position,
            "cell_scale": [round(float(v), 6) for v in self.cell_scale],
            "threshold": self.threshold,
            "loo_scores": [round(float(v), 6) for v in self.loo_scores],
            "false_alarm_rate": self.false_alarm_rate,
            "diff_scale": None
            if self.diff_scale is None
            else [round(float(v), 6) for v in self.diff_scale],
            "diff_weight": self.diff_weight,
        }

    @classmethod
    def from_record(cls, record: dict[str, object]) -> Calibration:
        """Rebuild a calibration from :meth:`to_record` output."""
        grid = record["grid"]
        if not isinstance(grid, list) or len(grid) != 2:
            msg = f"calibration: expected grid [rows, cols], got {grid!r}"
            raise ValueError(msg)
        return cls(
            target=str(record["target"]),
            grid=(int(grid[0]), int(grid[1])),
            stride=int(str(record["stride"])),
            position=float(str(record["position"])),
            cell_scale=np.asarray(record["cell_scale"], dtype=np.float32),
            threshold=float(str(record["threshold"])),
            loo_scores=np.asarray(record["loo_scores"], dtype=np.float32),
            false_alarm_rate=float(str(record["false_alarm_rate"])),
            diff_scale=None
            if record.get("diff_scale") is None
            else np.asarray(record["diff_scale"], dtype=np.float32),
            diff_weight=float(str(record.get("diff_weight", 0.0))),
        )


@dataclass(frozen=True, slots=True, eq=False)
class PatchResult:
    """A frame's patch scores and what follows from them.

    Attributes:
        score: Frame score (largest patch score).
        patch_scores: Score of every patch, ``float32`` (rows, cols).
        anomaly_map: Patch scores upsampled to the image, ``float32`` (height, width).
        boxes: Anomalous regions, largest score first.

    """

    score: float
    patch_scores: F32
    anomaly_map: MapArray
    boxes: tuple[Box, ...]


def with_position(features: F32, grid: tuple[int, int], position: float) -> F32:
    """Patch vectors: the features followed by the cell's (column, row) times ``position``.

    Example:
        >>> v = with_position(np.zeros((6, 2), np.float32), (2, 3), 10.0)
        >>> v[:, 2:].tolist()
        [[0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [0.0, 10.0], [10.0, 10.0], [20.0, 10.0]]

    """
    rows, cols = grid
    if features.shape[0] != rows * cols:
        msg = f"with_position: expected {rows * cols} patches for grid {grid}, got {len(features)}"
        raise ValueError(msg)
    gy, gx = np.divmod(np.arange(rows * cols, dtype=np.float32), np.float32(cols))
    pos = np.stack((gx, gy), axis=1) * np.float32(position)
    return np.ascontiguousarray(np.hstack((features.astype(np.float32), pos)))


def position_weight(features: F32, factor: float = POSITION_FACTOR) -> float:
    """Position weight from reference features ``(frames, patches, dim)``.

    ``factor`` times the median, over cells, of the median distance from a
    cell's feature in one reference frame to the nearest same-cell feature in
    another: the typical frame-to-frame variation of one part of the sky.

    Example:
        >>> f = np.zeros((3, 4, 2), np.float32); f[1, :, 0] = 1.0; f[2, :, 0] = 3.0
        >>> position_weight(f, factor=1.0)
        1.0

    """
    frames = features.shape[0]
    if frames < 2:
        msg = f"position_weight: expected at least 2 reference frames, got {frames}"
        raise ValueError(msg)
    per_cell = np.transpose(features, (1, 0, 2)).astype(np.float32)  # (patches, frames, dim)
    sq = np.einsum("pfd,pfd->pf", per_cell, per_cell)
    d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * np.einsum("pfd,pgd->pfg", per_cell, per_cell)
    d2[:, np.arange(frames), np.arange(frames)] = np.inf
    nearest = np.sqrt(np.maximum(d2.min(axis=2), 0.0))
    typical = float(np.median(np.median(nearest, axis=1)))
    return factor * typical if typical > 0.0 else factor


def _cell_scale(loo: F32, floor_share: float = SCALE_FLOOR) -> F32:
    scale = np.quantile(loo, CELL_QUANTILE, axis=0).astype(np.float32)
    floor = floor_share * float(np.median(scale))
    return np.maximum(scale, np.float32(max(floor, 1e-12)))


def _honest_maxima(loo: F32, floor_share: float) -> F32:
    """Each reference's cell values in units of cell scales fitted without it."""
    return np.stack(
        [loo[i] / _cell_scale(np.delete(loo, i, axis=0), floor_share) for i in range(len(loo))]
    )


def gumbel_threshold(maxima: F32, false_alarm_rate: float) -> float:
    """Quantile ``1 - false_alarm_rate`` of a Gumbel law fitted to ``maxima`` by moments.

    Example:
        >>> round(gumbel_threshold(np.array([1.0, 1.2, 0.9, 1.1, 1.0], np.float32), 0.01), 3)
        1.398

    """
    if not 0.0 < false_alarm_rate < 1.0:
        msg = f"gumbel_threshold: expected 0 < false_alarm_rate < 1, got {false_alarm_rate}"
        raise ValueError(msg)
    beta = float(np.std(maxima, ddof=1)) * math.sqrt(6.0) / math.pi
    mu = float(np.mean(maxima)) - _EULER_GAMMA * beta
    return mu - beta * math.log(-math.log1p(-false_alarm_rate))


def calibrate(
    target: str,
    loo: F32,
    *,
    grid: tuple[int, int],
    stride: int,
    position: float,
    false_alarm_rate: float = FALSE_ALARM_RATE,
    diff_loo: F32 | None = None,
) -> Calibration:
    """Fit cell scales and the frame threshold on leave-one-out distances.

    With ``diff_loo``, the difference channel is calibrated likewise and joins the
    frame score (see the module docstring).

    Args:
        target: The target.
        loo: ``(references, patches)`` distances of each reference frame's
            patches to the bank without that frame.
        grid: Patch grid ``(rows, cols)``.
        stride: Pixels per cell.
        position: Position weight the bank's vectors were built with.
        false_alarm_rate: Per-frame false-alarm rate of the threshold.
        diff_loo: ``(references, patches)`` largest difference of each reference
            frame's cells against the reference image made without it.

    Raises:
        ValueError: fewer than 3 reference frames, or a shape mismatch.

    """
    m, n = loo.shape
    if m < 3 or n != grid[0] * grid[1]:
        msg = (
            f"calibrate {target!r}: expected >= 3 reference frames of {grid[0] * grid[1]} "
            f"patches, got {m} of {n}"
        )
        raise ValueError(msg)
    loo = loo.astype(np.float32)
    # Each reference's frame score uses cell scales fitted without it (honest maxima).
    z = _honest_maxima(loo, SCALE_FLOOR)
    diff_scale, diff_weight = None, 0.0
    if diff_loo is not None:
        if diff_loo.shape != loo.shape:
            msg = (
                f"calibrate {target!r}: expected differences of shape {loo.shape}, got "
                f"{diff_loo.shape}"
            )
            raise ValueError(msg)
        diff_loo = diff_loo.astype(np.float32)
        b = _honest_maxima(diff_loo, 1.0)
        diff_scale = _cell_scale(diff_loo, 1.0)
        diff_weight = gumbel_threshold(z.max(axis=1), false_alarm_rate) / gumbel_threshold(
            b.max(axis=1), false_alarm_rate
        )
        z = np.maximum(z, np.float32(diff_weight) * b)
    loo_scores = z.max(axis=1).astype(np.float32)
    return Calibration(
        target=target,
        grid=grid,
        stride=stride,
        position=position,
        cell_scale=_cell_scale(loo),
        threshold=gumbel_threshold(loo_scores, false_alarm_rate),
        loo_scores=loo_scores,
        false_alarm_rate=false_alarm_rate,
        diff_scale=diff_scale,
        diff_weight=diff_weight,
    )


def grow_level(threshold: float) -> float:
    """The patch score a box grows through: half-way from a cell's own scale to the threshold.

    A patch score of 1 is its cell's 90th percentile among the references, so a tenth of
    normal patches exceed it; growing through them would spread a box over the sky.

    Example:
        >>> grow_level(3.0)
        2.0

    """
    return 1.0 + GROW_SHARE * max(threshold - 1.0, 0.0)


def _boxes(z: F32, threshold: float, stride: int, shape: tuple[int, int]) -> tuple[Box, ...]:
    hot = z > threshold
    if not hot.any():
        return ()
    regions, count = ndimage.label(z > grow_level(threshold), structure=np.ones((3, 3)))
    boxes = []
    for index, where in enumerate(ndimage.find_objects(regions), start=1):
        if where is None:
            continue
        inside = regions[where] == index
        if not (hot[where] & inside).any():
            continue  # grown cells with no seed above the threshold
        rows, cols = where
        peak = float(z[where][inside].max())
        boxes.append(
            Box(
                x0=cols.start * stride,
                y0=rows.start * stride,
                x1=min(cols.stop * stride, shape[1]),
                y1=min(rows.stop * stride, shape[0]),
                score=peak,
            )
        )
    del count
    return tuple(sorted(boxes, key=lambda b: -b.score))


def score_patches(
    distances: F32, cal: Calibration, *, shape: tuple[int, int], diff: F32 | None = None
) -> PatchResult:
    """Score a frame from its patches' nearest-reference distances (and differences).

    Args:
        distances: ``(patches,)`` distances, in grid order.
        cal: The target's calibration.
        shape: ``(height, width)`` of the frame, for the map and the boxes.
        diff: ``(patches,)`` largest difference of each cell, when the calibration has
            the difference channel (``None``: the distances alone, as in a
            calibration without it; the threshold is the two channels' then).

    Raises:
        ValueError: the distances or differences do not match the calibration's grid,
            or ``diff`` is given without the channel's calibration.

    """
    rows, cols = cal.grid
    if distances.shape != (rows * cols,):
        msg = (
            f"score {cal.target!r}: expected {rows * cols} patch distances for grid "
            f"{cal.grid}, got shape {distances.shape}"
        )
        raise ValueError(msg)
    z = (distances.astype(np.float32) / cal.cell_scale).reshape(rows, cols)
    if diff is not None and (cal.diff_scale is None or diff.shape != distances.shape):
        expected = "none (no such channel)" if cal.diff_scale is None else f"{rows * cols}"
        msg = f"score {cal.target!r}: expected cell differences: {expected}, got {diff.shape}"
        raise ValueError(msg)
    if diff is not None and cal.diff_scale is not None:
        b = diff.astype(np.float32) / cal.diff_scale
        b *= np.float32(cal.diff_weight)
        np.maximum(z, b.reshape(rows, cols), out=z)
    block = np.ones((cal.stride, cal.stride), dtype=np.float32)
    full = np.kron(z, block)[: shape[0], : shape[1]]
    anomaly_map = np.zeros(shape, dtype=np.float32)
    anomaly_map[: full.shape[0], : full.shape[1]] = full
    return PatchResult(
        score=float(z.max()),
        patch_scores=z,
        anomaly_map=anomaly_map,
        boxes=_boxes(z, cal.threshold, cal.stride, shape),
    )
