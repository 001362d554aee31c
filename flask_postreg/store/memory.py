"""The in-process store: a bounded history of recent outcomes and counters."""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from ..dispatch import Outcome


class Store:
    """What every store offers the dispatcher and the tooling."""

    #: True when deliveries survive a restart (the poller owns retries then).
    durable = False

    def record(self, outcome: Outcome) -> None:
        raise NotImplementedError

    def recent(
        self, *, status: str | None = None, hook: str | None = None, limit: int = 50
    ) -> list[Outcome]:
        raise NotImplementedError

    def counts(self) -> dict[tuple[str, str], int]:
        """Attempts so far by (hook name, status)."""
        raise NotImplementedError


class MemoryStore(Store):
    """Keeps the last ``size`` outcomes; memory stays bounded under any burst."""

    def __init__(self, size: int = 1000) -> None:
        self._lock = threading.Lock()
        self._history: collections.deque[Outcome] = collections.deque(maxlen=size)
        self._counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def record(self, outcome: Outcome) -> None:
        with self._lock:
            self._history.append(outcome)
            self._counts[(outcome.hook, outcome.status)] += 1

    def recent(
        self, *, status: str | None = None, hook: str | None = None, limit: int = 50
    ) -> list[Outcome]:
        with self._lock:
            items = list(self._history)
        items.reverse()
        return [
            o
            for o in items
            if (status is None or o.status == status)
            and (hook is None or o.hook == hook)
        ][:limit]

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counts)

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._history)} outcomes>"

    def stats(self) -> dict[str, Any]:
        return {"history": len(self._history)}
