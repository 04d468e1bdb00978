"""Waiting, one way each: retrying with backoff after a failure, polling until a condition holds, serving until
a signal. Every loop in ehrstream that waits goes through one of these three.

Backoff is tenacity's (exponential from ``first_s``, capped at ``max_s``); the caller says what to retry, for how
long, and how to sleep (the sink sleeps by polling its paused consumer, so it keeps its group membership).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, stop_never, wait_exponential
from tenacity.stop import stop_base


class _StopWhenSet(stop_base):
    """tenacity stop condition: an event was set (the process is shutting down)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.event.is_set()


def backoff(
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    *,
    first_s: float,
    max_s: float = 10.0,
    give_up_after_s: float | None = None,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] | None = None,
    on_retry: Callable[[BaseException, float, float], None] | None = None,
) -> Retrying:
    """A tenacity ``Retrying`` (``for attempt in backoff(...): with attempt: ...``) that retries ``retry_on``, waiting
    ``first_s``, then twice that, up to ``max_s``; it gives up (re-raising the last error) after ``give_up_after_s``
    or once ``stop`` is set. ``on_retry(error, seconds so far, next wait)`` runs before each wait."""
    condition: Any = stop_never
    if give_up_after_s is not None:
        condition = stop_after_delay(give_up_after_s)
    if stop is not None:
        condition = condition | _StopWhenSet(stop) if give_up_after_s is not None else _StopWhenSet(stop)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            error = state.outcome.exception()
            if error is not None:
                on_retry(error, state.seconds_since_start or 0.0, state.upcoming_sleep)

    def wait(seconds: float) -> None:
        if sleep is not None:
            sleep(seconds)
        elif stop is not None:
            stop.wait(seconds)  # a set event cuts the wait short
        else:
            time.sleep(seconds)

    return Retrying(
        retry=retry_if_exception_type(retry_on),
        wait=wait_exponential(multiplier=first_s, min=first_s, max=max_s),
        stop=condition,
        sleep=wait,
        before_sleep=before_sleep,
        reraise=True,
    )


def poll_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 1.0) -> None:
    """Call ``condition`` every ``interval_s`` until it is true; TimeoutError naming ``what`` after ``timeout_s``.
    ``condition`` may raise to stop early (a process it depends on died)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def run_until_signalled(tick: Callable[[], bool] | None = None, interval_s: float = 1.0) -> None:
    """Serve until SIGTERM or SIGINT (Ctrl-C), calling ``tick`` every ``interval_s``: it returns False to stop, or
    raises. The caller's ``finally`` then shuts down what it started. Call from the main thread."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(interval_s):
        if tick is not None and not tick():
            return
