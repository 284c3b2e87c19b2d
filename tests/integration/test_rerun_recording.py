"""RerunSink in a real flow: the .rrd files it writes, read back with rerun.chunk.RrdReader."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main, run_main
from rerun.chunk import RrdReader

from operators.config import ConfigError, Env
from operators.events import ScoredBatch, ScoredRows
from operators.sinks.rerun import (
    APPLICATION_ID,
    TIMELINE,
    RerunConfig,
    RerunSink,
    default_recording_id,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
THRESHOLD = 0.999
COUNTS = (("1", 12), ("2", 7), ("4", 5))


def scored(
    series: str, start: int, temps: list[float], alerts: set[int], labels: dict[int, str]
) -> ScoredBatch:
    """Readings one second apart from ``T0 + start`` s; ``alerts``/``labels`` index the batch."""
    n = len(temps)
    alerted = np.array([i in alerts for i in range(n)])
    scores = np.where(alerted, 0.9995, 0.1 + 0.01 * np.arange(n))
    return ScoredBatch(
        series=series,
        ts_ms=T0 + (start + np.arange(n, dtype=np.int64)) * 1000,
        values=np.array(temps, dtype=np.float64),
        labels=tuple(labels.get(i) for i in range(n)),
        raw_scores=scores * 10,
        scores=scores,
        alerted=alerted,
        threshold=THRESHOLD,
        detector="robust-z",
    )


def known_batches() -> list[ScoredBatch]:
    """Sensor 1: 12 readings, 2 alerted spikes, 3 labelled; sensor 2: 7 readings; sensor 4: 5."""
    return [
        scored("1", 0, [24.0, 24.5, 79.5, 24.1, 24.2, 24.3], {2}, {2: "spike"}),
        scored("2", 0, [22.0, 22.1, 22.2, 22.3], set(), {}),
        scored("1", 6, [24.4, 24.6, 24.2, 81.0, 24.0, 24.1], {3}, {3: "spike", 4: "spike"}),
        scored("4", 0, [26.0, 26.5, 26.1, 26.2, 26.3], set(), {}),
        scored("2", 4, [22.4, 22.5, 22.6], set(), {}),
    ]


def run_view(batches: list[ScoredBatch], path: Path, workers: int = 1) -> None:
    flow = Dataflow("rerun_view")
    stream = op.input("inp", flow, TestingSource(batches))
    if workers > 1:
        # Route by series through a stateful step. Bytewax's key hash is fixed: sensor 4
        # goes to worker 0, sensors 1 and 2 to worker 1, so both files get readings.
        keyed = op.key_on("key", stream, lambda b: b.series)
        routed = op.stateful_map("route", keyed, lambda state, b: (state, b))
        stream = op.map("unkey", routed, lambda kv: kv[1])
    op.output("view", stream, RerunSink(RerunConfig(mode="rrd", path=path)))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)


Rows = dict[str, list[tuple[int, Any]]]


def read_rows(path: Path) -> tuple[Rows, dict[str, dict[str, Any]]]:
    """Temporal rows per entity as ``(event_time ns, component value)``, and static components."""
    rows: Rows = defaultdict(list)
    static: dict[str, dict[str, Any]] = defaultdict(dict)
    for chunk in RrdReader(path).stream().to_chunks():
        table = chunk.to_record_batch().to_pydict()
        data = {k: v for k, v in table.items() if ":" in k}
        if chunk.is_static:
            for name, values in data.items():
                static[chunk.entity_path][name] = values[0]
            continue
        if chunk.entity_path == "/__properties":
            continue
        assert chunk.timeline_names == [TIMELINE]
        times = [int(t.value) for t in table[TIMELINE]]
        [(_name, values)] = data.items()
        rows[chunk.entity_path].extend(zip(times, values, strict=True))
    for entity in rows:
        rows[entity].sort(key=lambda row: row[0])
    return rows, static


def ns(batch: ScoredBatch, mask: np.ndarray | None = None) -> list[int]:
    ts = batch.ts_ms if mask is None else batch.ts_ms[mask]
    return [int(t) * 1_000_000 for t in ts]


def expected(batches: list[ScoredBatch], series: str) -> ScoredBatch:
    """The batches of one series merged, in event time."""
    mine = [b for b in batches if b.series == series]
    return ScoredBatch(
        series,
        np.concatenate([b.ts_ms for b in mine]),
        np.concatenate([b.values for b in mine]),
        sum((b.labels for b in mine), ()),
        np.concatenate([b.raw_scores for b in mine]),
        np.concatenate([b.scores for b in mine]),
        np.concatenate([b.alerted for b in mine]),
        THRESHOLD,
        "robust-z",
    )


def test_recording_holds_every_reading_alert_score_and_label(tmp_path: Path) -> None:
    batches = known_batches()
    path = tmp_path / "sensors.rrd"
    run_view(batches, path)

    reader = RrdReader(path)
    [recording] = reader.recordings()
    assert recording.application_id == APPLICATION_ID
    assert recording.recording_id == default_recording_id(APPLICATION_ID)
    assert len(reader.blueprints()) == 1

    rows, static = read_rows(path)
    assert set(rows) == {
        *(f"/temperature/{s}" for s in "124"),
        *(f"/score/{s}" for s in "124"),
        *(f"/cloud/data/{s}" for s in "124"),
        "/temperature/1/alert",
        "/temperature/1/labelled",
        "/cloud/alert/1",
    }
    for series, count in COUNTS:
        want = expected(batches, series)
        temp = rows[f"/temperature/{series}"]
        assert len(temp) == count
        assert temp == [(t, [v]) for t, v in zip(ns(want), want.values.tolist(), strict=True)]
        score = rows[f"/score/{series}"]
        assert score == [
            (t, [s, THRESHOLD]) for t, s in zip(ns(want), want.scores.tolist(), strict=True)
        ]
        cloud = rows[f"/cloud/data/{series}"]
        assert len(cloud) == count
        [first] = cloud[0][1]
        assert first == pytest.approx([0.0, want.values[0], 10.0 * int(series)])

    one = expected(batches, "1")
    alerts = rows["/temperature/1/alert"]
    assert alerts == [(t, [v]) for t, v in zip(ns(one, one.alerted), [79.5, 81.0], strict=True)]
    cloud_alerts = rows["/cloud/alert/1"]
    assert [t for t, _ in cloud_alerts] == ns(one, one.alerted)
    assert [p[0][1] for _, p in cloud_alerts] == [79.5, 81.0]
    labelled = np.array([label is not None for label in one.labels])
    assert [t for t, _ in rows["/temperature/1/labelled"]] == ns(one, labelled)
    assert len(rows["/temperature/1/labelled"]) == 3

    assert static["/temperature/2"]["SeriesLines:names"] == ["sensor 2"]
    assert static["/score/2"]["SeriesLines:names"] == ["score 2", "threshold"]
    assert static["/temperature/1/alert"]["SeriesPoints:names"] == ["alert 1"]


def test_two_workers_write_files_that_together_hold_all_points(tmp_path: Path) -> None:
    batches = known_batches()
    path = tmp_path / "sensors.rrd"
    run_view(batches, path, workers=2)

    assert not path.exists()
    files = [tmp_path / "sensors-w0.rrd", tmp_path / "sensors-w1.rrd"]
    readers = [RrdReader(f) for f in files]
    ids = {r.recordings()[0].recording_id for r in readers}
    assert ids == {default_recording_id(APPLICATION_ID)}
    assert [len(r.blueprints()) for r in readers] == [1, 0]

    merged: Rows = defaultdict(list)
    per_file = []
    for f in files:
        rows, _static = read_rows(f)
        per_file.append(sum(len(v) for k, v in rows.items() if k.startswith("/temperature/")))
        for entity, values in rows.items():
            merged[entity].extend(values)
    assert all(n > 0 for n in per_file), per_file
    for series, count in COUNTS:
        assert sorted(t for t, _ in merged[f"/temperature/{series}"]) == ns(
            expected(batches, series)
        )
        assert len(merged[f"/score/{series}"]) == count
        assert len(merged[f"/cloud/data/{series}"]) == count
    assert len(merged["/temperature/1/alert"]) == 2
    assert len(merged["/cloud/alert/1"]) == 2


def test_config_from_env_reads_every_setting(tmp_path: Path) -> None:
    cfg = RerunConfig.from_env(
        Env(
            {
                "VIGIL_RERUN_MODE": "serve",
                "VIGIL_RERUN_PATH": str(tmp_path / "x.rrd"),
                "VIGIL_RERUN_URL": "rerun+https://viewer.example:443/proxy",
                "VIGIL_RERUN_BIND": "0.0.0.0",
                "VIGIL_RERUN_GRPC_PORT": "19876",
                "VIGIL_RERUN_WEB_PORT": "19090",
                "VIGIL_RERUN_APPLICATION_ID": "vigil-test",
                "VIGIL_RERUN_MEMORY_LIMIT": "25%",
            }
        ),
        default_path=tmp_path / "default.rrd",
    )
    assert cfg == RerunConfig(
        mode="serve",
        path=tmp_path / "x.rrd",
        url="rerun+https://viewer.example:443/proxy",
        bind="0.0.0.0",
        grpc_port=19876,
        web_port=19090,
        application_id="vigil-test",
        recording_id=default_recording_id("vigil-test"),
        memory_limit="25%",
    )
    assert cfg.grpc_url == "rerun+http://127.0.0.1:19876/proxy"
    assert cfg.web_url.startswith("http://127.0.0.1:19090/?url=rerun%2Bhttp%3A%2F%2F127.0.0.1")
    default = RerunConfig.from_env(Env({}), default_path=tmp_path / "default.rrd")
    assert (default.mode, default.path, default.bind) == (
        "rrd",
        tmp_path / "default.rrd",
        "127.0.0.1",
    )


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MODE", "file", "expected one of"),
        ("GRPC_PORT", "x", "expected an integer"),
        ("GRPC_PORT", "0", "expected an integer >= 1"),
        ("WEB_PORT", "70000", "expected a port 1..65535"),
        ("URL", "http://127.0.0.1:9876", "expected rerun+http://"),
        ("BIND", "localhost", "expected an IP address"),
        ("MEMORY_LIMIT", "lots", "expected a size"),
        ("WEB_PORT", "9876", "expected a port other than the gRPC port"),
    ],
)
def test_config_from_env_names_the_bad_variable(name: str, value: str, expected: str) -> None:
    env = Env({"VIGIL_RERUN_MODE": "serve", f"VIGIL_RERUN_{name}": value})
    with pytest.raises(ConfigError, match=re.escape(f"VIGIL_RERUN_{name}: {expected}")):
        RerunConfig.from_env(env, default_path=Path("x.rrd"))


def test_sink_refuses_mode_off() -> None:
    with pytest.raises(ValueError, match="mode 'off'"):
        RerunSink(RerunConfig(mode="off"))


def one_reading_each(batches: list[ScoredBatch]) -> list[ScoredBatch]:
    """Every reading of ``batches`` as a batch of its own, in order."""
    return [
        ScoredBatch(
            b.series,
            b.ts_ms[i : i + 1],
            b.values[i : i + 1],
            b.labels[i : i + 1],
            b.raw_scores[i : i + 1],
            b.scores[i : i + 1],
            b.alerted[i : i + 1],
            b.threshold,
            b.detector,
        )
        for b in batches
        for i in range(len(b))
    ]


def in_rounds(singles: list[ScoredBatch]) -> list[ScoredRows]:
    """The readings as the columnar score step gives them: rounds of distinct series."""
    rounds: list[list[ScoredBatch]] = []
    for s in singles:
        # A series met again starts the next round, so each keeps its order.
        if not rounds or any(x.series == s.series for x in rounds[-1]):
            rounds.append([])
        rounds[-1].append(s)
    return [
        ScoredRows(
            tuple(x.series for x in r),
            np.concatenate([x.ts_ms for x in r]),
            np.concatenate([x.values for x in r]),
            sum((x.labels for x in r), ()),
            np.concatenate([x.raw_scores for x in r]),
            np.concatenate([x.scores for x in r]),
            np.concatenate([x.alerted for x in r]),
            THRESHOLD,
            "robust-z",
        )
        for r in rounds
    ]


def run_items(items: list[Any], path: Path, max_series: int) -> None:
    flow = Dataflow("rerun_rows")
    stream = op.input("inp", flow, TestingSource(items))
    op.output("view", stream, RerunSink(RerunConfig(mode="rrd", path=path, max_series=max_series)))
    run_main(flow)


@pytest.mark.parametrize("max_series", [2, 100])
def test_rows_of_many_series_record_as_their_batches(tmp_path: Path, max_series: int) -> None:
    # With a limit of two series drawn one by one, the third one's alerts go to the
    # shared entity: the split of a round between the two must match the batches'.
    spike_of_4 = scored("4", 5, [90.0], {0}, {0: "spike"})
    singles = one_reading_each([*known_batches(), spike_of_4])
    rounds = in_rounds(singles)
    assert len(rounds) < len(singles)
    assert any(len(set(r.series)) > 1 for r in rounds)
    run_items(list(singles), tmp_path / "batches.rrd", max_series)
    run_items(list(rounds), tmp_path / "rows.rrd", max_series)
    want, want_static = read_rows(tmp_path / "batches.rrd")
    got, got_static = read_rows(tmp_path / "rows.rrd")
    assert got == want
    del got_static["/__properties"], want_static["/__properties"]  # the wall-clock start
    assert got_static == want_static
    if max_series == 2:
        assert got["/temperature/other-series"] == [(ns(spike_of_4)[0], [90.0])]
