"""Waiting out an unreachable service: bounded, jittered exponential back-off and outage logs.

A flow that loses its broker or its Milvus server should wait for it, say so,
and carry on where it was; only a service gone for longer than an operator
allows should stop the flow, loudly, so that Bytewax recovery replays what was
not finished. Two pieces serve the Kafka clients and the memory bank alike:

* :class:`OutageLog` reports an outage: a WARNING when it starts, then at most
  one every ``every_s`` while it lasts, and a WARNING with its length when the
  service answers again.
* :class:`Retrying` runs a call again after a transient failure, waiting
  ``first_s``, then ``factor`` times longer each time up to ``max_s`` (each
  wait shortened by a seeded random share of at most ``jitter``, so processes
  started alike do not retry in step, yet a run is reproducible), and gives
  up with :class:`GaveUpError` once the service has failed for ``give_up_s``.
  A ``recover`` hook runs before each new attempt (to reload what a restarted
  server forgot).

Prometheus counters (default registry, served with the other ``vigil_*``
metrics): ``vigil_retries_total{service, call}``, attempts that failed and
were retried, and ``vigil_retry_give_ups_total{service, call}``.

Example:
    >>> policy = RetryPolicy(first_s=1.0, factor=2.0, max_s=5.0, jitter=0.0)
    >>> [policy.delay(n) for n in range(1, 6)]
    [1.0, 2.0, 4.0, 5.0, 5.0]
    >>> calls = []
    >>> def flaky() -> str:
    ...     calls.append(1)
    ...     if len(calls) < 3:
    ...         raise ConnectionError("refused")
    ...     return "ok"
    >>> retrying = Retrying("doc", policy, transient=lambda e: isinstance(e, ConnectionError),
    ...                     sleep=lambda s: None)
    >>> retrying.call("ping", flaky), len(calls)
    ('ok', 3)

"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import Counter

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRIES = Counter(
    "vigil_retries_total",
    "Calls to an external service that failed transiently and were tried again.",
    ["service", "call"],
)
GIVE_UPS = Counter(
    "vigil_retry_give_ups_total",
    "Calls abandoned after their service failed for longer than the give-up time.",
    ["service", "call"],
)


class GaveUpError(RuntimeError):
    """A service failed for longer than the give-up time; the flow must stop and recover."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to wait between attempts, and when to stop trying.

    Attributes:
        first_s: Wait after the first failure.
        factor: Each further wait is this many times the one before ...
        max_s: ... up to this.
        give_up_s: Stop once the call has failed for this long (``None``: never).
            An attempt under way at that moment is awaited first, so the flow
            stops at most one request timeout later.
        jitter: Largest share taken off a wait at random (0: none).
        seed: Seed of that randomness.
        setting: Name of the setting that holds ``give_up_s``, for messages.

    """

    first_s: float = 0.5
    factor: float = 2.0
    max_s: float = 30.0
    give_up_s: float | None = 300.0
    jitter: float = 0.2
    seed: int = 0
    setting: str = ""

    def __post_init__(self) -> None:
        if self.first_s <= 0 or self.factor < 1 or self.max_s < self.first_s:
            msg = (
                "RetryPolicy: expected first_s > 0, factor >= 1 and max_s >= first_s, got "
                f"{self.first_s}, {self.factor}, {self.max_s}"
            )
            raise ValueError(msg)
        if self.give_up_s is not None and self.give_up_s < 0:
            raise ValueError(f"RetryPolicy.give_up_s: expected >= 0 or None, got {self.give_up_s}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"RetryPolicy.jitter: expected 0 <= jitter < 1, got {self.jitter}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``failures`` failures in a row (before the random share).

        Example:
            >>> RetryPolicy(first_s=0.5, jitter=0.0).delay(3)
            2.0

        """
        base = min(self.max_s, self.first_s * self.factor ** max(failures - 1, 0))
        if rng is None or self.jitter == 0.0:
            return base
        return base * (1.0 - self.jitter * rng.random())


