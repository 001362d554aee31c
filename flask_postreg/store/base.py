"""What every store offers the dispatcher and the tooling (CLI, tests)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Any

from ..errors import PostRegError

if TYPE_CHECKING:
    import sqlalchemy as sa

    from ..dispatch import Delivery
    from ..dispatch import Outcome


def to_datetime(ts: float | None) -> _dt.datetime | None:
    return None if ts is None else _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)


def to_epoch(when: _dt.datetime) -> float:
    """Epoch seconds; a naive time (an event built by hand) is taken as UTC."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


def checked_limit(limit: int) -> int:
    """``limit`` for a listing: a negative one means nothing alike everywhere
    (no limit on SQLite, an error on PostgreSQL, a slice in memory)."""
    if limit < 0:
        raise ValueError(f"limit must be 0 or more, not {limit}")
    return limit


def delivery_id(event_id: str, hook: str) -> str:
    """A delivery's id in every store: its event and hook, as one string."""
    return f"{event_id}:{hook}"


@dataclasses.dataclass(frozen=True)
class DeliveryRecord:
    """One (event, hook) delivery as the tooling shows it.

    .. versionadded:: 0.1
    """

    id: str
    event_id: str
    hook: str
    status: str
    attempts: int
    created_at: _dt.datetime | None
    updated_at: _dt.datetime | None
    next_attempt_at: _dt.datetime | None = None
    duration: float | None = None
    error_class: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("created_at", "updated_at", "next_attempt_at"):
            value = data[key]
            data[key] = None if value is None else value.isoformat()
        return data


class Store:
    """The store interface; see :class:`MemoryStore` and :class:`DatabaseStore`."""

    #: True when deliveries survive a restart (a poller re-runs them).
    durable = False
    name = "?"

    def prepare(self, delivery: Delivery) -> Delivery | None:
        """Just before an attempt runs; None means another worker owns it."""
        return delivery

    def record(self, outcome: Outcome) -> None:
        """Persist one attempt's outcome (the dispatcher calls it from workers)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make every recorded outcome durable now (no-op unless batched)."""

    @property
    def lost_outcomes(self) -> int:
        """Outcomes this process could not write, in all (none unless batched)."""
        return 0

    def recent(
        self, *, status: str | None = None, hook: str | None = None, limit: int = 50
    ) -> list[Outcome]:
        """Attempts recorded by this process, newest first."""
        raise NotImplementedError

    def deliveries(
        self,
        *,
        status: str | None = None,
        hook: str | None = None,
        since: _dt.datetime | None = None,
        until: _dt.datetime | None = None,
        limit: int = 50,
    ) -> list[DeliveryRecord]:
        """Deliveries by status / hook / creation time, newest first."""
        raise NotImplementedError

    def counts(self) -> dict[tuple[str, str], int]:
        """Deliveries by (hook name, status)."""
        raise NotImplementedError

    def retry(self, ids: Iterable[str]) -> int:
        """Send these dead (or pending) deliveries back to pending, due now."""
        raise PostRegError(
            "retrying deliveries needs the database store (POSTREG_STORE='database')"
        )

    def retry_dead(self, hook: str | None = None) -> int:
        """Send every dead delivery (of ``hook``) back to pending, due now."""
        raise PostRegError(
            "retrying deliveries needs the database store (POSTREG_STORE='database')"
        )

    def prune(self, older_than_days: float, *, batch_size: int = 500) -> int:
        """Delete succeeded deliveries older than that (and their events),
        ``batch_size`` events per transaction."""
        return 0

    def hook_settings(self, connection: sa.Connection | None = None) -> dict[str, bool]:
        """Hooks enabled or disabled at run time, by name (read on
        ``connection``, in its transaction, when the store has tables)."""
        return {}

    def set_enabled(self, hook: str, enabled: bool) -> None:
        raise NotImplementedError
