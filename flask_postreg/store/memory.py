"""The in-process store: a bounded history of recent outcomes and deliveries."""

from __future__ import annotations

import collections
import datetime as _dt
import math
import threading
from typing import TYPE_CHECKING

from .. import forksafe
from .base import DeliveryRecord
from .base import Store
from .base import checked_limit
from .base import delivery_id
from .base import to_epoch

if TYPE_CHECKING:
    import sqlalchemy as sa

    from ..dispatch import Outcome


class MemoryStore(Store):
    """Keeps the last ``size`` outcomes and deliveries: bounded under any burst.

    With ``counts`` (the memory store proper) it also counts every delivery of
    the process by hook and status. The database store's recent-history copy
    does without: its counts come from the database, and a retry another
    process took would never end here.
    """

    name = "memory"

    def __init__(self, size: int = 1000, *, counts: bool = True) -> None:
        self.size = size
        self.counting = counts
        self._lock = threading.Lock()
        forksafe.register(self)
        self._history: collections.deque[Outcome] = collections.deque(maxlen=size)
        self._deliveries: collections.OrderedDict[tuple[str, str], DeliveryRecord] = (
            collections.OrderedDict()
        )
        self._settings: dict[str, bool] = {}
        self._totals: collections.Counter[tuple[str, str]] = collections.Counter()
        # Status of deliveries still waiting for a retry, kept apart from the
        # bounded history so their count moves when they end, evicted or not.
        self._open: dict[tuple[str, str], str] = {}

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def record(self, outcome: Outcome) -> None:
        key = (outcome.event_id, outcome.hook)
        with self._lock:
            self._history.append(outcome)
            old = self._deliveries.pop(key, None)
            if self.counting:
                before = self._open.pop(key, None)
                if before is not None:
                    self._totals[(outcome.hook, before)] -= 1
                self._totals[(outcome.hook, outcome.status)] += 1
                if outcome.retry_in is not None:
                    self._open[key] = outcome.status
            next_at = None
            if outcome.retry_in is not None:
                next_at = outcome.finished_at + _dt.timedelta(seconds=outcome.retry_in)
            self._deliveries[key] = DeliveryRecord(
                id=delivery_id(outcome.event_id, outcome.hook),
                event_id=outcome.event_id,
                hook=outcome.hook,
                status=outcome.status,
                attempts=outcome.attempt,
                created_at=old.created_at if old else outcome.finished_at,
                updated_at=outcome.finished_at,
                next_attempt_at=next_at,
                duration=outcome.duration,
                error_class=outcome.error_class,
                error=outcome.error,
            )
            while len(self._deliveries) > self.size:
                self._deliveries.popitem(last=False)

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
        ][: checked_limit(limit)]

    def deliveries(
        self,
        *,
        status: str | None = None,
        hook: str | None = None,
        since: _dt.datetime | None = None,
        until: _dt.datetime | None = None,
        limit: int = 50,
    ) -> list[DeliveryRecord]:
        with self._lock:
            items = list(self._deliveries.values())
        # Newest first, as the database store lists them (event ids start with
        # their time), not by latest outcome: a late retry does not jump ahead.
        items.sort(key=lambda d: (d.event_id, d.hook), reverse=True)
        low = -math.inf if since is None else to_epoch(since)  # naive: UTC
        high = math.inf if until is None else to_epoch(until)
        return [
            d
            for d in items
            if (status is None or d.status == status)
            and (hook is None or d.hook == hook)
            and (
                (since is None and until is None)
                or (d.created_at is not None and low <= to_epoch(d.created_at) < high)
            )
        ][: checked_limit(limit)]

    def counts(self) -> dict[tuple[str, str], int]:
        """Every delivery of this process by its latest status (not only the
        ``size`` remembered ones)."""
        with self._lock:
            return {k: n for k, n in self._totals.items() if n > 0}

    def hook_settings(self, connection: sa.Connection | None = None) -> dict[str, bool]:
        with self._lock:
            return dict(self._settings)

    def set_enabled(self, hook: str, enabled: bool) -> None:
        with self._lock:
            self._settings[hook] = enabled

    def __repr__(self) -> str:
        return f"<MemoryStore {len(self._history)} outcomes>"
