"""The bear heart-rate simulator, its in-process source and the vigil-generate bears command."""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from generators.bears import (
    LABELS,
    BearSeries,
    BearSimConfig,
    bear_series,
    iter_messages,
    iter_readings,
)
from generators.cli import main
from generators.hibernation import Season
from generators.simkit import SimConfigError
from generators.source import SimulatorSource
from operators.config import ConfigError, Env
from operators.events import RawBatch
from operators.serde import BEARS, decode_reading, encode_reading

pytestmark = pytest.mark.timeout(60)

SMALL = BearSimConfig(bears=3, count=3_000, seed=11, clean_days=100)
DAY_MS = 86_400_000
# Many bear-years, for rates.
MANY = BearSimConfig(bears=40, seed=5)
MANY_DAYS = 3 * 365


@pytest.fixture(scope="module")
def many() -> list[BearSeries]:
    return bear_series(MANY, MANY_DAYS)


def day_of(cfg: BearSimConfig, ts_ms: np.ndarray) -> np.ndarray:
    start = round(cfg.start.timestamp() * 1000)
    return (ts_ms - start) // DAY_MS


# -- the stream ---------------------------------------------------------------------------


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    first = list(iter_messages(SMALL))
    assert len(first) == SMALL.count
    assert first == list(iter_messages(SMALL))
    other = list(iter_messages(replace(SMALL, seed=12)))
    assert sum(a != b for a, b in zip(first, other, strict=True)) > SMALL.count * 0.9


def test_messages_are_encode_reading_bytes_and_decode_back() -> None:
    cfg = replace(SMALL, count=4_000)
    readings = list(iter_readings(cfg))
    messages = list(iter_messages(cfg))
    assert messages == [encode_reading(r, BEARS) for r in readings]
    assert [decode_reading(k, v, BEARS) for k, v in messages] == readings
    assert messages[0] == (
        b"bear-0",
        b'{"bear_id":"bear-0","ts":"2024-01-01 00:00:00","heart_rate":'
        + str(readings[0].value).encode()
        + b',"label":null}',
    )
    assert {r.label for r in readings} > {None}  # anomalies after the 100 clean days


def test_four_readings_a_day_per_bear_in_event_time_order() -> None:
    readings = list(iter_readings(replace(SMALL, missing_prob=0.0)))
    keys = [(r.ts, r.series) for r in readings]
    assert keys == sorted(keys)
    assert {r.series for r in readings} == {"bear-0", "bear-1", "bear-2"}
    bear0 = [r for r in readings if r.series == "bear-0"]
    assert all(b.ts - a.ts == timedelta(hours=6) for a, b in itertools.pairwise(bear0))
    assert [r.ts.hour for r in bear0[:4]] == [0, 6, 12, 18]
    assert all(r.ts.tzinfo is UTC for r in readings)


def test_a_bear_does_not_depend_on_how_many_bears_or_how_it_is_read() -> None:
    two = bear_series(replace(SMALL, bears=2), 800)
    five = bear_series(replace(SMALL, bears=5), 800)
    for a, b in zip(two, five[:2], strict=True):
        assert a.bear_id == b.bear_id
        assert np.array_equal(a.ts_ms, b.ts_ms)
        assert np.array_equal(a.values, b.values)
        assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(five[0].values[:1000], five[1].values[:1000])
    # The stream read in chunks gives the arrays' readings.
    cfg = replace(SMALL, bears=2, count=0)
    streamed = list(itertools.islice(iter_readings(cfg), 5_000))
    bear1 = [r for r in streamed if r.series == "bear-1"]
    assert [r.value for r in bear1] == two[1].values[: len(bear1)].tolist()
    assert [r.label for r in bear1] == two[1].label_names()[: len(bear1)]
    assert [r.ts_ms for r in bear1] == two[1].ts_ms[: len(bear1)].tolist()


def test_unbounded_count_keeps_going() -> None:
    head = list(itertools.islice(iter_messages(replace(SMALL, count=0)), 6_000))
    assert len(head) == 6_000
    assert head[: SMALL.count] == list(iter_messages(SMALL))


# -- shape --------------------------------------------------------------------------------


