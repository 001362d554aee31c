"""The operators' queries on the outbox: list, count, retry, prune, switch hooks.

Each function runs on the caller's connection, in the caller's transaction.
None of them is on a registration's path: listing ``dead`` or ``succeeded``
deliveries reads the deliveries table without an index of its own (an index
costs every registration a write, DESIGN section 6). Pruning walks the old end of
the primary keys instead, in short transactions.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any

import sqlalchemy as sa

from ..dispatch import DEAD
from ..dispatch import PENDING
from ..dispatch import SUCCEEDED
from ..events import event_id_floor
from .base import DeliveryRecord
from .base import delivery_id
from .base import to_datetime
from .base import to_epoch
from .tables import DEAD_ONLY
from .tables import Tables

#: Seconds an event id's time may run ahead of its deliveries' ``created_at``
#: (both are read in the same write, microseconds apart; this covers the clock
#: being stepped back in between).
CLOCK_STEP = 3600.0


def deliveries(
    conn: sa.Connection,
    d: sa.Table,
    *,
    status: str | None = None,
    hook: str | None = None,
    since: _dt.datetime | None = None,
    until: _dt.datetime | None = None,
    limit: int = 50,
    event_id: str | None = None,
) -> list[DeliveryRecord]:
    """Delivery rows, newest first, filtered by whichever arguments are given.

    Newest first is the primary key backwards (event ids start with their
    time): the first ``limit`` rows found end the read, and a time window is a
    range of that key, instead of a sort of the whole table.
    """
    query = sa.select(d).order_by(d.c.event_id.desc(), d.c.hook.desc()).limit(limit)
    if status == DEAD:  # as a literal: SQLite then uses the partial index
        query = query.where(sa.text(DEAD_ONLY))
    elif status is not None:
        query = query.where(d.c.status == status)
    if hook is not None:
        query = query.where(d.c.hook == hook)
    if event_id is not None:
        query = query.where(d.c.event_id == event_id)
    if since is not None:
        start = to_epoch(since)
        query = query.where(
            d.c.created_at >= start,
            d.c.event_id >= event_id_floor(start - CLOCK_STEP),
        )
    if until is not None:
        end = to_epoch(until)
        query = query.where(
            d.c.created_at < end, d.c.event_id < event_id_floor(end + CLOCK_STEP)
        )
    return [_record(row) for row in conn.execute(query)]


def counts(conn: sa.Connection, d: sa.Table) -> dict[tuple[str, str], int]:
    """Rows per ``(hook, status)``."""
    query = sa.select(d.c.hook, d.c.status, sa.func.count()).group_by(
        d.c.hook, d.c.status
    )
    return {(hook, status): n for hook, status, n in conn.execute(query)}


def dead_hooks(conn: sa.Connection, d: sa.Table) -> list[str]:
    """The hooks with dead deliveries (read from the partial index of dead
    letters: its condition is the literal the index was made with)."""
    query = sa.select(d.c.hook).where(sa.text(DEAD_ONLY)).distinct()
    return sorted(conn.scalars(query))


def requeue(
    conn: sa.Connection, d: sa.Table, cond: Any, rows: list[dict[str, Any]] | None
) -> int:
    """Rows matching ``cond`` back to pending, due now, with a fresh attempt
    budget and a new claim token; ``rows`` are the parameters of ``cond``, one
    statement each. How many rows changed."""
    now = time.time()
    stmt = (
        sa.update(d)
        .where(cond)
        .values(
            status=PENDING,
            attempts=0,
            claim=d.c.claim + 1,
            locked_until=None,
            next_attempt_at=now,
            updated_at=now,
        )
    )
    if rows is None:
        return int(conn.execute(stmt).rowcount or 0)
    # One by one: executemany reports no reliable rowcount everywhere.
    return sum(int(conn.execute(stmt, row).rowcount or 0) for row in rows)


def prune_batch(
    conn: sa.Connection, t: Tables, cutoff: float, after: str, limit: int
) -> tuple[int, str | None]:
    """One short transaction of a prune: of the first ``limit`` events after id
    ``after`` made before ``cutoff`` (epoch), delete the succeeded deliveries last
    changed before it, then the events left with none. How many deliveries went,
    and the id to continue after (None: done).

    Event ids start with their creation time, so the events made before the
    cutoff are a range of the primary key, walked once, in order.
    """
    d, e = t.deliveries, t.events
    ids = list(
        conn.scalars(
            sa.select(e.c.id)
            .where(e.c.id > after, e.c.id < event_id_floor(cutoff))
            .order_by(e.c.id)
            .limit(limit)
        )
    )
    if not ids:
        return 0, None
    deleted = conn.execute(
        sa.delete(d).where(
            d.c.event_id.in_(ids), d.c.status == SUCCEEDED, d.c.updated_at < cutoff
        )
    ).rowcount
    orphan = ~sa.exists().where(d.c.event_id == e.c.id)
    conn.execute(sa.delete(e).where(e.c.id.in_(ids), e.c.created_at < cutoff, orphan))
    return int(deleted or 0), ids[-1] if len(ids) == limit else None


def hook_settings(conn: sa.Connection, h: sa.Table) -> dict[str, bool]:
    """Hooks switched on or off by the CLI, by name."""
    return {row.hook: bool(row.enabled) for row in conn.execute(sa.select(h))}


def set_enabled(conn: sa.Connection, h: sa.Table, hook: str, enabled: bool) -> None:
    """Switch ``hook`` on or off (an update, or an insert the first time)."""
    now = time.time()
    updated = conn.execute(
        sa.update(h).where(h.c.hook == hook).values(enabled=enabled, updated_at=now)
    ).rowcount
    if not updated:
        conn.execute(sa.insert(h).values(hook=hook, enabled=enabled, updated_at=now))


def _record(row: Any) -> DeliveryRecord:
    return DeliveryRecord(
        id=delivery_id(row.event_id, row.hook),
        event_id=row.event_id,
        hook=row.hook,
        status=row.status,
        attempts=row.attempts,
        created_at=to_datetime(row.created_at),
        updated_at=to_datetime(row.updated_at),
        next_attempt_at=to_datetime(row.next_attempt_at)
        if row.status == PENDING
        else None,
        duration=row.duration,
        error_class=row.error_class,
        error=row.error,
    )
