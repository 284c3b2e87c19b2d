"""The flow-site simulator, its wire format, its in-process source and its CLI command."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from pathlib import Path

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from generators import cli
from generators.flowsite_physics import Pipe, wetted_area_m2
from generators.flowsites import (
    KINDS,
    LABELS,
    FlowSiteConfig,
    SiteSeries,
    iter_messages,
    iter_readings,
    site_arrays,
)
from generators.simkit import SimConfigError
from generators.source import SimulatorSource, partition_of
from operators.config import ConfigError, Env
from operators.events import RawBatch
from operators.serde import DecodeError
from operators.sitereading import SiteReading, decode_site_reading, encode_site_reading

pytestmark = pytest.mark.timeout(60)

DAY = 288
SMALL = FlowSiteConfig(sites=3, count=3 * 4 * DAY, seed=11)
#: Faults often enough that a few weeks hold every kind at every site.
FAULTY = replace(
    FlowSiteConfig(sites=4, seed=5),
    stuck_prob=2e-3,
    zeros_prob=2e-3,
    dropout_prob=2e-3,
    spike_prob=2e-3,
    drift_prob=5e-4,
    velocity_mismatch_prob=2e-3,
)
NO_FAULTS = replace(FAULTY, **{f"{k}_prob": 0.0 for k in KINDS})
VELOCITY, FLOW, LEVEL, TEMPERATURE, RAINFALL = range(5)


def relative_mismatch(s: SiteSeries) -> np.ndarray:
    """``|velocity x area(level) - flow| / flow`` of each reading."""
    area = wetted_area_m2(s.values[:, LEVEL], s.params.pipe.diameter_mm)
    estimate = s.values[:, VELOCITY] * area * 1000.0
    flow = s.values[:, FLOW]
    return np.abs(estimate - flow) / np.maximum(flow, 1e-9)


def ticks_of(s: SiteSeries, cfg: FlowSiteConfig) -> np.ndarray:
    return (s.ts_ms - round(cfg.start.timestamp() * 1000)) // 300_000


# -- determinism and order --------------------------------------------------------------


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    first = list(iter_messages(SMALL))
    assert len(first) == SMALL.count
    assert first == list(iter_messages(SMALL))
    other = list(iter_messages(replace(SMALL, seed=12)))
    assert sum(a != b for a, b in zip(first, other, strict=True)) > 0.9 * SMALL.count


def test_event_time_order_and_site_order_within_a_tick() -> None:
    readings = list(iter_readings(SMALL))
    keys = [(r.ts_ms, int(r.site_id.removeprefix("site-"))) for r in readings]
    assert keys == sorted(keys)
    assert readings[0].ts.isoformat() == "2024-01-01T00:00:00+00:00"
    steps = {b.ts_ms - a.ts_ms for a, b in itertools.pairwise(readings[::3][:200])}
    assert steps == {300_000}


def test_a_site_does_not_depend_on_how_many_sites_there_are() -> None:
    few = site_arrays(replace(FAULTY, sites=2), 10 * DAY)
    many = site_arrays(replace(FAULTY, sites=5), 10 * DAY)
    for a, b in zip(few, many[:2], strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.ts_ms, b.ts_ms)


def test_site_arrays_hold_the_readings_of_the_stream() -> None:
    cfg = replace(FAULTY, sites=3, count=0)
    arrays = site_arrays(cfg, 6 * DAY)
    end = arrays[0].ts_ms[0] + 6 * DAY * 300_000
    streamed = list(itertools.takewhile(lambda r: r.ts_ms < end, iter_readings(cfg)))
    for s in arrays:
        mine = [r for r in streamed if r.site_id == s.site_id]
        assert [r.ts_ms for r in mine] == s.ts_ms.tolist()
        assert [r.values for r in mine] == [tuple(v) for v in s.values.tolist()]
        assert [r.label for r in mine] == s.label_names


# -- physics ------------------------------------------------------------------------------


def test_wetted_area_of_a_circular_segment() -> None:
    d = 600.0
    full = np.pi * 0.3**2
    got = wetted_area_m2([0.0, 150.0, 300.0, 450.0, 600.0, 700.0], d)
    # The segment of depth d/4: r² acos(1/2) - (r/2) r sin(60°).
    quarter = 0.09 * np.pi / 3 - 0.15 * 0.3 * np.sin(np.pi / 3)
    np.testing.assert_allclose(got, [0, quarter, full / 2, full - quarter, full, full], rtol=1e-9)
    assert np.all(np.diff(wetted_area_m2(np.linspace(0, d, 50), d)) > 0)


def test_manning_depth_and_flow_invert_each_other() -> None:
    pipe = Pipe(450.0, 0.004)
    flows = np.linspace(0.5, pipe.q_max * 0.999, 40)
    depths = pipe.depth_for(flows)
    np.testing.assert_allclose(pipe.manning_flow(depths), flows, rtol=1e-3)
    assert pipe.depth_for(np.array([1.5 * pipe.q_max]))[0] > pipe.diameter_mm  # surcharged


def test_clean_readings_keep_flow_equal_to_velocity_times_wetted_area() -> None:
    for s in site_arrays(NO_FAULTS, 20 * DAY):
        assert not s.labels.any()
        rel = relative_mismatch(s)
        assert np.median(rel) < 0.04
        assert np.quantile(rel, 0.99) < 0.15
        assert s.values[:, [VELOCITY, FLOW, LEVEL, RAINFALL]].min() >= 0.0


def test_dry_weather_has_a_daily_pattern() -> None:
    [s] = site_arrays(replace(NO_FAULTS, sites=1, storms_per_day=0.0), 14 * DAY)
    by_hour = s.values[:, FLOW].reshape(14, 24, 12).mean(axis=(0, 2))
    assert by_hour.max() > 1.5 * by_hour.min()
    assert 0 <= int(by_hour.argmin()) <= 5  # the night
    assert 7 <= int(by_hour.argmax()) <= 21  # the day


def test_storms_raise_flow_level_and_velocity_after_the_rain_and_recede() -> None:
    wet = site_arrays(NO_FAULTS, 30 * DAY)
    dry = site_arrays(replace(NO_FAULTS, storms_per_day=0.0), 30 * DAY)
    for w, d in zip(wet, dry, strict=True):
        assert w.values[:, RAINFALL].sum() > 20.0
        assert not d.values[:, RAINFALL].any()
        # The same sensor noise on both: the difference is the storms alone.
        rise = w.values[:, :3] - d.values[:, :3]
        assert rise.min() >= -0.011
        first_rain = int(np.flatnonzero(w.values[:, RAINFALL] > 0)[0])
        assert np.all(np.abs(rise[: first_rain + 1]) <= 0.011)  # the runoff comes later
        lag = w.params.lag
        assert rise[first_rain + lag + 3, FLOW] > 0.0
        biggest = int(np.argmax(rise[:, FLOW]))
        assert rise[biggest, FLOW] > 0.2 * d.values[biggest, FLOW]
        assert rise[biggest, LEVEL] > 5.0
        assert rise[biggest, VELOCITY] > 0.0
        # Recession: an hour after the wettest tick the storm still adds flow.
        assert rise[min(biggest + 12, len(rise) - 1), FLOW] > 0.0


def test_warm_up_is_clean() -> None:
    for s in site_arrays(replace(FAULTY, warmup_days=3.0), 10 * DAY):
        first = int(np.flatnonzero(s.labels)[0])
        assert ticks_of(s, FAULTY)[first] >= 3 * DAY


# -- faults -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty_and_clean() -> list[tuple[SiteSeries, SiteSeries]]:
    faulty = site_arrays(FAULTY, 40 * DAY)
    clean = site_arrays(NO_FAULTS, 40 * DAY)
    return list(zip(faulty, clean, strict=True))


def episodes(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """``(code, start, end)`` runs of one label, end exclusive."""
    out, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            if labels[start]:
                out.append((int(labels[start]), start, i))
            start = i
    return out


def test_faults_change_only_labelled_readings(
    faulty_and_clean: list[tuple[SiteSeries, SiteSeries]],
) -> None:
    for f, c in faulty_and_clean:
        ticks = ticks_of(f, FAULTY)
        same = c.values[ticks]
        normal = f.labels == 0
        np.testing.assert_array_equal(f.values[normal], same[normal])
        # Only dropouts remove readings, and the first reading after each gap is labelled.
        gaps = np.flatnonzero(np.diff(ticks) > 1) + 1
        assert len(gaps) > 0
        assert {LABELS[int(code)] for code in f.labels[gaps]} == {"dropout"}


def test_every_fault_kind_appears_at_every_site_and_looks_like_its_kind(
    faulty_and_clean: list[tuple[SiteSeries, SiteSeries]],
) -> None:
    seen: Counter[str] = Counter()
    for f, c in faulty_and_clean:
        ticks = ticks_of(f, FAULTY)
        truth = c.values[ticks]
        kinds_here = set()
        for code, a, b in episodes(f.labels):
            kind = LABELS[code]
            assert kind is not None
            kinds_here.add(kind)
            seen[kind] += 1
            got, true = f.values[a:b], truth[a:b]
            diff = got != true
            changed = np.flatnonzero(diff.any(axis=0))
            # Back-to-back episodes of one kind (possibly on other channels) make one run.
            if kind == "dropout":
                assert b - a == 1
                assert ticks[a] - ticks[a - 1] >= 4
            elif kind == "stuck":
                rows, cols = np.nonzero(diff)
                assert np.all(got[rows, cols] == f.values[a - 1 + rows, cols])  # repeats
                assert set(changed.tolist()) <= {VELOCITY, FLOW, LEVEL}
            elif kind == "zeros":
                assert np.all(got[diff] == 0.0)
                assert diff.any()
            elif kind == "spike":
                assert np.all(got[diff] > true[diff])
                assert np.all(diff.sum(axis=1) == 1)
                assert b - a <= 6
            elif kind == "drift":
                assert set(changed.tolist()) <= {VELOCITY, LEVEL}
                gap = np.abs(got - true)[:, changed].max(axis=1)
                assert gap[-1] > 5 * max(gap[: max((b - a) // 10, 1)].mean(), 1e-3)
            else:
                assert changed.tolist() == [VELOCITY]
                ratio = got[:, VELOCITY] / np.maximum(true[:, VELOCITY], 1e-9)
                assert np.all((ratio < 0.62) | (ratio > 1.6))
        assert kinds_here == set(KINDS)
    assert min(seen.values()) >= 8


def test_faults_break_the_physics_that_clean_readings_keep(
    faulty_and_clean: list[tuple[SiteSeries, SiteSeries]],
) -> None:
    for f, _ in faulty_and_clean:
        rel = relative_mismatch(f)
        mismatch = f.labels == LABELS.index("velocity_mismatch")
        assert np.median(rel[mismatch]) > 0.4
        assert np.median(rel[f.labels == 0]) < 0.04


# -- wire format --------------------------------------------------------------------------


def test_messages_are_the_bytes_of_encode_site_reading_and_decode_back() -> None:
    cfg = replace(FAULTY, count=4 * 6 * DAY)
    readings = list(iter_readings(cfg))
    messages = list(iter_messages(cfg))
    assert messages == [encode_site_reading(r) for r in readings]
    assert [decode_site_reading(k, v) for k, v in messages] == readings
    assert {r.label for r in readings} >= {None, "spike"}


GOOD = (
    b'{"site_id":"site-2","ts":"2024-03-01 10:05:00","velocity":0.5,"flow":12,'
    b'"level":80.5,"temperature":13.2,"rainfall":0.0,"label":null}'
)


def test_decode_accepts_integers_iso_times_and_no_key() -> None:
    r = decode_site_reading(
        None, GOOD.replace(b"2024-03-01 10:05:00", b"2024-03-01T11:05:00+01:00")
    )
    assert r == SiteReading("site-2", 1709287500000, 0.5, 12.0, 80.5, 13.2, 0.0, None)
    assert isinstance(r.flow, float)


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        (b"site-2", None, "payload: expected a JSON object, got an empty message"),
        (b"site-2", b"{not json", "payload: expected JSON, got invalid JSON"),
        (b"site-2", b"[1, 2]", "payload: expected a JSON object, got list"),
        (b"site-2", GOOD.replace(b'"site_id":"site-2",', b""), "field 'site_id': expected a non"),
        (
            b"site-2",
            GOOD.replace(b'"site-2"', b"7"),
            "field 'site_id': expected a non-empty string",
        ),
        (b"site-9", GOOD, "key: expected the site id 'site-2', got b'site-9'"),
        (b"site-2", GOOD.replace(b'"ts":"2024-03-01 10:05:00",', b""), "field 'ts': missing"),
        (b"site-2", GOOD.replace(b"2024-03-01 10:05:00", b"yesterday"), "field 'ts': expected"),
        (b"site-2", GOOD.replace(b"2024-03-01", b"1970-01-01"), "between 2000 and 2100"),
        (b"site-2", GOOD.replace(b'"velocity":0.5,', b""), "field 'velocity': missing"),
        (
            b"site-2",
            GOOD.replace(b":0.5", b':"0.5"'),
            "field 'velocity': expected a number, got str",
        ),
        (b"site-2", GOOD.replace(b"80.5", b"true"), "field 'level': expected a number, got bool"),
        (b"site-2", GOOD.replace(b"13.2", b"null"), "field 'temperature': expected a number, got"),
        (b"site-2", GOOD.replace(b"12,", b"1e999,"), "invalid JSON (number is infinity"),
        (b"site-2", GOOD.replace(b"0.0,", b"NaN,"), "payload: expected JSON, got invalid JSON"),
        (b"site-2", GOOD.replace(b"null}", b"3}"), "field 'label': expected a string or null"),
    ],
)
def test_decode_errors_say_what_is_wrong(key: bytes, value: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_site_reading(key, value)
    assert reason in str(info.value)


# -- settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sites": 0}, "sites"),
        ({"seed": -1}, "seed"),
        ({"count": -5}, "count"),
        ({"spike_prob": 1.5}, "spike_prob"),
        ({"stuck_prob": 0.6, "zeros_prob": 0.6}, "stuck_prob"),
        ({"drift_len": (0, 4)}, "drift_len"),
        ({"storm_depth": (0.0, 3.0)}, "storm_depth"),
        ({"mismatch_factor": (0.5, 1.2)}, "mismatch_factor"),
        ({"storms_per_day": -1.0}, "storms_per_day"),
    ],
)
def test_validate_names_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(SimConfigError) as info:
        replace(FlowSiteConfig(), **change).validate()  # type: ignore[arg-type]
    assert info.value.field == field


def test_from_env_reads_settings_and_names_a_bad_variable() -> None:
    env = Env({"VIGIL_SIM_SITES": "7", "VIGIL_SIM_SPIKE_LEN": "2,5", "VIGIL_SIM_SEED": "3"})
    cfg = FlowSiteConfig.from_env(env)
    assert (cfg.sites, cfg.spike_len, cfg.seed) == (7, (2, 5), 3)
    assert FlowSiteConfig.from_env(Env({})) == FlowSiteConfig()
    with pytest.raises(ConfigError, match="VIGIL_SIM_SPIKE_LEN"):
        FlowSiteConfig.from_env(Env({"VIGIL_SIM_SPIKE_LEN": "5,2"}))


# -- source and CLI -----------------------------------------------------------------------


def test_simulator_source_carries_the_messages_partitioned_like_kafka() -> None:
    cfg = replace(FAULTY, count=4 * DAY * 4)
    out: list[RawBatch] = []
    flow = Dataflow("flowsites_source")
    op.output("out", op.input("in", flow, SimulatorSource(cfg, partitions=3)), TestingSink(out))
    run_main(flow)
    got: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
    for batch in out:
        got.setdefault(batch.partition, []).extend(zip(batch.keys, batch.values, strict=True))
    expected: dict[int, list[tuple[bytes, bytes]]] = {}
    for key, value in iter_messages(cfg):
        expected.setdefault(partition_of(key, 3), []).append((key, value))
    assert got == expected


def test_cli_writes_the_bytes_of_iter_messages(tmp_path: Path) -> None:
    out = tmp_path / "sites.jsonl"
    options = ["--count", "600", "--sites", "2", "--seed", "4", "--spike-prob", "0.01"]
    argv = ["flowsites", *options, "--out", str(out), "--progress-interval", "0"]
    assert cli.main(argv) == 0
    cfg = replace(FlowSiteConfig(), count=600, sites=2, seed=4, spike_prob=0.01)
    assert out.read_bytes() == b"".join(v + b"\n" for _, v in iter_messages(cfg))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--spike-len", "4,1"], "--spike-len: expected a range lo,hi of readings"),
        (["--sites", "0"], "--sites: expected at least 1 site"),
        (["--rate", "-1"], "--rate: expected >= 0 events/s"),
    ],
)
def test_cli_rejects_bad_options(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["flowsites", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