class OutageLog:
    """Rate-limited WARNING lines about one service being unreachable, and its return.

    Args:
        log: The logger of the module that talks to the service.
        where: Who is waiting (``"kafka sink alerts_out -> 'alerts'"``), starting each line.
        service: What it waits for (``"broker"``).
        every_s: Least seconds between two lines about the same outage.
        clock: Monotonic seconds (tests pass their own).

    Example:
        >>> now = [0.0]
        >>> outage = OutageLog(logger, "doc", every_s=10.0, clock=lambda: now[0])
        >>> outage.failed("refused"), outage.failed("refused")
        (True, False)
        >>> now[0] = 12.0
        >>> outage.failed("refused"), outage.errors, outage.down_s()
        (True, 3, 12.0)
        >>> outage.recovered()
        12.0
        >>> outage.active
        False

    """

    def __init__(
        self,
        log: logging.Logger,
        where: str,
        service: str = "service",
        *,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.where = where
        self.service = service
        self.every_s = every_s
        self.errors = 0
        self._clock = clock
        self._since: float | None = None
        self._last_line = 0.0

    @property
    def active(self) -> bool:
        """True from the first failure until :meth:`recovered`."""
        return self._since is not None

    def down_s(self) -> float:
        """Seconds since the outage began (0 when there is none)."""
        return 0.0 if self._since is None else self._clock() - self._since

    def failed(self, reason: str, action: str = "waiting for it") -> bool:
        """Note a failure; returns True when a line was logged for it."""
        now = self._clock()
        self.errors += 1
        if self._since is None:
            self._since = self._last_line = now
            self.log.warning(
                "%s: %s unreachable (%s); %s", self.where, self.service, reason, action
            )
            return True
        if now - self._last_line < self.every_s:
            return False
        self._last_line = now
        self.log.warning(
            "%s: %s still unreachable after %.0f s (%d errors; last: %s); %s",
            self.where,
            self.service,
            now - self._since,
            self.errors,
            reason,
            action,
        )
        return True

    def recovered(self) -> float:
        """End the outage (logged when there was one); returns how long it lasted, in seconds."""
        if self._since is None:
            return 0.0
        down = self._clock() - self._since
        self.log.warning(
            "%s: %s reachable again after %.1f s (%d errors)",
            self.where,
            self.service,
            down,
            self.errors,
        )
        self._since = None
        self.errors = 0
        return down


class Retrying:
    """Run calls to one service, retrying transient failures with back-off.

    Args:
        service: The service, as metrics and messages name it (``"milvus"``).
        policy: Waits and give-up time.
        transient: Whether a failure may pass if tried again; any other
            exception propagates at once (bugs, malformed requests).
        recover: Called before each new attempt; a transient failure in it
            counts as a failed attempt.
        where: Who is waiting, starting each outage line (default: ``service``).
        log: Where the outage lines go.
        sleep: Waits (tests pass their own).
        clock: Monotonic seconds.

    """

    def __init__(
        self,
        service: str,
        policy: RetryPolicy,
        *,
        transient: Callable[[BaseException], bool],
        recover: Callable[[], None] | None = None,
        where: str = "",
        log: logging.Logger = logger,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.service = service
        self.policy = policy
        self._transient = transient
        self._recover = recover
        self._sleep = sleep
        self._clock = clock
        self._rng = random.Random(policy.seed)
        self.outage = OutageLog(log, where or service, service, clock=clock)

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, tried again after transient failures until it succeeds or the time is up.

        Args:
            what: The call, for metrics and messages (``"search"``).
            fn: The call itself.

        Raises:
            GaveUpError: the service failed transiently for ``give_up_s``; the
                last failure is its cause.

        """
        failures = 0
        started = self._clock()
        while True:
            try:
                if failures and self._recover is not None:
                    self._recover()
                result = fn()
            except Exception as exc:
                if not self._transient(exc):
                    raise
                failures += 1
                self._failed(what, exc, failures, self._clock() - started)
                continue
            if failures:
                self.outage.recovered()
            return result

    def _failed(self, what: str, exc: Exception, failures: int, elapsed: float) -> None:
        policy = self.policy
        if policy.give_up_s is not None and elapsed >= policy.give_up_s:
            GIVE_UPS.labels(service=self.service, call=what).inc()
            setting = f" ({policy.setting})" if policy.setting else ""
            msg = (
                f"{self.service}: {what}: gave up after {failures} failed attempts in "
                f"{elapsed:.0f} s, the give-up time{setting} being {policy.give_up_s:g} s: {exc}"
            )
            self.outage.log.error("%s", msg)
            raise GaveUpError(msg) from exc
        RETRIES.labels(service=self.service, call=what).inc()
        wait = policy.delay(failures, self._rng)
        if policy.give_up_s is not None:
            wait = max(0.0, min(wait, policy.give_up_s - elapsed))
        self.outage.failed(
            f"{what} failed: {_short(exc)}",
            f"attempt {failures} failed, retrying in {wait:.1f} s",
        )
        self._sleep(wait)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