def test_the_year_falls_into_hibernation_and_rises_out_of_it(many: list[BearSeries]) -> None:
    clean = replace(MANY, clean_days=MANY_DAYS)
    series = bear_series(replace(clean, bears=10), 365)

    def mean_over(doy_lo: int, doy_hi: int) -> float:
        return float(np.mean([b.values[doy_lo * 4 : doy_hi * 4].mean() for b in series]))

    winter, spring = mean_over(0, 30), mean_over(95, 105)
    summer, october, december = mean_over(185, 215), mean_over(285, 290), mean_over(330, 360)
    assert 17 < winter < 24
    assert 17 < december < 24
    assert 66 < summer < 80
    assert winter < spring < summer
    assert december < october < summer
    # Bears differ: their summer levels spread by several bpm.
    summers = [b.values[185 * 4 : 215 * 4].mean() for b in series]
    assert np.std(summers) > 2.0


def test_the_curve_is_continuous_and_hits_its_levels() -> None:
    season = Season()
    days = np.linspace(0.0, 365.0, 36_501)
    curve = season.curve(days)
    # Steepest at den entry: 25 bpm in 7 days, at most 5.6 bpm a day; no jump anywhere.
    assert np.abs(np.diff(curve)).max() < 0.06
    assert curve.min() == pytest.approx(season.hibernation)
    assert curve.max() == pytest.approx(season.active + season.summer_peak, abs=1e-3)
    assert season.hibernating(days).mean() == pytest.approx((41 + 365 - 303) / 365, abs=0.01)


def test_noise_within_a_day_is_the_per_reading_noise() -> None:
    cfg = BearSimConfig(bears=20, seed=3, decimals=6)
    [*bears] = bear_series(cfg, 300)
    within = np.concatenate([np.diff(b.values.reshape(-1, 4), axis=1).ravel() for b in bears])
    # Readings of one day differ only by N(0, 0.27) each (the curve moves < 0.1 bpm in a day).
    assert np.std(within) / np.sqrt(2) == pytest.approx(cfg.sample_noise, rel=0.1)


# -- labels ---------------------------------------------------------------------------------


