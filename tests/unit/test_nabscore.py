from __future__ import annotations

import math

import numpy as np
import pytest

from operators.nabscore import (
    PROFILES,
    STANDARD,
    NabTally,
    merge_windows,
    probation_rows,
    scaled_sigmoid,
    tally_series,
    windows_from_labels,
    windows_from_times,
)

pytestmark = pytest.mark.timeout(30)

LOW_FP, LOW_FN = PROFILES[1], PROFILES[2]
# 400 rows: the first 60 are probation; one window of 10 rows, 100..109.
N = 400
WINDOW = [(100, 109)]


def detect(*rows: int, n: int = N) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[list(rows)] = True
    return mask


def sigma(x: float) -> float:
    # 2 / (1 + exp(5x)) - 1 written another way, to check against by hand.
    return -math.tanh(2.5 * x)


def test_sigmoid_and_probation_by_hand() -> None:
    xs = [-1.0, -0.1, 0.0, 0.5, 3.0]
    assert scaled_sigmoid(xs).tolist() == pytest.approx([sigma(x) for x in xs])
    assert scaled_sigmoid(3.01).item() == -1.0
    assert [probation_rows(n) for n in (0, 6, 7, 400, 5000, 5007, 10_320)] == [
        0,
        0,
        1,
        60,
        750,
        750,
        750,
    ]


def test_earliest_detection_earns_full_reward_and_only_it_counts() -> None:
    t = tally_series(N, WINDOW, detect(100, 105, 109))
    assert (t.windows, t.detected, t.false_detections) == (1, 1, 0)
    assert t.reward == pytest.approx(1.0)
    assert [t.raw(p) for p in PROFILES] == pytest.approx([1.0, 1.0, 1.0])
    assert t.normalised(STANDARD) == pytest.approx(100.0)


def test_late_detection_earns_less() -> None:
    last = tally_series(N, WINDOW, detect(109))
    middle = tally_series(N, WINDOW, detect(104))
    assert last.reward == pytest.approx(sigma(-1 / 10) / sigma(-1))  # about 0.248
    assert middle.reward == pytest.approx(sigma(-6 / 10) / sigma(-1))  # about 0.917
    assert last.normalised(STANDARD) == pytest.approx(100 * (last.reward + 1) / 2)


def test_a_miss_costs_fn_weight() -> None:
    t = tally_series(N, WINDOW, detect())
    assert (t.windows, t.detected) == (1, 0)
    assert [t.raw(p) for p in PROFILES] == [-1.0, -1.0, -2.0]
    assert [t.null(p) for p in PROFILES] == [-1.0, -1.0, -2.0]
    assert t.normalised(LOW_FN) == 0.0


def test_false_detection_before_any_window_costs_full_fp_weight() -> None:
    t = tally_series(N, WINDOW, detect(80, 100))
    assert (t.detected, t.false_detections, t.penalty) == (1, 1, -1.0)
    assert [t.raw(p) for p in PROFILES] == pytest.approx([0.89, 0.78, 0.89])
    no_windows = tally_series(N, [], detect(80, 81))
    assert (no_windows.windows, no_windows.penalty) == (0, -2.0)
    assert no_windows.normalised(STANDARD) is None


def test_false_detection_right_after_a_window_is_cheap() -> None:
    right_after = tally_series(N, WINDOW, detect(100, 110))
    assert right_after.penalty == pytest.approx(sigma(1 / 9))  # about -0.27
    assert right_after.raw(STANDARD) == pytest.approx(1 + 0.11 * sigma(1 / 9))
    further = tally_series(N, WINDOW, detect(100, 118))
    assert further.penalty == pytest.approx(sigma(9 / 9))
    far = tally_series(N, WINDOW, detect(100, 140, 141))
    assert far.penalty == -2.0  # past 3 window lengths: every detection costs in full
    one_row = tally_series(N, [(100, 100)], detect(100, 101))
    assert one_row.penalty == -1.0


def test_probation_is_neither_rewarded_nor_penalised() -> None:
    # Rows 0..59 are probation. A window inside it is not scored.
    inside = tally_series(N, [(20, 30)], detect(10, 25))
    assert inside == NabTally()
    # A window that ends after it is scored; a detection in its probation part is ignored.
    straddling = [(50, 69)]
    missed = tally_series(N, straddling, detect(55))
    assert (missed.windows, missed.detected, missed.false_detections) == (1, 0, 0)
    caught = tally_series(N, straddling, detect(55, 60))
    assert caught.reward == pytest.approx(sigma(-10 / 20) / sigma(-1))
    # A window in probation still makes the detections right after it cheap.
    after = tally_series(N, [(20, 59)], detect(61))
    assert after.penalty == pytest.approx(sigma(2 / 39))


def test_tallies_add_across_series() -> None:
    a = tally_series(N, WINDOW, detect(100))
    b = tally_series(N, WINDOW, detect(80))
    both = a + b
    assert (both.windows, both.detected, both.false_detections) == (2, 1, 1)
    assert both.raw(STANDARD) == pytest.approx(a.raw(STANDARD) + b.raw(STANDARD))
    assert both.normalised(STANDARD) == pytest.approx(100 * (1 - 1 - 0.11 + 2) / 4)
    summary = both.summary()
    assert summary["standard"] == {"score": 47.25, "raw": -0.11, "null": -2.0, "perfect": 2.0}


def test_windows_from_labels_centre_merge_and_clip() -> None:
    labelled = np.zeros(200, dtype=bool)
    labelled[[1, 100, 104]] = True
    # Three episodes: 200 * 10 % / 3 = 7 rows each; the first is clipped at row 0,
    # the two others overlap and merge.
    assert windows_from_labels(labelled) == [(0, 4), (97, 107)]
    labelled[:] = False
    labelled[50:80] = True  # longer than 10 % of the rows: the window is the episode
    assert windows_from_labels(labelled) == [(50, 79)]
    assert windows_from_labels(np.zeros(10, dtype=bool)) == []


def test_windows_from_times_and_merge() -> None:
    ts = np.arange(0, 60_000, 1000, dtype=np.int64)
    assert windows_from_times(ts, [(10_500, 12_000), (0, 0), (70_000, 80_000)]) == [
        (0, 0),
        (11, 12),
    ]
    assert merge_windows([(5, 9), (9, 12), (13, 14)], 100) == [(5, 12), (13, 14)]


def test_bad_geometry_fails_loudly() -> None:
    with pytest.raises(ValueError, match="detections: expected 400 rows"):
        tally_series(N, WINDOW, detect(n=10))
    with pytest.raises(ValueError, match="sorted, disjoint"):
        tally_series(N, [(100, 120), (110, 130)], detect())
    with pytest.raises(ValueError, match="sorted, disjoint"):
        tally_series(N, [(390, 400)], detect())
