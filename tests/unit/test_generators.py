"""The sensor simulator, its in-process source and the vigil-generate CLI."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main

from generators.cli import main
from generators.sensors import (
    KINDS,
    SensorSimConfig,
    SimConfigError,
    iter_chunks,
    iter_messages,
    iter_readings,
)
from generators.source import SimulatorSource, partition_of
from operators.config import ConfigError, Env
from operators.events import RawBatch, Reading
from operators.serde import decode_reading, encode_reading

pytestmark = pytest.mark.timeout(60)

SMALL = SensorSimConfig(count=5_000, seed=11)


def ticks_of(cfg: SensorSimConfig, readings: list[Reading]) -> dict[str, list[int]]:
    """Tick index of each reading, per sensor."""
    out: dict[str, list[int]] = defaultdict(list)
    for r in readings:
        out[r.series].append(round((r.ts - cfg.start).total_seconds() / cfg.interval_s))
    return out


def by_sensor(readings: list[Reading]) -> dict[str, list[Reading]]:
    out: dict[str, list[Reading]] = defaultdict(list)
    for r in readings:
        out[r.series].append(r)
    return out


# -- generation -------------------------------------------------------------------------


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    first = list(iter_messages(SMALL))
    assert first == list(iter_messages(SMALL))
    assert len(first) == SMALL.count
    other = list(iter_messages(replace(SMALL, seed=12)))
    assert len(other) == SMALL.count
    assert sum(a != b for a, b in zip(first, other, strict=True)) > SMALL.count // 2


def test_messages_are_the_bytes_of_encode_reading_and_decode_back() -> None:
    cfg = replace(SMALL, count=20_000, drift_prob=0.002, noise_prob=0.002, stuck_prob=0.002)
    readings = list(iter_readings(cfg))
    messages = list(iter_messages(cfg))
    assert messages == [encode_reading(r) for r in readings]
    assert [decode_reading(k, v) for k, v in messages[:2000]] == readings[:2000]


def test_sub_second_intervals_encode_like_encode_reading() -> None:
    start = datetime(2024, 2, 29, 23, 59, 58, tzinfo=UTC)
    cfg = replace(SMALL, interval_s=0.25, start=start, dropout_prob=0.0)
    readings = list(iter_readings(cfg))
    assert list(iter_messages(cfg)) == [encode_reading(r) for r in readings]
    assert readings[-1].ts == cfg.start + (cfg.count // cfg.sensors - 1) * timedelta(seconds=0.25)


def test_event_time_order_and_sensor_order_within_a_tick() -> None:
    readings = list(iter_readings(SMALL))
    keys = [(r.ts, int(r.series)) for r in readings]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    assert readings[0].ts == SMALL.start


def test_a_sensor_does_not_depend_on_how_many_sensors_there_are() -> None:
    # The chunk length follows the number of sensors, so this also checks chunking.
    three = list(iter_readings(replace(SMALL, sensors=3, count=30_000)))
    seven = [r for r in iter_readings(replace(SMALL, sensors=7, count=70_000)) if int(r.series) < 3]
    n = min(len(three), len(seven))
    assert n > 25_000
    assert three[:n] == seven[:n]


def test_unbounded_count_keeps_going() -> None:
    cfg = replace(SMALL, count=0)
    head = list(itertools.islice(iter_messages(cfg), 40_000))
    assert len(head) == 40_000
    assert head[: SMALL.count] == list(iter_messages(SMALL))


def test_original_preset_statistics() -> None:
    cfg = SensorSimConfig.original(count=100_000, seed=3)
    readings = list(iter_readings(cfg))
    assert len(readings) == cfg.count
    assert {r.label for r in readings} == {None, "spike"}
    normal = np.array([r.value for r in readings if r.label is None])
    assert normal.min() >= 21.0
    assert normal.max() <= 28.0
    assert normal.min() < 21.05
    assert normal.max() > 27.95
    assert abs(normal.mean() - 24.5) < 0.05  # uniform 21-28
    assert abs(normal.std() - 7 / 12**0.5) < 0.05
    spikes = [r for r in readings if r.label == "spike"]
    assert {r.series for r in spikes} == set(cfg.faulty)
    assert all(65.0 <= r.value <= 85.0 for r in spikes)
    faulty = sum(r.series in cfg.faulty for r in readings)
    assert abs(len(spikes) / faulty - 0.03) < 0.005
    # Every sensor reads every second: no gaps.
    for ticks in ticks_of(cfg, readings).values():
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))


def test_default_normal_readings_stay_within_the_original_range() -> None:
    readings = list(iter_readings(SensorSimConfig()))
    normal = np.array([r.value for r in readings if r.label is None])
    assert normal.min() >= 21.0
    assert normal.max() <= 28.0
    assert {r.series for r in readings if r.label == "spike"} == {"0"}
    # A few dozen episodes of each kind in the default run.
    starts = episode_starts(SensorSimConfig(), readings)
    for kind in KINDS:
        assert 10 <= starts[kind] <= 80, (kind, starts)


def episode_starts(cfg: SensorSimConfig, readings: list[Reading]) -> Counter[str]:
    """Episodes of each kind: a labelled reading whose previous tick was not of that kind."""
    starts: Counter[str] = Counter()
    ticks = ticks_of(cfg, readings)
    for sensor, rs in by_sensor(readings).items():
        prev_label, prev_tick = None, -2
        for r, t in zip(rs, ticks[sensor], strict=True):
            if r.label == "dropout" or (
                r.label not in (None, "spike") and (r.label != prev_label or t != prev_tick + 1)
            ):
                starts[r.label] += 1
            prev_label, prev_tick = r.label, t
    return starts


def test_every_kind_is_labelled_at_about_its_probability() -> None:
    probs = {"drift": 0.001, "stuck": 0.002, "dropout": 0.003, "noise": 0.002, "level_shift": 0.001}
    cfg = SensorSimConfig(count=200_000, seed=8, **{f"{k}_prob": p for k, p in probs.items()})
    readings = list(iter_readings(cfg))
    starts = episode_starts(cfg, readings)
    # Episodes start on readings outside an episode: count those (dropped ticks included).
    ticks = ticks_of(cfg, readings)
    free = 0
    for sensor, rs in by_sensor(readings).items():
        covered = sum(r.label not in (None, "spike") for r in rs)
        missing = ticks[sensor][-1] + 1 - len(rs)
        free += ticks[sensor][-1] + 1 - covered - missing
    for kind, p in probs.items():
        assert starts[kind] / free == pytest.approx(p, rel=0.3), kind


def test_episode_shapes() -> None:
    cfg = replace(SMALL, count=100_000, stuck_prob=0.002, dropout_prob=0.002)
    readings = list(iter_readings(cfg))
    ticks = ticks_of(cfg, readings)
    lo, hi = cfg.dropout_len
    gaps = stuck = 0
    for sensor, rs in by_sensor(readings).items():
        for i in range(1, len(rs)):
            step = ticks[sensor][i] - ticks[sensor][i - 1]
            if rs[i].label == "dropout":
                # Readings really are missing before the labelled one.
                assert lo + 1 <= step <= hi + 1
                assert 21.0 <= rs[i].value <= 28.0
                gaps += 1
            else:
                assert step == 1
            if rs[i].label == "stuck" and rs[i - 1].label == "stuck":
                assert rs[i].value == rs[i - 1].value
                stuck += 1
            elif rs[i].label == "stuck":
                assert rs[i].value == rs[i - 1].value  # repeats the last value exactly
    assert gaps > 50
    assert stuck > 1000
    shifted = [r.value for r in readings if r.label == "level_shift"]
    assert np.abs(np.array(shifted) - 24.5).mean() > 4.0
    noisy = [r.value for r in readings if r.label == "noise"]
    assert np.std(noisy) > 2.5


def test_chunks_cover_the_stream_in_order() -> None:
    chunks = list(iter_chunks(replace(SMALL, count=50_000)))
    assert len(chunks) > 1
    assert [c.start for c in chunks] == list(
        itertools.accumulate([0, *(len(c) for c in chunks[:-1])])
    )
    assert sum(len(c) for c in chunks) == 50_000


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sensors": 0}, "sensors"),
        ({"faulty": ("9",)}, "faulty"),
        ({"spike_prob": -0.1}, "spike_prob"),
        ({"noise_prob": 1.5}, "noise_prob"),
        ({"normal_lo": 30.0}, "normal_hi"),
        ({"baseline_amp": 4.0}, "baseline_amp"),
        ({"count": -1}, "count"),
        ({"start": datetime(2024, 1, 1)}, "start"),
        ({"start": datetime(1999, 12, 31, tzinfo=UTC)}, "start"),
        ({"interval_s": 0.0}, "interval_s"),
        ({"stuck_len": (5, 2)}, "stuck_len"),
        ({"noise_std": (-1.0, 2.0)}, "noise_std"),
    ],
)
def test_validate_names_the_field(change: dict[str, object], field: str) -> None:
    cfg = replace(SensorSimConfig(), **change)  # type: ignore[arg-type]
    with pytest.raises(SimConfigError) as info:
        cfg.validate()
    assert info.value.field == field
    assert field in str(info.value)


def test_from_env_reads_every_kind_of_setting() -> None:
    env = Env(
        {
            "VIGIL_SIM_SENSORS": "8",
            "VIGIL_SIM_FAULTY": "2, 7",
            "VIGIL_SIM_SPIKE_PROB": "0.05",
            "VIGIL_SIM_COUNT": "0",
            "VIGIL_SIM_SEED": "9",
            "VIGIL_SIM_START": "2025-06-01T12:00:00",
            "VIGIL_SIM_DRIFT_PROB": "0.001",
            "VIGIL_SIM_LEVEL_SHIFT_DELTA": "1.5,2.5",
            "VIGIL_SIM_DROPOUT_LEN": "3,4",
        }
    )
    cfg = SensorSimConfig.from_env(env)
    assert cfg == replace(
        SensorSimConfig(),
        sensors=8,
        faulty=("2", "7"),
        spike_prob=0.05,
        count=0,
        seed=9,
        start=datetime(2025, 6, 1, 12, tzinfo=UTC),
        drift_prob=0.001,
        level_shift_delta=(1.5, 2.5),
        dropout_len=(3, 4),
    )
    assert env.unknown() == []


def test_from_env_original_preset_and_defaults() -> None:
    assert SensorSimConfig.from_env(Env({})) == SensorSimConfig()
    cfg = SensorSimConfig.from_env(Env({"VIGIL_SIM_PRESET": "original", "VIGIL_SIM_SEED": "4"}))
    assert cfg == SensorSimConfig.original(seed=4)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VIGIL_SIM_SPIKE_PROB", "2"),
        ("VIGIL_SIM_SPIKE_PROB", "often"),
        ("VIGIL_SIM_DRIFT_LEN", "5"),
        ("VIGIL_SIM_DRIFT_LEN", "a,b"),
        ("VIGIL_SIM_FAULTY", "5"),
        ("VIGIL_SIM_START", "yesterday"),
        ("VIGIL_SIM_PRESET", "fancy"),
        ("VIGIL_SIM_SEED", "-3"),
    ],
)
def test_from_env_errors_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        SensorSimConfig.from_env(Env({name: value}))


# -- the in-process source --------------------------------------------------------------


def run_source(source: SimulatorSource) -> list[RawBatch]:
    out: list[RawBatch] = []
    flow = Dataflow("sim")
    op.output("out", op.input("in", flow, source), TestingSink(out))
    run_main(flow)
    return out


def test_source_partitions_like_kafka() -> None:
    cfg = replace(SMALL, count=12_000)
    batches = run_source(SimulatorSource(cfg, partitions=4, batch_size=300))
    by_part: dict[int, list[RawBatch]] = defaultdict(list)
    for b in batches:
        assert b.origin == "simulator"
        assert 0 < len(b) <= 300
        assert len(b.keys) == len(b.offsets) == len(b)
        by_part[b.partition].append(b)
    expected: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for key, value in iter_messages(cfg):
        expected[partition_of(key, 4)].append((key, value))
    assert set(by_part) == set(expected)
    for part, bs in by_part.items():
        bs.sort(key=lambda b: b.offsets[0])
        offsets = [o for b in bs for o in b.offsets]
        assert offsets == list(range(len(offsets)))
        got = [(k, v) for b in bs for k, v in zip(b.keys, b.values, strict=True)]
        assert got == expected[part]


def test_one_and_four_partitions_carry_the_same_messages() -> None:
    def messages(partitions: int) -> Counter[tuple[bytes | None, bytes | None]]:
        batches = run_source(SimulatorSource(SMALL, partitions=partitions, batch_size=128))
        return Counter(m for b in batches for m in zip(b.keys, b.values, strict=True))

    one = messages(1)
    assert sum(one.values()) == SMALL.count
    assert one == messages(4)
    assert one == Counter(iter_messages(SMALL))


def test_partition_without_series_ends_at_once() -> None:
    source = SimulatorSource(SMALL, partitions=4)
    assert source.series_of(2) == []
    part = source.build_part("in", "2", None)
    with pytest.raises(StopIteration):
        part.next_batch()


def drain(part: object) -> list[RawBatch]:
    out: list[RawBatch] = []
    while True:
        try:
            out.extend(part.next_batch())  # type: ignore[attr-defined]
        except StopIteration:
            return out


def test_partition_resumes_at_its_next_offset() -> None:
    source = SimulatorSource(replace(SMALL, count=40_000), partitions=2, batch_size=700)
    full = drain(source.build_part("in", "1", None))
    part = source.build_part("in", "1", None)
    first = part.next_batch()
    first += part.next_batch()
    state = part.snapshot()
    assert state == 1400
    rest = drain(source.build_part("in", "1", state))
    assert rest[0].offsets[0] == 1400
    values = [v for b in first + rest for v in b.values]
    assert values == [v for b in full for v in b.values]
    # Resuming past the end is simply the end.
    with pytest.raises(StopIteration):
        source.build_part("in", "1", 10**9).next_batch()


def test_flow_resumes_from_its_snapshot(tmp_path: Path) -> None:
    cfg = replace(SMALL, count=20_000)
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    seen: list[RawBatch] = []
    fail_after = [15]

    def crash_once(b: RawBatch) -> RawBatch:
        if fail_after[0] == 0:
            fail_after[0] = -1
            raise RuntimeError("simulated crash")
        fail_after[0] -= 1
        return b

    def build() -> Dataflow:
        flow = Dataflow("sim_resume")
        raw = op.input("in", flow, SimulatorSource(cfg, partitions=4, batch_size=250))
        op.output("out", op.map("crash", raw, crash_once), TestingSink(seen))
        return flow

    with pytest.raises(RuntimeError, match=r"sim_resume\.crash"):
        run_main(build(), epoch_interval=timedelta(0), recovery_config=recovery)
    before = len(seen)
    assert before > 0
    run_main(build(), epoch_interval=timedelta(0), recovery_config=recovery)
    resumed = seen[before:]
    # The second run starts from the snapshot, not from offset 0 of every partition...
    assert sum(len(b) for b in resumed) < cfg.count
    # ...and together the runs hold every message (at least once).
    got = {(b.partition, o, v) for b in seen for o, v in zip(b.offsets, b.values, strict=True)}
    assert len(got) == cfg.count
    assert Counter((v for _, _, v in got)) == Counter(v for _, v in iter_messages(cfg))


def test_paced_partition_waits_for_the_wall_clock() -> None:
    # One event per 100 s: the first is due at once, the second not during this test.
    part = SimulatorSource(SMALL, partitions=1, rate=0.01).build_part("in", "0", None)
    [batch] = part.next_batch()
    assert len(batch) == 1
    assert part.next_batch() == []
    awake = part.next_awake()
    assert awake is not None
    assert awake > datetime.now(UTC) + timedelta(seconds=50)


def test_source_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="partitions"):
        SimulatorSource(SMALL, partitions=0)
    with pytest.raises(ValueError, match="rate"):
        SimulatorSource(SMALL, rate=-1.0)
    with pytest.raises(SimConfigError, match="spike_prob"):
        SimulatorSource(replace(SMALL, spike_prob=3.0))


# -- the CLI ----------------------------------------------------------------------------


def test_cli_writes_the_bytes_of_iter_messages(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "readings.jsonl"
    argv = ["sensors", "--count", "3000", "--seed", "7", "--out", str(out)]
    assert main([*argv, "--stuck-prob", "0.01", "--noise-len", "3,5"]) == 0
    cfg = SensorSimConfig(count=3000, seed=7, stuck_prob=0.01, noise_len=(3, 5))
    assert out.read_bytes() == b"".join(v + b"\n" for _k, v in iter_messages(cfg))
    assert "done: sent 3000 delivered 3000 failed 0" in capsys.readouterr().err


def test_cli_original_preset(tmp_path: Path) -> None:
    out = tmp_path / "original.jsonl"
    argv = ["sensors", "--preset", "original", "--count", "500", "--faulty", "1,2"]
    assert main([*argv, "--out", str(out), "--progress-interval", "0"]) == 0
    cfg = SensorSimConfig.original(count=500, faulty=("1", "2"))
    assert out.read_bytes() == b"".join(v + b"\n" for _k, v in iter_messages(cfg))


@pytest.mark.parametrize(
    "argv",
    [
        ["--spike-prob", "3"],
        ["--drift-len", "7"],
        ["--faulty", "12"],
        ["--rate", "-5"],
        ["--kafka-config", "[1]"],
        ["--start", "noon"],
    ],
)
def test_cli_rejects_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sensors", "--out", str(tmp_path / "x.jsonl"), *argv])
    assert info.value.code == 2
    assert argv[0] in capsys.readouterr().err