def test_the_clean_days_hold_no_anomaly_and_anomalies_follow() -> None:
    for clean in (365, 100):
        cfg = replace(MANY, bears=10, clean_days=clean)
        for b in bear_series(cfg, clean + 200):
            days = day_of(cfg, b.ts_ms)
            assert not b.labels[days < clean].any()
            assert np.all(np.diff(b.ts_ms[days < clean]) == DAY_MS // 4)  # nothing missing
        labelled = sum(int(b.labels.astype(bool).sum()) for b in bear_series(cfg, clean + 200))
        assert labelled > 50


def test_point_anomalies_come_at_their_rate_and_change_the_value(many: list[BearSeries]) -> None:
    counts: Counter[str | None] = Counter()
    eligible = 0
    for b in many:
        names = b.label_names()
        after = day_of(MANY, b.ts_ms) >= MANY.clean_days
        counts.update(n for n, a in zip(names, after.tolist(), strict=True) if a)
        eligible += int(after.sum())
        # A halved or spiked reading leaves its neighbours by the factor.
        for i in np.flatnonzero(np.isin(b.labels, [1, 2])).tolist():
            if 0 < i < len(b) - 1 and b.labels[i - 1] == 0 and b.labels[i + 1] == 0:
                ratio = b.values[i] / (0.5 * (b.values[i - 1] + b.values[i + 1]))
                if b.labels[i] == 1:
                    assert 0.4 < ratio < 0.6
                else:
                    assert 1.3 < ratio < 3.6
    points = counts["halved"] + counts["spike"]
    # Episodes override points, so a little under 0.01 of the readings after the clean year.
    assert points / eligible == pytest.approx(MANY.point_prob, rel=0.15)
    assert counts["halved"] / points == pytest.approx(1 / 3, abs=0.05)


def test_early_arousals_rise_during_hibernation_only(many: list[BearSeries]) -> None:
    episodes = 0
    for b in many:
        on = (b.labels == 3).astype(int)
        starts = np.flatnonzero(np.diff(np.concatenate([[0], on])) == 1)
        ends = np.flatnonzero(np.diff(np.concatenate([on, [0]])) == -1)
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            episodes += 1
            length = e - s + 1
            assert 8 <= length <= 24 or e == len(b) - 1  # 2..6 days of 4 readings
            date = datetime.fromtimestamp(int(b.ts_ms[s]) / 1000, UTC)
            doy = date.timetuple().tm_yday - 1
            assert doy < 70 or doy > 280  # deep hibernation (dates move by days per year)
            rise = b.values[s : e + 1].max() - np.median(b.values[max(s - 8, 0) : s])
            assert rise > 6.0
    bear_years = MANY.bears * (MANY_DAYS - MANY.clean_days) / 365
    # About 100 days of deep hibernation a year at 0.02 a day.
    assert 1.2 < episodes / bear_years < 2.6


def test_missing_days_leave_a_gap_and_label_the_next_reading(many: list[BearSeries]) -> None:
    gaps = 0
    for b in many:
        step = np.diff(b.ts_ms)
        for i in np.flatnonzero(step > DAY_MS // 4).tolist():
            gaps += 1
            missing_days = (step[i] - DAY_MS // 4) / DAY_MS
            assert missing_days in (1, 2, 3)
            assert b.label_names()[i + 1] == "missing"
        assert int((b.labels == 4).sum()) == int((step > DAY_MS // 4).sum())
    days = MANY.bears * (MANY_DAYS - MANY.clean_days)
    assert gaps / days == pytest.approx(MANY.missing_prob, rel=0.3)


def test_every_label_is_a_known_one(many: list[BearSeries]) -> None:
    seen = {n for b in many for n in b.label_names()}
    assert seen == set(LABELS)


# -- settings -----------------------------------------------------------------------------


def test_settings_from_the_environment_and_their_errors() -> None:
    cfg = BearSimConfig.from_env(Env({"VIGIL_SIM_BEARS": "2", "VIGIL_SIM_SPIKE_FACTOR": "2,4"}))
    assert (cfg.bears, cfg.spike_factor) == (2, (2.0, 4.0))
    with pytest.raises(ConfigError, match="VIGIL_SIM_SAMPLES_PER_DAY"):
        BearSimConfig.from_env(Env({"VIGIL_SIM_SAMPLES_PER_DAY": "7"}))
    with pytest.raises(ConfigError, match="VIGIL_SIM_ENTRY_DAYS"):
        BearSimConfig.from_env(Env({"VIGIL_SIM_DEN_ENTRY_DAY": "364"}))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"bears": 0}, "bears"),
        ({"point_prob": 1.5}, "point_prob"),
        ({"missing_len": (3, 1)}, "missing_len"),
        ({"start": datetime(2024, 1, 1)}, "start"),
        ({"pre_den_bpm": 90.0}, "pre_den_bpm"),
        ({"fall_start_day": 300.0}, "den_entry_day"),
    ],
)
def test_invalid_settings_name_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(SimConfigError) as info:
        replace(SMALL, **change).validate()  # type: ignore[arg-type]
    assert info.value.field == field


# -- the in-process source and the command ---------------------------------------------------


def test_simulator_source_feeds_the_same_messages() -> None:
    out: list[RawBatch] = []
    flow = Dataflow("bears")
    batches = op.input("in", flow, SimulatorSource(SMALL, partitions=3, batch_size=256))
    op.output("out", batches, TestingSink(out))
    run_main(flow)
    pairs = [kv for b in out for kv in zip(b.keys, b.values, strict=True)]
    expected = list(iter_messages(SMALL))
    assert sorted(pairs) == sorted(expected)
    # Each bear's messages keep their order, whatever the partition.
    for key in (b"bear-0", b"bear-2"):
        assert [v for k, v in pairs if k == key] == [v for k, v in expected if k == key]


def test_vigil_generate_bears_writes_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "bears.jsonl"
    argv = ["bears", "--count", "40", "--bears", "2", "--seed", "3", "--out", str(out)]
    assert main([*argv, "--progress-interval", "0"]) == 0
    lines = out.read_bytes().splitlines()
    cfg = BearSimConfig(count=40, bears=2, seed=3)
    assert lines == [v for _, v in iter_messages(cfg)]
    with pytest.raises(SystemExit):
        main(["bears", "--missing-len", "4,2"])
