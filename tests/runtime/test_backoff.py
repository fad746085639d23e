"""The reconnect backoff shared by the broker, serial and camera workers."""

from __future__ import annotations

from smartbin_daemon.runtime.backoff import Backoff


def test_waits_double_up_to_the_cap_and_start_over_after_a_success() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.delay == 3.0  # what a log line announces before the next failure
    b.reset()
    assert b.delay == 0.5 and b.next() == 0.5


def test_a_cap_below_the_minimum_never_shortens_the_wait() -> None:
    b = Backoff(2.0, 1.0)
    assert [b.next() for _ in range(3)] == [2.0, 2.0, 2.0]
