"""The Rerun view of scored readings: a Bytewax sink that logs in columns.

Every ``rerun`` call of Vigil lives here. Each worker owns an explicit
:class:`rerun.RecordingStream` (never the global one); all workers share one
application id and one recording id, so the viewer merges what they send
into a single recording. The sink gathers batches for ``flush_s`` seconds of
wall clock, then concatenates each series' batches and logs them with one
``send_columns`` per entity, so the cost per reading is a few array copies
rather than a Python call. A worker draws its first ``max_series`` series one
by one; the alerts of any further series go to one shared entity.

Entities, on the ``event_time`` timestamp timeline (event time of the data),
under the entity root of the flow's :class:`ViewLabels` (``temperature`` for
the sensors flow, ``metric`` for the metrics flow):

* ``<root>/<series>``: the readings, a line per series;
* ``<root>/<series>/alert``: alerted readings, large red points;
* ``<root>/<series>/labelled``: readings a generator labelled anomalous,
  small grey crosses (a cross without a red point is a missed anomaly, a red
  point without a cross a false alarm);
* ``score/<series>``: two scalars per reading, the calibrated score in [0, 1]
  and the alert threshold it was held to (a line each);
* ``<root>/other-series``: alerted readings of the series beyond
  ``max_series``, red points, one entity for all of them;
* ``cloud/data/<series>`` and ``cloud/alert/<series>`` (when the labels ask
  for it, as the sensors flow's do): a 3D cloud of (minutes since 00:00 UTC
  of the first reading a worker saw, value, 10 x series index), alerts
  larger and red.

Where the view goes (a file, a viewer or server started for it, or one
already running) is a :class:`RerunConfig` (see
:mod:`operators.sinks.rerun_config`, whose names this module re-exports).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import rerun as rr
import rerun.blueprint as rrb
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from operators.events import BoolArray, FloatArray, IntArray, Scored, ScoredBatch, ScoredRows
from operators.sinks.files import worker_path
from operators.sinks.rerun_config import (
    APPLICATION_ID,
    MODES,
    Mode,
    RerunConfig,
    ViewLabels,
    default_recording_id,
    ensure_viewer,
)

__all__ = [
    "APPLICATION_ID",
    "MODES",
    "TIMELINE",
    "Mode",
    "RerunConfig",
    "RerunSink",
    "ViewLabels",
    "close_stream",
    "default_recording_id",
    "open_stream",
    "sensor_index",
    "view_blueprint",
]

logger = logging.getLogger(__name__)

TIMELINE = "event_time"
_FLUSH_S = 30.0
_RED = (220, 30, 30)
_PALETTE = (
    (31, 119, 180),
    (44, 160, 44),
    (255, 127, 14),
    (148, 103, 189),
    (23, 190, 207),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
)
_CLOUD_SENSOR_SPACING = 10.0
# Zoomed out, a pixel covers many readings: draw their range, not their average, which
# would flatten the very spikes the view is for.
_AGGREGATION = rr.components.AggregationPolicy.MinMax
_MS_PER_DAY = 86_400_000
_SCALARS = rr.Scalars.descriptor_scalars()
_POSITIONS = rr.Points3D.descriptor_positions()


def open_stream(
    cfg: RerunConfig, worker_index: int, worker_count: int
) -> tuple[rr.RecordingStream, str]:
    """A worker's recording stream, pointed where ``cfg`` says, and where that is."""
    rec = rr.RecordingStream(cfg.application_id, recording_id=cfg.recording_id)
    if cfg.mode == "rrd":
        path = worker_path(cfg.path, worker_index, worker_count)
        path.parent.mkdir(parents=True, exist_ok=True)
        rec.save(path)
        return rec, str(path)
    if cfg.mode in ("spawn", "serve"):
        ensure_viewer(cfg, start=worker_index == 0)
    rec.connect_grpc(cfg.grpc_url)
    return rec, cfg.web_url if cfg.mode == "serve" else cfg.grpc_url


def close_stream(rec: rr.RecordingStream, dest: str) -> None:
    """Flush and disconnect a worker's stream; an unreachable viewer is logged, not raised."""
    try:
        rec.flush(timeout_sec=_FLUSH_S)
    except Exception:  # an unreachable viewer must not fail the flow's shutdown
        logger.exception("could not flush the Rerun view to %s", dest)
    rec.disconnect()


def sensor_index(series: str) -> int:
    """The series' colour and place on the 3D cloud's depth axis: its number, else a stable hash.

    Example:
        >>> sensor_index("3"), sensor_index("dock-a") == sensor_index("dock-a")
        (3, True)

    """
    if series.isdecimal() and len(series) <= 6:
        return int(series)
    return int.from_bytes(hashlib.blake2b(series.encode(), digest_size=4).digest(), "big") % 1000


