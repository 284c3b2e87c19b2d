"""The metric simulator, its in-process source and the vigil-generate metrics command."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from generators.cli import main
from generators.metrics import KINDS, MetricSimConfig, iter_messages, iter_readings
from generators.simkit import SimConfigError
from generators.source import SimulatorSource, partition_of
from operators.config import ConfigError, Env
from operators.events import RawBatch, Reading
from operators.serde import METRICS, decode_reading, encode_reading

pytestmark = pytest.mark.timeout(60)

SMALL = MetricSimConfig(count=6_000, seed=11)
MINUTE = timedelta(minutes=1)


def by_series(readings: list[Reading]) -> dict[str, list[Reading]]:
    out: dict[str, list[Reading]] = defaultdict(list)
    for r in readings:
        out[r.series].append(r)
    return out


def tick(cfg: MetricSimConfig, r: Reading) -> int:
    return round((r.ts - cfg.start) / timedelta(seconds=cfg.interval_s))


def clean_trend(cfg: MetricSimConfig, r: Reading) -> float:
    t = tick(cfg, r) * cfg.interval_s / 60.0
    return 500.0 + 0.05 * t + 200.0 * math.sin(2 * math.pi * t / 1440.0)


# -- both shapes ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["spiky", "trend"])
def test_same_seed_same_bytes_and_different_seed_differs(shape: str) -> None:
    cfg = replace(SMALL, shape=shape)
    first = list(iter_messages(cfg))
    assert len(first) == cfg.count
    assert first == list(iter_messages(cfg))
    other = list(iter_messages(replace(cfg, seed=12)))
    differ = sum(a != b for a, b in zip(first, other, strict=True))
    # Spiky readings differ only where either stream has a spike; trend readings all differ.
    assert differ > (cfg.count // 2 if shape == "trend" else 60)


@pytest.mark.parametrize("shape", ["spiky", "trend"])
def test_messages_are_the_bytes_of_encode_reading_and_decode_back(shape: str) -> None:
    cfg = replace(SMALL, shape=shape, count=30_000, stuck_prob=0.003, dropout_prob=0.003)
    readings = list(iter_readings(cfg))
    messages = list(iter_messages(cfg))
    assert messages == [encode_reading(r, METRICS) for r in readings]
    assert [decode_reading(k, v, METRICS) for k, v in messages[:3000]] == readings[:3000]
    assert messages[0][1].startswith(b'{"series":"0","ts":"2024-01-01 00:00:00","value":')


def test_one_reading_per_minute_per_series_in_event_time_order() -> None:
    readings = list(iter_readings(replace(SMALL, series=4)))
    assert readings[0].ts == datetime(2024, 1, 1, tzinfo=UTC)
    assert all(r.ts.tzinfo is UTC for r in readings)
    keys = [(r.ts, int(r.series)) for r in readings]
    assert keys == sorted(keys)
    assert {r.series for r in readings} == {"0", "1", "2", "3"}
    for rs in by_series(readings).values():
        assert all(b.ts - a.ts == MINUTE for a, b in itertools.pairwise(rs))


@pytest.mark.parametrize("shape", ["spiky", "trend"])
def test_a_series_does_not_depend_on_how_many_series_there_are(shape: str) -> None:
    # The chunk length follows the number of series, so this also checks chunking.
    two = list(iter_readings(replace(SMALL, shape=shape, series=2, count=40_000)))
    five = [
        r
        for r in iter_readings(replace(SMALL, shape=shape, series=5, count=100_000))
        if int(r.series) < 2
    ]
    n = min(len(two), len(five))
    assert n > 35_000
    assert two[:n] == five[:n]


def test_unbounded_count_keeps_going() -> None:
    head = list(itertools.islice(iter_messages(replace(SMALL, count=0)), 40_000))
    assert len(head) == 40_000
    assert head[: SMALL.count] == list(iter_messages(SMALL))


# -- spiky --------------------------------------------------------------------------------


@pytest.mark.parametrize("prob", [0.01, 0.1])
def test_spiky_is_the_sine_plus_spikes_at_their_rate_labelled_by_size(prob: float) -> None:
    cfg = MetricSimConfig(count=200_000, series=2, seed=3, spike_prob=prob)
    readings = list(iter_readings(cfg))
    ticks = np.array([tick(cfg, r) for r in readings])
    values = np.array([r.value for r in readings])
    added = values - np.round(np.sin(0.1 * ticks), cfg.decimals)
    labelled = np.array([r.label == "spike" for r in readings])
    assert {r.label for r in readings} == {None, "spike"}
    tol = 2e-4  # the sine and the value are each rounded to 4 places
    spiked = added > tol
    assert spiked.mean() == pytest.approx(prob, rel=0.1)
    assert labelled.mean() == pytest.approx(prob * (5.0 - 1.0) / 5.0, rel=0.1)
    assert added.min() > -tol  # spikes only add
    assert added[labelled].min() >= 1.0 - tol
    assert added[spiked & ~labelled].max() < 1.0 + tol
    assert added.max() <= 5.0 + tol


def test_spike_label_min_sets_what_counts_as_a_spike() -> None:
    base = MetricSimConfig(count=20_000, seed=4)
    labels = [r.label for r in iter_readings(base)]
    strict = [r.label for r in iter_readings(replace(base, spike_label_min=2.5))]
    values = [r.value for r in iter_readings(base)]
    assert values == [r.value for r in iter_readings(replace(base, spike_label_min=2.5))]
    assert 0 < strict.count("spike") < labels.count("spike")


# -- trend --------------------------------------------------------------------------------


def test_trend_normal_readings_follow_the_formula_within_the_noise() -> None:
    cfg = MetricSimConfig(shape="trend", count=60_000, seed=8)
    readings = list(iter_readings(cfg))
    normal = [r for r in readings if r.label is None]
    err = np.array([r.value - clean_trend(cfg, r) for r in normal])
    assert np.abs(err).max() <= 50.0 + 1e-4
    assert err.std() == pytest.approx(100 / 12**0.5, rel=0.05)  # uniform(-50, 50)
    assert abs(err.mean()) < 1.0


def test_trend_labels_every_kind_with_its_shape() -> None:
    cfg = MetricSimConfig(shape="trend", count=150_000, seed=6)
    readings = list(iter_readings(cfg))
    assert Counter(r.label for r in readings).keys() == {None, "spike", *KINDS}
    shifts = gaps = stuck = 0
    for rs in by_series(readings).values():
        for prev, r in itertools.pairwise(rs):
            off = abs(r.value - clean_trend(cfg, r))
            if r.label == "spike":
                assert 100.0 - 1e-4 <= off <= 350.0 + 1e-4  # 150..300, noise 50
            elif r.label == "level_shift":
                assert 100.0 - 1e-4 <= off <= 350.0 + 1e-4
                shifts += 1
            elif r.label == "stuck":
                assert r.value == prev.value  # repeats the last value exactly
                stuck += 1
            step = tick(cfg, r) - tick(cfg, prev)
            if r.label == "dropout":
                lo, hi = cfg.dropout_len
                assert lo + 1 <= step <= hi + 1  # readings really are missing
                gaps += 1
            else:
                assert step == 1
    assert shifts > 2000
    assert stuck > 1000
    assert gaps > 20


def test_trend_episodes_start_at_about_their_probability() -> None:
    cfg = MetricSimConfig(shape="trend", count=300_000, seed=2)
    readings = list(iter_readings(cfg))
    starts: Counter[str | None] = Counter()
    for rs in by_series(readings).values():
        for prev, r in itertools.pairwise(rs):
            if r.label in KINDS and (r.label != prev.label or r.label == "dropout"):
                starts[r.label] += 1
    for kind in KINDS:
        # Episodes only start outside another: about 10 % of readings are inside one.
        assert starts[kind] / len(readings) == pytest.approx(5e-4, rel=0.3), (kind, starts)


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"shape": "flat"}, "shape"),
        ({"series": 0}, "series"),
        ({"spike_prob": 1.5}, "spike_prob"),
        ({"spike_max": 0.0}, "spike_max"),
        ({"spike_label_min": -1.0}, "spike_label_min"),
        ({"noise": -1.0}, "noise"),
        ({"count": -1}, "count"),
        ({"start": datetime(2024, 1, 1)}, "start"),
        ({"interval_s": 0.0}, "interval_s"),
        ({"stuck_len": (5, 2)}, "stuck_len"),
        ({"spike_size": (3.0, 1.0)}, "spike_size"),
        ({"level_shift_prob": 0.6, "stuck_prob": 0.6}, "level_shift_prob"),
    ],
)
def test_validate_names_the_field(change: dict[str, object], field: str) -> None:
    cfg = replace(MetricSimConfig(), **change)  # type: ignore[arg-type]
    with pytest.raises(SimConfigError) as info:
        cfg.validate()
    assert info.value.field == field
    assert str(info.value).startswith(f"metric simulator: {field}: expected")


def test_from_env_reads_shape_and_simulator_settings() -> None:
    env = Env(
        {
            "VIGIL_METRICS_SHAPE": "trend",
            "VIGIL_SIM_SERIES": "7",
            "VIGIL_SIM_SPIKE_PROB": "0.1",
            "VIGIL_SIM_START": "2025-06-01T12:00:00",
            "VIGIL_SIM_SPIKE_SIZE": "10,20",
            "VIGIL_SIM_DROPOUT_LEN": "3,4",
        }
    )
    assert MetricSimConfig.from_env(env) == MetricSimConfig(
        shape="trend",
        series=7,
        spike_prob=0.1,
        start=datetime(2025, 6, 1, 12, tzinfo=UTC),
        spike_size=(10.0, 20.0),
        dropout_len=(3, 4),
    )
    assert env.unknown() == []
    assert MetricSimConfig.from_env(Env({})) == MetricSimConfig()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VIGIL_METRICS_SHAPE", "flat"),
        ("VIGIL_SIM_SPIKE_PROB", "2"),
        ("VIGIL_SIM_STUCK_LEN", "5"),
        ("VIGIL_SIM_START", "noon"),
        ("VIGIL_SIM_SERIES", "x"),
    ],
)
def test_from_env_errors_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        MetricSimConfig.from_env(Env({name: value}))


# -- the in-process source and the CLI ----------------------------------------------------


def run_source(source: SimulatorSource) -> list[RawBatch]:
    out: list[RawBatch] = []
    flow = Dataflow("sim")
    op.output("out", op.map("n", op.input("in", flow, source), lambda b: b), TestingSink(out))
    run_main(flow)
    return out


@pytest.mark.parametrize("partitions", [1, 3])
def test_source_partitions_the_messages_like_kafka(partitions: int) -> None:
    cfg = replace(SMALL, shape="trend", series=5)
    batches = run_source(SimulatorSource(cfg, partitions=partitions, batch_size=256))
    got: dict[int, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
    for b in sorted(batches, key=lambda b: (b.partition, b.offsets[0])):
        assert b.offsets == tuple(range(len(got[b.partition]), len(got[b.partition]) + len(b)))
        got[b.partition].extend(zip(b.keys, b.values, strict=True))
    expected: dict[int, list[tuple[bytes | None, bytes | None]]] = defaultdict(list)
    for key, value in iter_messages(cfg):
        expected[partition_of(key, partitions)].append((key, value))
    assert got == expected


def test_cli_writes_the_bytes_of_iter_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "metrics.jsonl"
    argv = ["metrics", "--count", "3000", "--seed", "7", "--series", "4", "--shape", "trend"]
    assert main([*argv, "--spike-prob", "0.05", "--stuck-len", "3,5", "--out", str(out)]) == 0
    cfg = MetricSimConfig(
        shape="trend", count=3000, seed=7, series=4, spike_prob=0.05, stuck_len=(3, 5)
    )
    assert out.read_bytes() == b"".join(v + b"\n" for _k, v in iter_messages(cfg))
    assert "done: sent 3000 delivered 3000 failed 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [["--spike-prob", "3"], ["--shape", "flat"], ["--series", "0"], ["--stuck-len", "7"]],
)
def test_cli_rejects_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["metrics", "--out", str(tmp_path / "x.jsonl"), *argv])
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err
