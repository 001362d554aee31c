"""Leases on delivery rows: who may run an attempt now, the SQL of each change.

Every change is guarded by the row's ``claim`` token: a claim (the poller, or an
in-process retry) increments it, and a later write says ``WHERE claim =`` the
token its attempt ran under, so a stale worker cannot undo a newer state.
Each function runs on the caller's connection, in the caller's transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from ..dispatch import DEAD
from ..dispatch import PENDING
from ..dispatch import RUNNING
from ..dispatch import Delivery
from .tables import OPEN_STATUSES


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A delivery row this process now holds a lease on."""

    event_id: str
    hook: str
    attempts: int
    claim: int


def split_delivery_id(value: str) -> tuple[str, str] | None:
    """``(event_id, hook)`` from :func:`~.base.delivery_id`; None if it is not one.

    Event ids never contain ``:``; hook names may (``slack:notify``).
    """
    event_id, sep, hook = str(value).partition(":")
    return (event_id, hook) if sep and event_id and hook else None


def key_rows(ids: Iterable[str]) -> list[dict[str, Any]]:
    """``b_event``/``b_hook`` parameters of :func:`is_key` for delivery ids,
    each once; strings that are not delivery ids are ignored."""
    keys = dict.fromkeys(split_delivery_id(i) for i in ids)  # once each, in order
    return [{"b_event": k[0], "b_hook": k[1]} for k in keys if k is not None]


def is_key(d: sa.Table) -> Any:
    """WHERE clause: the row is ``b_event:b_hook`` (see :func:`key_rows`)."""
    return sa.and_(
        d.c.event_id == sa.bindparam("b_event"), d.c.hook == sa.bindparam("b_hook")
    )


def claim_rows(deliveries: Sequence[Delivery]) -> list[dict[str, Any]]:
    """Parameters of :func:`still_held` for the deliveries kept in the outbox."""
    return [
        {"b_event": x.event.id, "b_hook": x.hook.name, "b_claim": x.claim}
        for x in deliveries
        if x.row_id is not None
    ]


def still_held(d: sa.Table) -> Any:
    """WHERE clause: the row is still held under the claim the caller ran with."""
    return sa.and_(
        is_key(d), d.c.claim == sa.bindparam("b_claim"), d.c.status == RUNNING
    )


def claim_values(
    d: sa.Table, lease: float | sa.ColumnElement[Any], now: float
) -> dict[str, Any]:
    """A claim: one more attempt, a new token, the lease (and the poller's next
    look at the row, should this process die, at the lease end)."""
    return {
        "status": RUNNING,
        "attempts": d.c.attempts + 1,
        "claim": d.c.claim + 1,
        "locked_until": lease,
        "next_attempt_at": lease,
        "updated_at": now,
    }


def claim_retry(
    conn: sa.Connection, d: sa.Table, delivery: Delivery, lease: float, now: float
) -> tuple[int, int] | None:
    """Take a pending retry this process scheduled: ``(attempts, claim)``, or
    None when another process took it first."""
    stmt = (
        sa.update(d)
        .where(
            d.c.event_id == delivery.event.id,
            d.c.hook == delivery.hook.name,
            d.c.claim == delivery.claim,
            d.c.status == PENDING,
        )
        .values(claim_values(d, lease, now))
        .returning(d.c.attempts, d.c.claim)
    )
    row = conn.execute(stmt).first()
    return None if row is None else (row.attempts, row.claim)


def release(conn: sa.Connection, d: sa.Table, rows: list[dict[str, Any]]) -> None:
    """End the pre-leases of rows the queue refused (:func:`key_rows`), so they
    are due now."""
    stmt = (
        sa.update(d)
        .where(is_key(d), d.c.claim == 1, d.c.status == RUNNING)
        # The pre-lease counted an attempt that never ran: give it back.
        .values(locked_until=0.0, next_attempt_at=0.0, attempts=d.c.attempts - 1)
    )
    conn.execute(stmt, rows)  # one primary-key lookup per id, any number


