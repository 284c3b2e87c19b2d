"""The fuzz tests' hypothesis settings: deterministic, no example database, bounded."""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def fuzz(max_examples: int) -> settings:
    """Settings of a fuzz test: the same examples on every run, so CI is reproducible.

    ``derandomize`` draws from a seed fixed by the test's source; with no
    database nothing is replayed from, or written to, ``.hypothesis/``.
    """
    return settings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
    )
