"""The Rerun view of scored frames: the frame, its anomaly map, boxes, header and score.

Entities, on the ``event_time`` timeline (the frame's UT time), per camera:

* ``frames/<camera>/image``: the frame, asinh-stretched to 8 bits and JPEG-compressed;
* ``frames/<camera>/image/anomaly``: the anomaly map as a segmentation image drawn over
  the frame at 45 % opacity (class 1: half-way from normal to the threshold, 2: above it);
* ``frames/<camera>/image/boxes``: boxes of the anomalous regions, red, labelled with
  their peak score; ``frames/<camera>/image/truth``: a simulator's ground-truth boxes, grey;
* ``frames/<camera>/header``: the header and the decision as a Markdown text document;
* ``score/<camera>``: the frame score and the threshold it was held to (a line each).

Images are heavy, so only every ``every``-th scored frame's image and map are logged,
and every frame with an alert or a ground-truth box; scores, boxes and header go in for
every frame. Unusable frames log their header and reason only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import rerun as rr
import rerun.blueprint as rrb
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.events import datetime_to_ms
from operators.frames import Box, ScoredFrame
from operators.framescore import grow_level
from operators.sinks.rerun import TIMELINE, RerunConfig, close_stream, open_stream

logger = logging.getLogger(__name__)

_RED = (230, 40, 40)
_GREY = (170, 170, 170)
_OPACITY = 0.45
_JPEG_QUALITY = 85


@dataclass(frozen=True, slots=True)
class FrameViewConfig:
    """Where the view goes and how much of it.

    Attributes:
        rerun: The Rerun destination (mode ``off`` is not allowed here).
        every: Log the image and map of every ``every``-th scored frame of a
            camera (frames with an alert or a ground-truth box always).

    """

    rerun: RerunConfig
    every: int = 1


def frame_blueprint() -> rrb.Blueprint:
    """The frames with their overlays above, header and score over time below."""
    everything = rr.TimeRange(
        start=rrb.TimeRangeBoundary.infinite(), end=rrb.TimeRangeBoundary.infinite()
    )
    return rrb.Blueprint(
        rrb.Vertical(
            rrb.Spatial2DView(origin="/frames", name="Frames, anomaly map and boxes"),
            rrb.Horizontal(
                rrb.TimeSeriesView(
                    origin="/score",
                    name="Frame score and threshold",
                    axis_x=rrb.TimeAxis(view_range=everything),
                ),
                rrb.TextDocumentView(origin="/frames", name="Header"),
                column_shares=[2, 1],
            ),
            row_shares=[3, 1],
        ),
        collapse_panels=True,
    )


def stretch(pixels: npt.NDArray[np.uint16]) -> npt.NDArray[np.uint8]:
    """An 8-bit display image: asinh of the signal above the sky, in noise units.

    Example:
        >>> img = np.full((4, 4), 1000, np.uint16); img[1, 1] = 60000
        >>> s = stretch(img); int(s[0, 0]), int(s[1, 1])
        (0, 255)

    """
    sample = pixels[::4, ::4].astype(np.float32)
    sky = float(np.median(sample))
    noise = max(1.4826 * float(np.median(np.abs(sample - sky))), 1.0)
    x = np.arcsinh(np.maximum(pixels.astype(np.float32) - sky, 0.0) / (3.0 * noise))
    top = max(float(np.percentile(x[::4, ::4], 99.8)), 1e-6)
    out: npt.NDArray[np.uint8] = np.clip(255.0 * x / top, 0.0, 255.0).astype(np.uint8)
    return out


def _boxes(boxes: tuple[Box, ...], colour: tuple[int, int, int], scored: bool) -> rr.Boxes2D:
    mins = [(b.x0, b.y0) for b in boxes]
    sizes = [(b.x1 - b.x0, b.y1 - b.y0) for b in boxes]
    labels = [f"{b.kind} {b.score:.1f}" if scored else b.kind for b in boxes]
    return rr.Boxes2D(mins=mins, sizes=sizes, colors=colour, labels=labels, show_labels=True)


def header_markdown(item: ScoredFrame) -> str:
    """The frame's header and decision as Markdown."""
    f = item.frame
    h = f.header
    if item.skipped is not None:
        decision = f"**skipped**: {item.skipped}"
    else:
        verdict = "**anomalous**" if item.is_anomaly else "normal"
        decision = f"{verdict}: score {item.score:.2f}, threshold {item.threshold:.2f}"
    return "\n".join(
        (
            f"### {f.frame_id} ({f.camera})",
            decision,
            "",
            "| field | value |",
            "|---|---|",
            f"| UT | {h.ut.isoformat()} |",
            f"| object | {h.object} |",
            f"| RA, Dec | {h.ra_deg:.4f}, {h.dec_deg:.4f} deg |",
            f"| altitude, azimuth | {h.altitude_deg:.1f}, {h.azimuth_deg:.1f} deg |",
            f"| focus | {h.focus:.0f} |",
            f"| temperature | {h.temperature_c:.1f} C |",
            f"| site | {h.latitude_deg:.4f}, {h.longitude_deg:.4f} |",
            f"| weather | {h.weather:.0f} / 100 |",
            f"| size | {h.width} x {h.height} |",
        )
    )


