"""The reconnect backoff and retry schedule shared by the broker, serial and camera workers."""

from __future__ import annotations

from smartbin_daemon.runtime.backoff import Backoff, RetrySchedule


def test_waits_double_up_to_the_cap_and_start_over_after_a_success() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert b.delay == 3.0  # what a log line announces before the next failure
    b.reset()
    assert b.delay == 0.5 and b.next() == 0.5


def test_a_cap_below_the_minimum_never_shortens_the_wait() -> None:
    b = Backoff(2.0, 1.0)
    assert [b.next() for _ in range(3)] == [2.0, 2.0, 2.0]


def test_a_link_is_tried_again_after_the_backoff_and_a_fixed_wait_leaves_the_backoff_alone() -> None:
    now = [100.0]
    retry = RetrySchedule(1.0, 8.0, clock=lambda: now[0])
    retry.now()
    assert retry.due(100.0) and retry.wait_s(100.0) == 0.0
    assert retry.failed() == 1.0 and not retry.due(100.5) and retry.wait_s(100.5) == 0.5 and retry.due(101.0)
    now[0] = 101.0
    assert retry.failed() == 2.0 and retry.next_attempt == 103.0
    assert retry.failed(60.0) == 60.0 and retry.next_attempt == 161.0  # e.g. an incompatible firmware
    assert retry.failed() == 4.0, "the fixed wait did not advance the backoff"
    retry.succeeded()
    assert retry.failed() == 1.0
