"""Back-off, give-up and outage lines of operators.retry, on a fake clock."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from operators.retry import GIVE_UPS, RETRIES, GaveUpError, OutageLog, Retrying, RetryPolicy

pytestmark = pytest.mark.timeout(30)


class FakeTime:
    """A monotonic clock that only sleeping moves."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, exc: Exception, time: FakeTime, took_s: float = 0.0) -> Callable[[], str]:
    """A call that fails ``times`` times (each taking ``took_s``), then returns "ok"."""
    calls = [0]

    def call() -> str:
        calls[0] += 1
        time.now += took_s
        if calls[0] <= times:
            raise exc
        return "ok"

    return call


def retrying(
    policy: RetryPolicy, time: FakeTime, recover: Callable[[], None] | None = None
) -> Retrying:
    return Retrying(
        "unit",
        policy,
        transient=lambda e: isinstance(e, ConnectionError),
        recover=recover,
        sleep=time.sleep,
        clock=time.clock,
    )


def test_waits_grow_exponentially_up_to_the_cap_without_jitter() -> None:
    time = FakeTime()
    policy = RetryPolicy(first_s=1.0, factor=2.0, max_s=5.0, give_up_s=None, jitter=0.0)
    assert retrying(policy, time).call("x", failing(5, ConnectionError("no"), time)) == "ok"
    assert time.sleeps == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_jitter_shortens_waits_by_at_most_its_share_and_repeats_with_the_seed() -> None:
    policy = RetryPolicy(first_s=1.0, factor=2.0, max_s=8.0, give_up_s=None, jitter=0.25, seed=7)
    runs = []
    for _ in range(2):
        time = FakeTime()
        retrying(policy, time).call("x", failing(4, ConnectionError("no"), time))
        runs.append(time.sleeps)
    assert runs[0] == runs[1]
    for wait, base in zip(runs[0], [1.0, 2.0, 4.0, 8.0], strict=True):
        assert 0.75 * base <= wait <= base
    assert runs[0] != [1.0, 2.0, 4.0, 8.0]


def test_gives_up_after_the_give_up_time_with_the_last_failure_as_cause() -> None:
    time = FakeTime()
    policy = RetryPolicy(first_s=1.0, max_s=4.0, give_up_s=10.0, jitter=0.0, setting="VIGIL_X")
    before = GIVE_UPS.labels(service="unit", call="search")._value.get()
    with pytest.raises(GaveUpError, match=r"search: gave up .* give-up time \(VIGIL_X\)") as info:
        retrying(policy, time).call("search", failing(100, ConnectionError("refused"), time, 1.0))
    assert isinstance(info.value.__cause__, ConnectionError)
    assert 10.0 <= time.now <= 11.0  # the last wait is cut to the give-up time
    assert GIVE_UPS.labels(service="unit", call="search")._value.get() == before + 1


def test_zero_give_up_time_fails_at_the_first_transient_failure() -> None:
    time = FakeTime()
    with pytest.raises(GaveUpError):
        retrying(RetryPolicy(give_up_s=0.0), time).call("x", failing(1, ConnectionError(), time))
    assert time.sleeps == []


def test_other_failures_propagate_at_once() -> None:
    time = FakeTime()
    with pytest.raises(ValueError, match="malformed"):
        retrying(RetryPolicy(), time).call("x", failing(1, ValueError("malformed"), time))
    assert time.sleeps == []


def test_recover_runs_before_each_retry_and_its_failures_count_as_attempts() -> None:
    time = FakeTime()
    recovered: list[float] = []
    outcomes = iter([ConnectionError("still down"), None, None])

    def recover() -> None:
        recovered.append(time.now)
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    policy = RetryPolicy(first_s=1.0, give_up_s=None, jitter=0.0)
    before = RETRIES.labels(service="unit", call="y")._value.get()
    result = retrying(policy, time, recover=recover).call("y", failing(2, ConnectionError(), time))
    assert result == "ok"
    assert recovered == [1.0, 3.0, 7.0]  # after waits of 1, 2 and 4 s
    assert RETRIES.labels(service="unit", call="y")._value.get() == before + 3


def test_outage_lines_are_rate_limited_and_the_end_is_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    time = FakeTime()
    outage = OutageLog(logging.getLogger("unit"), "sink", "broker", every_s=10.0, clock=time.clock)
    caplog.set_level(logging.WARNING, logger="unit")
    for _ in range(30):  # a failure a second for 30 s
        outage.failed("timed out")
        time.now += 1.0
    assert outage.recovered() == 30.0
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "sink: broker unreachable (timed out); waiting for it"
    assert [line.split(" after ")[1][:4] for line in lines[1:-1]] == ["10 s", "20 s"]
    assert lines[-1] == "sink: broker reachable again after 30.0 s (30 errors)"
    assert not outage.active
    assert outage.recovered() == 0.0  # no outage, no line
    assert len(caplog.records) == len(lines)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="first_s > 0"):
        RetryPolicy(first_s=0.0)
    with pytest.raises(ValueError, match="give_up_s"):
        RetryPolicy(give_up_s=-1.0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.0)
