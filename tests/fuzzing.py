"""Test support: how many examples the property-based (hypothesis) tests run.

`make test` runs each property with its own small, bounded count (all of them together in seconds);
``BM_RAY_FUZZ_EXAMPLES=N`` (what `make test-fuzz` sets) loads the ``fuzz`` profile instead, and every
property runs N examples. The profile is registered by tests/conftest.py through :func:`register_profiles`.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_ENV = "BM_RAY_FUZZ_EXAMPLES"
"""Examples per property for a long fuzzing run (unset: the bounded counts of `make test`)."""
FUZZ_PROFILE = "fuzz"


def fuzz_examples() -> int | None:
    """The example count asked for with :data:`FUZZ_ENV`, or None for the bounded counts."""
    value = os.environ.get(FUZZ_ENV, "").strip()
    return int(value) if value else None


def register_profiles() -> None:
    """Register the ``fuzz`` profile and load it when :data:`FUZZ_ENV` is set.

    Long runs draw big inputs, so the time-based health checks (not what these properties test) are off;
    a failure prints its reproduction blob so the example can be kept as an ``@example``.
    """
    examples = fuzz_examples()
    settings.register_profile(
        FUZZ_PROFILE,
        max_examples=examples or 5000,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    if examples:
        settings.load_profile(FUZZ_PROFILE)


def bounded(max_examples: int) -> settings:
    """Settings of one property: `max_examples` in `make test`, the fuzz profile's count under `make test-fuzz`.

    No deadline: a read's time depends on the shared CI machine, and a slow example is no failure.
    """
    if fuzz_examples():
        return settings(deadline=None)  # inherits the loaded fuzz profile's max_examples
    return settings(max_examples=max_examples, deadline=None)
