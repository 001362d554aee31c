"""The pool's queue: one FIFO per hook, taken in turn, so that one hook's slow
or hanging jobs cannot hold every worker when the pool serves other hooks."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..dispatch import Delivery


class FairQueue:
    """Deliveries waiting for a worker (the caller holds the pool's lock).

    :meth:`take` serves the hooks round-robin and skips a hook already running
    on ``limit`` workers: once the pool has seen more than one hook, one worker
    at least stays for the others, even when none of their jobs waits yet (the
    next registration's will). A pool that only ever saw one hook uses every
    worker. :meth:`done` ends a taken job's count (the pool calls it when an
    attempt returns, or when the watchdog writes a hung one off: a hung
    attempt's thread is replaced, so it must not hold its hook's share).
    """

    def __init__(self) -> None:
        self._by_hook: collections.OrderedDict[str, collections.deque[Delivery]] = (
            collections.OrderedDict()
        )
        self._size = 0
        self._running: collections.Counter[str] = collections.Counter()
        self._hooks_seen: set[str] = set()

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Delivery]:
        for jobs in self._by_hook.values():
            yield from jobs

    def append(self, delivery: Delivery) -> None:
        name = delivery.hook.name
        jobs = self._by_hook.get(name)
        if jobs is None:
            jobs = self._by_hook[name] = collections.deque()
        jobs.append(delivery)
        self._size += 1
        self._hooks_seen.add(name)

    def take(self, limit: int) -> Delivery | None:
        """The next job to run, or None (nothing waits, or only hooks at their
        limit while the pool has seen others)."""
        if not self._by_hook:
            return None
        alone = len(self._hooks_seen) == 1
        chosen = next(
            (n for n in self._by_hook if alone or self._running[n] < limit), None
        )
        if chosen is None:
            return None
        jobs = self._by_hook[chosen]
        delivery = jobs.popleft()
        self._size -= 1
        if jobs:
            self._by_hook.move_to_end(chosen)  # the others go first next
        else:
            del self._by_hook[chosen]
        self._running[chosen] += 1
        return delivery

    def done(self, delivery: Delivery) -> None:
        """A job :meth:`take` gave is over (ran, or was not run after all)."""
        name = delivery.hook.name
        self._running[name] -= 1
        if self._running[name] <= 0:
            del self._running[name]

    def clear(self) -> None:
        """Drop the waiting jobs (the running ones keep their counts)."""
        self._by_hook.clear()
        self._size = 0
