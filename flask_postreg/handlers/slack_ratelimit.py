"""Slack's rate limit for incoming messages: about one per second to one
destination, shared by every app and worker of the process."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable

from .. import forksafe
from ..errors import RetryLater


class RateLimiter:
    """At most one message per ``interval`` seconds to one destination.

    :meth:`acquire` reserves the next free slot and sleeps until it, but never
    longer than ``max_wait``: past that it raises :class:`RetryLater` with the
    wait, so a burst queues through retries instead of parking every worker.
    A pause the server asked for (:meth:`defer`, a 429) moves the next slot:
    waited for the same way (a retry sooner than the pause would only burn an
    attempt: the retry schedule caps ``Retry-After``).
    ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        interval: float = 1.0,
        *,
        max_wait: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = interval
        self.max_wait = max_wait
        self.clock = clock
        self.sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()
        forksafe.register(self)

    def _after_fork(self) -> None:
        # A parent's sender may have held the lock at fork time.
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for this caller's slot; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            wait = slot - now
            if wait > self.max_wait:
                raise RetryLater(
                    f"Slack allows about one message per {self.interval:g}s to one"
                    f" destination; the next free slot is in {wait:.1f}s",
                    retry_after=wait,
                )
            self._next = slot + self.interval
        if wait > 0:
            self.sleep(wait)
        return wait

    def defer(self, seconds: float) -> None:
        """The server asked for a pause (429): hold every sender back as well."""
        with self._lock:
            self._next = max(self._next, self.clock() + seconds)


_LIMITERS: dict[str, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(destination: str, interval: float, max_wait: float) -> RateLimiter:
    """The process-wide limiter of one destination, shared by every app: when
    apps ask for different intervals, the longest holds for all of them (the
    destination's limit is one), and the shortest wait in a worker (each app's
    hook timeout counts on its own)."""
    key = hashlib.sha256(destination.encode()).hexdigest()
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = RateLimiter(interval, max_wait=max_wait)
        else:
            with limiter._lock:
                limiter.interval = max(limiter.interval, interval)
                limiter.max_wait = min(limiter.max_wait, max_wait)
        return limiter


def _after_fork() -> None:
    global _LIMITERS_LOCK
    _LIMITERS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)
