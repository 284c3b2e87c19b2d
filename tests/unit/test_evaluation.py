from __future__ import annotations

import pytest

from operators.evaluation import Episode, episodes_of, evaluate

pytestmark = pytest.mark.timeout(30)


def test_episodes_split_on_label_change_and_series() -> None:
    readings = [
        ("a", 0, None),
        ("a", 1, "drift"),
        ("b", 1, "spike"),
        ("a", 2, "drift"),
        ("a", 3, "stuck"),
        ("a", 4, None),
        ("b", 2, None),
        ("b", 3, "spike"),
    ]
    assert episodes_of(readings) == [
        Episode("a", "drift", 1, 2),
        Episode("a", "stuck", 3, 3),
        Episode("b", "spike", 1, 1),
        Episode("b", "spike", 3, 3),
    ]


def test_recall_precision_delay_and_grace() -> None:
    readings = [("s", t * 1000, "level_shift" if 10 <= t < 20 else None) for t in range(100)]
    alerts = [("s", 12_000), ("s", 14_000), ("s", 24_000), ("s", 60_000), ("x", 1)]
    r = evaluate(readings, alerts, grace_s=5)
    assert (r.episodes, r.detected, r.alerts, r.true_alerts, r.false_alerts) == (1, 1, 5, 3, 2)
    assert r.delays_s == (2.0,)
    assert r.false_per_1000 == pytest.approx(20.0)
    assert r.by_kind == {"level_shift": (1, 1)}
    assert evaluate(readings, alerts, grace_s=0).true_alerts == 2


def test_no_alerts_means_zero_recall() -> None:
    r = evaluate([("s", 0, "spike")], [])
    assert (r.recall, r.precision, r.f1) == (0.0, 1.0, 0.0)