class FrameRerunSink(DynamicSink[ScoredFrame]):
    """Log scored frames to Rerun (one recording shared by all workers).

    Args:
        cfg: Destination and image rate.

    Raises:
        ValueError: for ``mode="off"`` or ``every < 1``.

    """

    def __init__(self, cfg: FrameViewConfig) -> None:
        if cfg.rerun.mode == "off":
            raise ValueError("FrameRerunSink: mode 'off' logs nothing; leave the view out")
        if cfg.every < 1:
            msg = f"FrameRerunSink: expected every >= 1, got {cfg.every}"
            raise ValueError(msg)
        self.cfg = cfg

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _FramePartition:
        """Open this worker's recording stream."""
        return _FramePartition(self.cfg, step_id, worker_index, worker_count)


class _FramePartition(StatelessSinkPartition[ScoredFrame]):
    def __init__(
        self, cfg: FrameViewConfig, step_id: str, worker_index: int, worker_count: int
    ) -> None:
        self._cfg = cfg
        self._rec, self._dest = open_stream(cfg.rerun, worker_index, worker_count)
        if worker_index == 0:
            self._rec.send_blueprint(frame_blueprint(), make_active=True, make_default=True)
        self._rec.log(
            "frames",
            rr.AnnotationContext(
                [
                    (0, "normal", (0, 0, 0, 0)),
                    (1, "on the way to the threshold", (255, 190, 0, 110)),
                    (2, "anomalous", (*_RED, 255)),
                ]
            ),
            static=True,
        )
        self._styled: set[str] = set()
        self._seen: dict[str, int] = {}
        self._frames = 0
        self._images = 0
        logger.info("%s: worker %d logs frames to %s", step_id, worker_index, self._dest)

    def _style(self, camera: str, score_path: str) -> None:
        if camera in self._styled:
            return
        self._rec.log(
            score_path,
            rr.SeriesLines(colors=[(31, 119, 180), _RED], names=["score", "threshold"]),
            static=True,
        )
        self._styled.add(camera)

    def write_batch(self, items: list[ScoredFrame]) -> None:
        for item in items:
            self._write(item)

    def _write(self, item: ScoredFrame) -> None:
        f = item.frame
        cam = rr.escape_entity_path_part(f.camera)
        root, score_path = f"frames/{cam}", f"score/{cam}"
        self._style(f.camera, score_path)
        self._rec.set_time(TIMELINE, timestamp=np.datetime64(datetime_to_ms(f.header.ut), "ms"))
        self._rec.log(
            f"{root}/header",
            rr.TextDocument(header_markdown(item), media_type=rr.MediaType.MARKDOWN),
        )
        self._frames += 1
        if item.skipped is not None:
            return
        self._rec.log(score_path, rr.Scalars([item.score, item.threshold]))
        n = self._seen.get(f.camera, 0)
        self._seen[f.camera] = n + 1
        show = item.is_anomaly or bool(f.truth) or n % self._cfg.every == 0
        if show:
            image = rr.Image(stretch(f.pixels), color_model="L").compress(_JPEG_QUALITY)
            self._rec.log(f"{root}/image", image)
            if item.anomaly_map is not None:
                classes = (item.anomaly_map > grow_level(item.threshold)).astype(np.uint8)
                classes += item.anomaly_map > item.threshold
                self._rec.log(
                    f"{root}/image/anomaly", rr.SegmentationImage(classes, opacity=_OPACITY)
                )
            self._images += 1
        self._rec.log(f"{root}/image/boxes", _boxes(item.boxes, _RED, scored=True))
        self._rec.log(f"{root}/image/truth", _boxes(f.truth, _GREY, scored=False))

    def close(self) -> None:
        close_stream(self._rec, self._dest)
        logger.info("logged %d frames (%d images) to %s", self._frames, self._images, self._dest)