def unclaim(conn: sa.Connection, d: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Hand back claims that never ran (:func:`claim_rows`): due now, the
    attempt the claim counted given back."""
    stmt = (
        sa.update(d)
        .where(still_held(d))
        .values(locked_until=0.0, next_attempt_at=0.0, attempts=d.c.attempts - 1)
    )
    conn.execute(stmt, rows)


def hand_back(
    conn: sa.Connection, d: sa.Table, rows: list[dict[str, Any]], now: float
) -> int:
    """Unfinished claims (:func:`claim_rows`) back to pending, due now, the
    attempt not counted and a new claim token; how many rows changed."""
    return _end_claims(conn, d, rows, now, status=PENDING, claim=d.c.claim + 1)


def bury(
    conn: sa.Connection,
    d: sa.Table,
    rows: list[dict[str, Any]],
    error_class: str,
    error: str,
    now: float,
) -> None:
    """Make claimed rows (:func:`claim_rows`) dead without running them: for a
    delivery that cannot run."""
    _end_claims(conn, d, rows, now, status=DEAD, error_class=error_class, error=error)


def _end_claims(
    conn: sa.Connection,
    d: sa.Table,
    rows: list[dict[str, Any]],
    now: float,
    **values: Any,
) -> int:
    """Claims that will not run here: no lease, the attempt the claim counted
    given back, and ``values``; how many rows changed."""
    stmt = (
        sa.update(d)
        .where(still_held(d))
        .values(
            attempts=sa.case((d.c.attempts > 0, d.c.attempts - 1), else_=0),
            locked_until=None,
            next_attempt_at=now,
            updated_at=now,
            **values,
        )
    )
    # One by one: executemany reports no reliable rowcount everywhere.
    return sum(int(conn.execute(stmt, row).rowcount or 0) for row in rows)


def claim_due(
    conn: sa.Connection,
    d: sa.Table,
    leases: Mapping[str, float],
    limit: int,
    now: float,
) -> list[Claimed]:
    """Lease up to ``limit`` due rows of the hooks in ``leases`` (each row until
    its hook's lease end): pending and due, or running with an ended lease (a
    dead process; a running row's ``next_attempt_at`` is its lease end)."""
    due = sa.and_(
        sa.text(OPEN_STATUSES),  # as literals: SQLite then uses the partial index
        d.c.next_attempt_at <= now,
        d.c.hook.in_(list(leases)),
    )
    # Each row's own hook's lease: a long hook's must not delay the recovery
    # of a short one's rows should this process die.
    lease = sa.case(
        {name: sa.literal(end, sa.Float) for name, end in leases.items()},
        value=d.c.hook,
        else_=sa.literal(max(leases.values()), sa.Float),
    )
    candidates = (
        sa.select(d.c.event_id, d.c.hook)
        .where(due)
        .order_by(d.c.next_attempt_at)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        # A materialized CTE, run once. As "id IN (SELECT ... LIMIT n FOR
        # UPDATE SKIP LOCKED)" PostgreSQL may rescan the subquery for each
        # outer row; each rescan skips the rows just updated and takes the
        # next n, so one poll claimed every due row, not n.
        picked = (
            candidates.with_for_update(skip_locked=True)
            .cte("postreg_due")
            .prefix_with("MATERIALIZED")
        )
        chosen = sa.and_(d.c.event_id == picked.c.event_id, d.c.hook == picked.c.hook)
    else:  # SQLite: one UPDATE statement holds the write lock throughout
        chosen = sa.tuple_(d.c.event_id, d.c.hook).in_(candidates)
    stmt = (
        sa.update(d)
        .where(chosen, due)
        .values(claim_values(d, lease, now))
        .returning(d.c.event_id, d.c.hook, d.c.attempts, d.c.claim)
    )
    return [Claimed(*row) for row in conn.execute(stmt)]