def view_blueprint(labels: ViewLabels) -> rrb.Blueprint:
    """Readings with alerts, scores with thresholds, and the 3D cloud up to the time cursor."""
    everything = rr.TimeRange(
        start=rrb.TimeRangeBoundary.infinite(), end=rrb.TimeRangeBoundary.infinite()
    )
    scores = rrb.TimeSeriesView(
        origin="/score",
        name="Calibrated score and threshold",
        axis_x=rrb.TimeAxis(view_range=everything),
        plot_legend=rrb.PlotLegend(visible=False),
    )
    below: rrb.Container | rrb.View = scores
    if labels.cloud:
        below = rrb.Horizontal(
            scores,
            rrb.Spatial3DView(
                origin="/cloud",
                name=f"Readings in 3D: (minutes, {labels.unit or 'value'}, 10 × {labels.noun})",
                time_ranges=rrb.VisibleTimeRange(
                    TIMELINE,
                    start=rrb.TimeRangeBoundary.infinite(),
                    end=rrb.TimeRangeBoundary.cursor_relative(),
                ),
            ),
        )
    return rrb.Blueprint(
        rrb.Vertical(
            rrb.TimeSeriesView(
                origin=f"/{labels.entity}",
                name=f"{labels.quantity} and alerts",
                axis_x=rrb.TimeAxis(view_range=everything),
                plot_legend=rrb.PlotLegend(corner="LeftTop"),
            ),
            below,
            row_shares=[1, 1],
        ),
        collapse_panels=True,
    )


class RerunSink(DynamicSink[Scored]):
    """Log scored batches to Rerun, one recording shared by all workers.

    Args:
        cfg: Where to send the view; ``mode`` must not be ``off``.

    Raises:
        ValueError: for ``mode="off"`` (leave the view output out instead).

    """

    def __init__(self, cfg: RerunConfig) -> None:
        if cfg.mode == "off":
            raise ValueError("RerunSink: mode 'off' logs nothing; leave the view output out")
        self.cfg = cfg

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RerunPartition:
        """Open this worker's recording stream and point it at the configured sink."""
        return _RerunPartition(self.cfg, step_id, worker_index, worker_count)


@dataclass(frozen=True, slots=True)
class _Paths:
    temp: str
    expected: str
    alert: str
    labelled: str
    score: str
    cloud: str
    cloud_alert: str
    depth: float


#: Readings of series not drawn one by one: their series, times, values, alert flags.
_Others = tuple[tuple[str, ...], IntArray, FloatArray, BoolArray]


