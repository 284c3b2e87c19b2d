"""Frames in, decisions out: embed, search the memory bank, score; index and calibrate references.

:class:`FramePipeline` is the one place that joins the pieces, for the flow
and for the ``vigil-frames`` command alike:

* :meth:`~FramePipeline.index` takes a target's reference frames, embeds them,
  fits the position weight, subsamples the patches to at most
  ``max_patches`` with a greedy coreset, stores them in the bank (one Milvus
  partition per target), then calibrates: every reference frame's patches are
  searched against the bank *without that frame* (leave-one-out), and the
  per-cell scales and the frame threshold are fitted on those distances
  (:mod:`operators.framescore`). It also builds the target's reference image for
  difference imaging (:mod:`operators.framediff`), whose channel is calibrated
  the same way (each reference against the median of the others). The
  calibration, the references' image statistics and the reference image are
  stored in the bank too, so any process that opens the bank can score.
* :meth:`~FramePipeline.score` routes an unusable frame away with its reason
  (:mod:`operators.framequality`), else embeds it, sends all its patches in
  one search restricted to the target's partition and usable conditions,
  differences it against the reference image, and turns the distances and
  differences into a score, an anomaly map and boxes.
* :meth:`~FramePipeline.accept` is the feedback path: a frame a person marked
  normal joins the bank, and each cell's difference scale rises to at least
  the frame's difference there, so the same thing no longer alerts.

The pipeline holds clients (onnxruntime, Milvus), never Bytewax state.

When Milvus does not answer (a server stopped or restarting:
:func:`operators.membank.unavailable`), each bank operation (loading a
calibration, a frame's search, a target's indexing as a whole, an accept) is
tried again with exponential back-off (:data:`MILVUS_RETRY`,
:mod:`operators.retry`), the bank recovering before each attempt (collections
reloaded after a restart), and logged as rate-limited WARNING lines with the
attempt count. The frame waits; no frame is dropped. Once Milvus has failed for
the policy's ``give_up_s`` the operation raises
:class:`~operators.retry.GaveUpError`, which stops the flow: Bytewax recovery
then replays the frames not yet written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np

from operators.calstore import ModelStore, TargetModel
from operators.coreset import coreset_indices
from operators.embedding import PatchEmbedder, PatchFeatures
from operators.events import IntArray
from operators.framediff import DiffConfig, ReferenceImage, build_reference
from operators.framequality import QualityRules, ReferenceStats, unusable_reason
from operators.framerefs import ReferenceImageStore
from operators.frames import Frame, ScoredFrame
from operators.framescore import (
    F32,
    FALSE_ALARM_RATE,
    POSITION_FACTOR,
    calibrate,
    position_weight,
    score_patches,
    with_position,
)
from operators.membank import MemoryBank, PatchMeta, unavailable
from operators.retry import Retrying, RetryPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Patches kept per target at most (the coreset subsamples beyond).
MAX_PATCHES = 200_000
#: Model cells pooled per patch side: 2 x 2 stride-16 cells make a 32-pixel patch, a
#: quarter of the queries per search (measured: 2.4 times the frames per second through
#: Milvus Lite, frame AUROC 0.89 against 0.86 unpooled; README, "The telescope frame flow").
POOL = 2
#: Reference frames a target needs before it can be calibrated.
MIN_REFERENCES = 5
#: Seconds of Milvus failing to answer after which a bank operation gives up.
MILVUS_GIVE_UP_S = 300.0
#: Waits between attempts at a bank operation while Milvus does not answer: 0.5 s
#: doubling to 30 s, less up to a fifth (seeded), giving up after 5 minutes.
MILVUS_RETRY = RetryPolicy(
    first_s=0.5,
    factor=2.0,
    max_s=30.0,
    give_up_s=MILVUS_GIVE_UP_S,
    jitter=0.2,
    setting="VIGIL_MILVUS_GIVE_UP_S",
)


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """How frames are judged.

    Attributes:
        rules: The quality gate.
        false_alarm_rate: Per-frame false-alarm rate of the calibrated threshold.
        max_patches: Patches kept per target (coreset beyond).
        position_factor: Position weight in typical same-cell distances.
        conditions: Extra Milvus filter on the references searched (for
            example ``"weather >= 70"``), on top of the target's partition.
        pool: Model cells pooled per patch side.
        difference: How frames are differenced against the target's reference
            image (``None``: patch distances alone). Applies when a target is
            indexed; scoring follows what the target was indexed with.

    """

    rules: QualityRules = field(default_factory=QualityRules)
    false_alarm_rate: float = FALSE_ALARM_RATE
    max_patches: int = MAX_PATCHES
    position_factor: float = POSITION_FACTOR
    conditions: str | None = None
    pool: int = POOL
    difference: DiffConfig | None = field(default_factory=DiffConfig)

    def __post_init__(self) -> None:
        if self.pool < 1 or self.max_patches < 1:
            msg = (
                f"pipeline: expected pool >= 1 and max_patches >= 1, got {self.pool}, "
                f"{self.max_patches}"
            )
            raise ValueError(msg)


def pool_patches(p: PatchFeatures, factor: int) -> PatchFeatures:
    """Patches of ``factor x factor`` cells: the largest value of each feature over them.

    Fewer, larger patches make the one search per frame cheaper (Milvus's cost grows
    with the number of query vectors); the maximum keeps a small anomaly's mark on
    the pooled patch, where a mean would dilute it.
    """
    if factor == 1:
        return p
    rows, cols = p.grid
    out_r, out_c = -(-rows // factor), -(-cols // factor)
    grid = np.full((out_r * factor, out_c * factor, p.dim), -np.inf, dtype=np.float32)
    grid[:rows, :cols] = p.features.reshape(rows, cols, p.dim)
    pooled = grid.reshape(out_r, factor, out_c, factor, p.dim).max(axis=(1, 3))
    return PatchFeatures(
        features=np.ascontiguousarray(pooled.reshape(out_r * out_c, p.dim)),
        grid=(out_r, out_c),
        stride=p.stride * factor,
        frame_shape=p.frame_shape,
    )


def _cells(features: PatchFeatures, keep: IntArray | None = None) -> tuple[IntArray, IntArray]:
    """Grid columns and rows of the patches kept (all by default)."""
    rows, cols = features.grid
    cells = np.arange(rows * cols, dtype=np.int64) if keep is None else keep
    gy, gx = np.divmod(cells, cols)
    return gx, gy


class FramePipeline:
    """Embedder, bank and calibrations of every target; see the module docstring.

    Args:
        embedder: Patch features.
        bank: The memory bank (opened by the caller).
        cfg: How frames are judged.
        retry: Waits and give-up time while Milvus does not answer.

    """

    def __init__(
        self,
        embedder: PatchEmbedder,
        bank: MemoryBank,
        cfg: PipelineConfig,
        *,
        retry: RetryPolicy = MILVUS_RETRY,
    ) -> None:
        self.embedder = embedder
        self.bank = bank
        self.store = ModelStore(bank.client)
        self.images = ReferenceImageStore(bank.client)
        self.cfg = cfg
        self._models: dict[str, TargetModel] = {}
        self._images: dict[str, ReferenceImage] = {}
        self.retrying = Retrying(
            "milvus",
            retry,
            transient=unavailable,
            recover=self._recover,
            where=f"memory bank {bank.cfg.uri}",
            log=logger,
        )

    def _recover(self) -> None:
        """Before another attempt: the bank reloads; the store loads its collection anew."""
        self.bank.recover()
        self.store = ModelStore(self.bank.client)
        self.images = ReferenceImageStore(self.bank.client)

    def model(self, target: str) -> TargetModel | None:
        """The target's calibration, from the cache or the bank; ``None`` before indexing."""
        return self._cached(self._models, target, "load calibration", self.store.load)

    def reference_image(self, target: str) -> ReferenceImage | None:
        """The target's reference image, from the cache or the bank; ``None`` if none."""
        return self._cached(self._images, target, "load reference image", self.images.load)

    def _cached(
        self, cache: dict[str, T], target: str, what: str, load: Callable[[str], T | None]
    ) -> T | None:
        """``cache[target]``, else what ``load`` finds in the bank (retried), kept if found."""
        found = cache.get(target)
        if found is None:
            found = self.retrying.call(what, lambda: load(target))
            if found is not None:
                cache[target] = found
        return found

    def usable(self, frames: Sequence[Frame]) -> tuple[list[Frame], list[tuple[Frame, str]]]:
        """Split frames into usable ones and unusable ones with their reasons (header rules)."""
        good: list[Frame] = []
        bad: list[tuple[Frame, str]] = []
        for f in frames:
            reason = unusable_reason(f, self.cfg.rules)
            if reason is None:
                good.append(f)
            else:
                bad.append((f, reason))
        return good, bad

    def index(self, target: str, frames: Sequence[Frame]) -> TargetModel:
        """Make ``frames`` (usable, same size, of ``target``) the target's references.

        Existing references of the target are replaced.

        Raises:
            ValueError: fewer than :data:`MIN_REFERENCES` frames, mixed sizes or targets.

        """
        if len(frames) < MIN_REFERENCES:
            msg = (
                f"index {target!r}: expected >= {MIN_REFERENCES} reference frames, "
                f"got {len(frames)}"
            )
            raise ValueError(msg)
        shapes = {f.shape for f in frames}
        targets = {f.target for f in frames}
        if len(shapes) != 1 or targets != {target}:
            msg = (
                f"index {target!r}: expected frames of one size and of this target, got sizes "
                f"{sorted(shapes)} and targets {sorted(targets)}"
            )
            raise ValueError(msg)
        feats = [self._embed(f) for f in frames]
        grid, stride = feats[0].grid, feats[0].stride
        stack = np.stack([p.features for p in feats])
        position = position_weight(stack, self.cfg.position_factor)
        vectors = [with_position(p.features, grid, position) for p in feats]
        keep = self._coreset(vectors)
        image, diff_loo = None, None
        if self.cfg.difference is not None:
            image, diff_loo = build_reference(
                [f.pixels for f in frames], stride, self.cfg.difference
            )
        loo = self.retrying.call(
            "index", lambda: self._store_references(target, frames, feats, vectors, keep)
        )
        cal = calibrate(
            target,
            loo,
            grid=grid,
            stride=stride,
            position=position,
            false_alarm_rate=self.cfg.false_alarm_rate,
            diff_loo=diff_loo,
        )
        self._images.pop(target, None)
        if image is not None:
            # Scored with the image as the bank keeps it (float16 pixels), so a frame
            # scores the same before and after a restart that reloads it.
            saved = ReferenceImage.from_bytes(image.to_bytes())
            self.retrying.call("save reference image", lambda: self.images.save(target, saved))
            self._images[target] = saved
        model = TargetModel(calibration=cal, reference=ReferenceStats.of(list(frames)))
        self.retrying.call("save calibration", lambda: self.store.save(model))
        self._models[target] = model
        logger.info(
            "indexed %d reference frames of %r: %d patches, threshold %.2f (leave-one-out)",
            len(frames),
            target,
            int(sum(len(k) for k in keep)),
            cal.threshold,
        )
        return model

    def _store_references(
        self,
        target: str,
        frames: Sequence[Frame],
        feats: list[PatchFeatures],
        vectors: list[F32],
        keep: list[IntArray],
    ) -> F32:
        """Replace the target's references; their leave-one-out distances ``(frames, patches)``.

        Done as a whole, so that it can be done again after Milvus failed half-way.
        """
        self.bank.drop_target(target)
        self.store.delete(target)
        self.images.delete(target)
        for frame, p, v, k in zip(frames, feats, vectors, keep, strict=True):
            gx, gy = _cells(p, k)
            meta = PatchMeta.from_header(frame.header)
            self.bank.add(target, frame.frame_id, v[k], gx.tolist(), gy.tolist(), meta)
        return np.stack(
            [
                self._search(target, v, exclude=f.frame_id)
                for f, v in zip(frames, vectors, strict=True)
            ]
        )

    def _embed(self, frame: Frame) -> PatchFeatures:
        return pool_patches(self.embedder.embed(frame.pixels), self.cfg.pool)

    def _coreset(self, vectors: list[F32]) -> list[IntArray]:
        """Per frame, the indices of its patches the bank keeps."""
        n = vectors[0].shape[0]
        total = n * len(vectors)
        if total <= self.cfg.max_patches:
            return [np.arange(n) for _ in vectors]
        chosen = np.sort(coreset_indices(np.vstack(vectors), self.cfg.max_patches))
        frame_of, cell = np.divmod(chosen, n)
        return [cell[frame_of == i] for i in range(len(vectors))]

    def _search(self, target: str, vectors: F32, exclude: str | None = None) -> F32:
        d = self.bank.search(
            target, vectors, k=1, conditions=self.cfg.conditions, exclude_frame=exclude
        )
        return np.asarray(d[:, 0], dtype=np.float32)

    def score(self, frame: Frame) -> ScoredFrame:
        """Score one frame against its target's references (or skip it, with the reason)."""
        model = self.model(frame.target)
        if model is None:
            return _skipped(frame, f"no references: target {frame.target!r} is not indexed")
        reason = unusable_reason(frame, self.cfg.rules, model.reference)
        if reason is not None:
            return _skipped(frame, reason)
        cal = model.calibration
        feats = self._embed(frame)
        if feats.grid != cal.grid or feats.stride != cal.stride:
            return _skipped(
                frame,
                f"size: patch grid {feats.grid} differs from the references' {cal.grid}",
            )
        diff = None
        if cal.diff_scale is not None:
            image = self.reference_image(frame.target)
            if image is None:
                return _skipped(
                    frame,
                    f"no reference image: target {frame.target!r} was calibrated with one; "
                    "index it again",
                )
            if image.shape != frame.shape:
                return _skipped(
                    frame, f"size: frame {frame.shape} differs from the references' {image.shape}"
                )
            diff = image.cell_max(frame.pixels, cal.stride)
        vectors = with_position(feats.features, cal.grid, cal.position)
        d = self.retrying.call("search", lambda: self._search(frame.target, vectors))
        result = score_patches(d, cal, shape=frame.shape, diff=diff)
        return ScoredFrame(
            frame=frame,
            score=result.score,
            threshold=cal.threshold,
            is_anomaly=result.score > cal.threshold,
            anomaly_map=result.anomaly_map,
            boxes=result.boxes,
        )

    def accept(self, frame: Frame) -> int:
        """Add a frame a person marked normal to its target's references; patches added.

        Raises:
            ValueError: the target is not indexed, or the frame's size differs.

        """
        model = self.model(frame.target)
        if model is None:
            msg = f"accept: target {frame.target!r} is not indexed; run `vigil-frames index` first"
            raise ValueError(msg)
        cal = model.calibration
        feats = self._embed(frame)
        if feats.grid != cal.grid:
            msg = f"accept: patch grid {feats.grid} differs from the references' {cal.grid}"
            raise ValueError(msg)
        vectors = with_position(feats.features, cal.grid, cal.position)
        gx, gy = _cells(feats)
        meta = PatchMeta.from_header(frame.header)
        added = self.retrying.call(
            "accept",
            lambda: self.bank.add(
                frame.target, frame.frame_id, vectors, gx.tolist(), gy.tolist(), meta
            ),
        )
        if cal.diff_scale is not None:
            image = self.reference_image(frame.target)
            if image is None or image.shape != frame.shape:
                msg = f"accept: no reference image of {frame.target!r} for a {frame.shape} frame"
                raise ValueError(msg)
            diff = image.cell_max(frame.pixels, cal.stride)
            raised = replace(cal, diff_scale=np.maximum(cal.diff_scale, diff))
            model = replace(model, calibration=raised)
            self.retrying.call("save calibration", lambda: self.store.save(model))
            self._models[frame.target] = model
        return added


def _skipped(frame: Frame, reason: str) -> ScoredFrame:
    return ScoredFrame(
        frame=frame,
        score=float("nan"),
        threshold=float("nan"),
        is_anomaly=False,
        anomaly_map=None,
        skipped=reason,
    )
