from __future__ import annotations

import pickle

import numpy as np
import pytest

from operators.alerting import AlertPolicy, AlertState, alert_id, apply_policy
from operators.events import DetectedBatch, SeriesBatch

pytestmark = pytest.mark.timeout(30)
T0 = 1_704_067_200_000


def detected(
    scores: list[float], features: list[int] | None = None, start_s: int = 0
) -> DetectedBatch:
    n = len(scores)
    values = np.array([24.0 + (30.0 if s >= 0.999 else 0.0) for s in scores])
    batch = SeriesBatch(
        "s1",
        T0 + 1000 * np.arange(start_s, start_s + n, dtype=np.int64),
        values,
        tuple("spike" if s >= 0.999 else None for s in scores),
    )
    return DetectedBatch(
        batch,
        np.array(scores) * 10,
        np.array(scores, dtype=float),
        np.array(features or [0] * n, dtype=np.int8),
        ("value", "stuck", "gap"),
        "robust-z",
        np.full(n, 5.0),
    )


def test_threshold_and_severity() -> None:
    out = apply_policy(AlertPolicy(cooldown_s=0), AlertState(), detected([0.1, 0.9995, 0.2, 1.0]))
    assert out.alerted.tolist() == [False, True, False, True]
    assert [a.severity for a in out.alerts] == ["warning", "critical"]
    assert [a.label for a in out.alerts] == ["spike", "spike"]
    assert "outside the recent range 24.00..24.00" in out.alerts[0].reason


def test_persistence_across_batches() -> None:
    policy, state = AlertPolicy(persistence=3, cooldown_s=0), AlertState()
    first = apply_policy(policy, state, detected([0.1, 1.0, 1.0]))
    second = apply_policy(policy, state, detected([1.0, 0.0, 1.0], start_s=3))
    assert not first.alerted.any()
    assert second.alerted.tolist() == [True, False, False]


def test_cooldown_suppresses_then_releases() -> None:
    policy, state = AlertPolicy(cooldown_s=3), AlertState()
    out = apply_policy(policy, state, detected([1.0, 1.0, 1.0, 0.0, 1.0]))
    # Alert at t=0; t=1 and t=2 are cooling; t=4 is past 0 + 3 s.
    assert out.alerted.tolist() == [True, False, False, False, True]


def test_alert_ids_are_stable_and_distinct() -> None:
    a = apply_policy(AlertPolicy(cooldown_s=0), AlertState(), detected([1.0, 1.0]))
    b = apply_policy(AlertPolicy(cooldown_s=0), AlertState(), detected([1.0, 1.0]))
    assert [x.alert_id for x in a.alerts] == [x.alert_id for x in b.alerts]
    assert len({x.alert_id for x in a.alerts}) == 2
    assert a.alerts[0].alert_id == alert_id("s1", T0, "robust-z")


def test_reasons_name_the_feature() -> None:
    out = apply_policy(AlertPolicy(cooldown_s=0), AlertState(), detected([1.0, 1.0], [1, 2]))
    assert out.alerts[0].reason.startswith("stuck: value 54.00 repeated for 5 readings")
    assert out.alerts[1].reason.startswith("gap: no readings for 5 s")


def test_reasons_carry_the_detector_parts() -> None:
    det = detected([0.1, 1.0])
    det = DetectedBatch(
        det.batch,
        det.raw_scores,
        det.scores,
        det.features,
        det.feature_names,
        "context",
        det.details,
        {"rare": np.array([0.1, 6.5]), "new": np.array([0.2, 4.25])},
    )
    out = apply_policy(AlertPolicy(cooldown_s=0), AlertState(), det)
    assert out.alerts[0].reason.endswith("; parts: rare 6.50, new 4.25")


def test_state_pickles_and_policy_validates() -> None:
    state = AlertState()
    apply_policy(AlertPolicy(), state, detected([0.1, 1.0]))
    assert pickle.loads(pickle.dumps(state)).last_alert_ms == T0 + 1000
    for bad in (
        AlertPolicy(threshold=1.5),
        AlertPolicy(critical=0.5),
        AlertPolicy(persistence=0),
        AlertPolicy(cooldown_s=-1),
    ):
        with pytest.raises(ValueError, match="alert policy: expected"):
            bad.validate()