class _RerunPartition(StatelessSinkPartition[Scored]):
    def __init__(
        self, cfg: RerunConfig, step_id: str, worker_index: int, worker_count: int
    ) -> None:
        self._cfg = cfg
        self._rec, self._dest = open_stream(cfg, worker_index, worker_count)
        labels = cfg.labels
        if worker_index == 0:
            self._rec.send_blueprint(view_blueprint(labels), make_active=True, make_default=True)
        if labels.cloud:  # the value is up in the 3D cloud
            self._rec.log("cloud", rr.ViewCoordinates.RIGHT_HAND_Y_UP, static=True, strict=True)
        self._paths: dict[str, _Paths] = {}
        self._origin_ms: int | None = None
        self._readings = 0
        self._alerts = 0
        self._pending: dict[str, list[ScoredBatch]] = {}
        self._others: list[_Others] = []
        self._others_path = f"{rr.escape_entity_path_part(labels.entity)}/other-series"
        self._others_seen: set[str] = set()
        self._due = time.monotonic() + cfg.flush_s
        # Wall clock of the first and latest scored readings: how long the flow worked.
        self._arrived: tuple[float, float] | None = None
        logger.info("%s: worker %d logs to %s", step_id, worker_index, self._dest)

    def write_batch(self, items: list[Scored]) -> None:
        wall = time.time()
        self._arrived = (wall if self._arrived is None else self._arrived[0], wall)
        drawn = self._paths.keys() | self._pending.keys()
        for batch in items:
            if not len(batch):
                continue
            if isinstance(batch, ScoredRows):
                self._add_rows(batch, drawn)
            elif batch.series in drawn or len(drawn) < self._cfg.max_series:
                self._pending.setdefault(batch.series, []).append(batch)
                drawn.add(batch.series)
            else:
                self._others.append(((batch.series,), batch.ts_ms, batch.values, batch.alerted))
        now = time.monotonic()
        if now >= self._due:
            self._flush()
            self._due = now + self._cfg.flush_s

    def _add_rows(self, rows: ScoredRows, drawn: set[str]) -> None:
        """Readings of series drawn one by one to their series, the rest to the others."""
        limit = self._cfg.max_series
        picks: list[int] = []
        if len(drawn) >= limit:  # no new series is drawn: a membership test in C per reading
            known = map(drawn.__contains__, rows.series)
            picks = np.flatnonzero(np.fromiter(known, bool, len(rows))).tolist()
        else:
            for i, name in enumerate(rows.series):
                if name in drawn or len(drawn) < limit:
                    picks.append(i)
                    drawn.add(name)
        for batch in rows.batches(picks):
            self._pending.setdefault(batch.series, []).append(batch)
        if len(picks) == len(rows):
            return
        if not picks:
            self._others.append((rows.series, rows.ts_ms, rows.values, rows.alerted))
            return
        rest = np.ones(len(rows), dtype=bool)
        rest[picks] = False
        names = tuple(rows.series[i] for i in np.flatnonzero(rest).tolist())
        self._others.append((names, rows.ts_ms[rest], rows.values[rest], rows.alerted[rest]))

    def _flush(self) -> None:
        for series, batches in self._pending.items():
            self._write_series(self._paths_of(series), batches)
        self._pending.clear()
        if self._others:
            self._write_others(self._others)
            self._others = []

    def _write_others(self, parts: list[_Others]) -> None:
        """Alerted readings of the series not drawn one by one, in one entity."""
        if not self._others_seen:
            style = rr.SeriesPoints(
                colors=_RED, names="alerts of other series", markers="circle", marker_sizes=3.0
            )
            self._rec.log(self._others_path, style, static=True, strict=True)
        for names, *_ in parts:
            self._others_seen.update(names)
        ts = np.concatenate([p[1] for p in parts])
        values = np.concatenate([p[2] for p in parts])
        alerted = np.concatenate([p[3] for p in parts])
        order = np.argsort(ts[alerted], kind="stable")
        if len(order):
            self._send(
                self._others_path,
                [_timestamps(ts[alerted][order])],
                _scalars(values[alerted][order]),
            )
        self._readings += len(ts)
        self._alerts += int(alerted.sum())

    def _paths_of(self, series: str) -> _Paths:
        paths = self._paths.get(series)
        if paths is not None:
            return paths
        part = rr.escape_entity_path_part(series)
        index = sensor_index(series)
        labels = self._cfg.labels
        root = rr.escape_entity_path_part(labels.entity)
        paths = _Paths(
            temp=f"{root}/{part}",
            expected=f"{root}/{part}/expected",
            alert=f"{root}/{part}/alert",
            labelled=f"{root}/{part}/labelled",
            score=f"score/{part}",
            cloud=f"cloud/data/{part}",
            cloud_alert=f"cloud/alert/{part}",
            depth=_CLOUD_SENSOR_SPACING * index,
        )
        colour = _PALETTE[index % len(_PALETTE)]
        styles: list[tuple[str, rr.AsComponents]] = [
            (
                paths.temp,
                rr.SeriesLines(
                    colors=colour,
                    names=f"{labels.noun} {series}",
                    widths=1.5,
                    aggregation_policy=_AGGREGATION,
                ),
            ),
            (
                paths.expected,
                rr.SeriesLines(
                    colors=(150, 150, 150),
                    names=f"model expected {series}",
                    widths=1.0,
                    aggregation_policy=_AGGREGATION,
                ),
            ),
            (
                paths.alert,
                rr.SeriesPoints(
                    colors=_RED, names=f"alert {series}", markers="circle", marker_sizes=4.0
                ),
            ),
            (
                paths.labelled,
                rr.SeriesPoints(
                    colors=(90, 90, 90), names=f"labelled {series}", markers="cross", marker_sizes=3
                ),
            ),
            (
                paths.score,
                rr.SeriesLines(
                    colors=[colour, _RED],
                    names=[f"score {series}", "threshold"],
                    widths=[1.5, 1],
                    aggregation_policy=_AGGREGATION,
                ),
            ),
        ]
        if labels.cloud:
            styles += [
                (
                    paths.cloud,
                    rr.Points3D.from_fields(colors=colour, radii=rr.Radius.ui_points(1.5)),
                ),
                (
                    paths.cloud_alert,
                    rr.Points3D.from_fields(colors=_RED, radii=rr.Radius.ui_points(5)),
                ),
            ]
        for path, style in styles:
            self._rec.log(path, style, static=True, strict=True)
        self._paths[series] = paths
        return paths

    def _write_series(self, paths: _Paths, batches: list[ScoredBatch]) -> None:
        ts = np.concatenate([b.ts_ms for b in batches])
        values = np.concatenate([b.values for b in batches])
        scores = np.concatenate([b.scores for b in batches])
        alerted = np.concatenate([b.alerted for b in batches])
        times = [_timestamps(ts)]
        self._send(paths.temp, times, _scalars(values))
        # Score and threshold share a row: one call, and the threshold line follows any change.
        thresholds = np.repeat([b.threshold for b in batches], [len(b) for b in batches])
        self._send(paths.score, times, _scalars(np.column_stack((scores, thresholds))))
        if alerted.any():
            self._send(paths.alert, [_timestamps(ts[alerted])], _scalars(values[alerted]))
        expected = _expected(batches)
        if expected is not None:
            known = np.isfinite(expected)
            self._send(paths.expected, [_timestamps(ts[known])], _scalars(expected[known]))
        if self._cfg.labels.cloud:
            self._write_cloud(paths, ts, values, alerted)
        labelled = _labelled(batches)
        if labelled is not None and labelled.any():
            self._send(paths.labelled, [_timestamps(ts[labelled])], _scalars(values[labelled]))
        self._readings += len(ts)
        self._alerts += int(alerted.sum())

    def _write_cloud(
        self, paths: _Paths, ts: IntArray, values: FloatArray, alerted: BoolArray
    ) -> None:
        if self._origin_ms is None:
            self._origin_ms = int(ts.min()) // _MS_PER_DAY * _MS_PER_DAY
            logger.info("3D cloud: x is minutes since %s", np.datetime64(self._origin_ms, "ms"))
        cloud = np.empty((len(ts), 3), dtype=np.float32)
        cloud[:, 0] = (ts - self._origin_ms) / 60_000.0
        cloud[:, 1] = values
        cloud[:, 2] = paths.depth
        self._send(paths.cloud, [_timestamps(ts)], _positions(cloud))
        if alerted.any():
            self._send(paths.cloud_alert, [_timestamps(ts[alerted])], _positions(cloud[alerted]))

    def _send(self, path: str, times: list[rr.TimeColumn], column: rr.ComponentColumn) -> None:
        rr.send_columns(path, indexes=times, columns=[column], recording=self._rec, strict=True)

    def close(self) -> None:
        self._flush()
        close_stream(self._rec, self._dest)
        logger.info(
            "logged %d readings (%d alerted) to %s; %d series drawn, the alerts of %d more",
            self._readings,
            self._alerts,
            self._dest,
            len(self._paths),
            len(self._others_seen),
        )
        if self._arrived is not None:
            first, last = self._arrived
            logger.info("scored readings arrived from %.3f to %.3f (Unix time, s)", first, last)


def _timestamps(ts_ms: IntArray) -> rr.TimeColumn:
    return rr.TimeColumn(TIMELINE, timestamp=ts_ms.astype("datetime64[ms]"))


# Component batches built straight from the arrays, one value per row: an order of
# magnitude cheaper than `Archetype.columns(...)`, which converts and partitions generically.
def _scalars(values: FloatArray) -> rr.ComponentColumn:
    """One row per first index of ``values``; a 2-D array gives several scalars per row."""
    width = values.shape[1] if values.ndim == 2 else 1
    batch = rr.components.ScalarBatch(values.ravel())
    offsets = np.arange(0, width * len(values) + 1, width, dtype=np.int32)
    return rr.ComponentColumn(_SCALARS, batch, offsets=offsets)


def _positions(xyz: npt.NDArray[np.float32]) -> rr.ComponentColumn:
    batch = rr.components.Position3DBatch(xyz)
    return rr.ComponentColumn(_POSITIONS, batch, offsets=np.arange(len(xyz) + 1, dtype=np.int32))


def _expected(batches: list[ScoredBatch]) -> FloatArray | None:
    """What a model expected of each reading (``nan``: nothing), or ``None`` without a model."""
    if all(b.expected is None for b in batches):
        return None
    return np.concatenate(
        [np.full(len(b), np.nan) if b.expected is None else b.expected for b in batches]
    )


def _labelled(batches: list[ScoredBatch]) -> BoolArray | None:
    """Mask of readings with a ground-truth label, or ``None`` when there is none at all."""
    if all(b.labels.count(None) == len(b.labels) for b in batches):
        return None
    return np.concatenate(
        [np.fromiter((x is not None for x in b.labels), np.bool_, len(b.labels)) for b in batches]
    )
