"""The durable store: an outbox in the app's own database.

Write path: in the registration's own transaction (the flush's connection), one
``postreg_events`` row per event and one ``postreg_deliveries`` row per enabled
hook, two statements in all. The rows are *pre-leased* (status ``running``, a
lease a little longer than the hook's timeout) so the backend starts them at once
after the commit and no poller takes them meanwhile.

This class ties the parts together (the engine, the layout check, transactions);
the SQL of leases is in :mod:`.leases`, the outcome batches in :mod:`.outcomes`,
the operators' queries in :mod:`.queries`, the hot statements' driver path in
:mod:`.statements`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import time
import weakref
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import sqlalchemy as sa

from .. import forksafe
from ..dispatch import DEAD
from ..dispatch import PENDING
from ..dispatch import RUNNING
from ..dispatch import Delivery
from ..dispatch import Hook
from ..events import Event
from ..scrub import database_url
from . import leases
from . import queries
from .base import DeliveryRecord
from .base import Store
from .base import checked_limit
from .base import delivery_id
from .base import to_epoch
from .memory import MemoryStore
from .outcomes import OutcomeWriter
from .statements import StatementCache
from .tables import DEAD_ONLY
from .tables import Tables
from .tables import stored_user_id
from .tables import table_problems

if TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from ..dispatch import Outcome

logger = logging.getLogger("flask_postreg")

#: Seconds a lease lasts beyond the hook's own timeout (queue wait, slow writes);
#: ``POSTREG_LEASE_GRACE``.
LEASE_GRACE = 60.0

#: Events per prune transaction (each holds SQLite's write lock briefly).
PRUNE_BATCH = 500


class DatabaseStore(Store):
    """Outbox tables on the user model's bind; see the module docstring."""

    durable = True
    name = "database"

    def __init__(
        self,
        app: Flask,
        db: SQLAlchemy,
        tables: Tables,
        *,
        bind_key: str | None = None,
        history_size: int = 1000,
        batch_delay: float = 0.0,
        lease_grace: float = LEASE_GRACE,
    ) -> None:
        self.app = app
        self.lease_grace = lease_grace
        self.db = db
        self.t = tables
        self.bind_key = bind_key
        self.history = MemoryStore(history_size, counts=False)
        self._engine: sa.Engine | None = None
        self.statements = StatementCache()
        self.outcomes = OutcomeWriter(
            self.begin,
            tables.deliveries,
            self.statements,
            batch_delay=batch_delay,
        )
        self._tables_ok: weakref.WeakKeyDictionary[sa.Engine, bool] = (
            weakref.WeakKeyDictionary()
        )
        # Resolved now, not at first use: a process forked before then (a
        # gunicorn --preload factory that ran db.create_all()) must still drop
        # the parent's pooled connections in _after_fork.
        with contextlib.suppress(KeyError, RuntimeError):
            self.engine  # noqa: B018
        self._after_fork()
        forksafe.register(self)

    def _after_fork(self) -> None:
        self.history._after_fork()
        if getattr(self, "_engine", None) is not None:
            # The parent's pooled connections must not be shared with the child
            # (SQLAlchemy's documented advice for forking).
            self._engine.dispose(close=False)  # type: ignore[union-attr]

    # -- plumbing ----------------------------------------------------------

    @property
    def engine(self) -> sa.Engine:
        """The user model's engine (resolved once, inside an app context)."""
        if self._engine is None:
            with self.app.app_context():
                self._engine = self.db.engines[self.bind_key]
        return self._engine

    def connect(self) -> sa.Connection:
        """A connection for the outbox's own work (outcomes, claims, the query
        API, ``emit()``).

        On PostgreSQL it runs at READ COMMITTED whatever the app's engine sets
        (``isolation_level``, or in ``execution_options``, applied as the
        connection is made: this comes after): under REPEATABLE READ or
        SERIALIZABLE these short conditional UPDATEs (each guarded by its
        claim token, so already safe) fail with serialization errors when they
        meet a poller's or a registration's rows, losing whole batches of
        outcomes to their leases, and they make the app's own SERIALIZABLE
        registrations fail too. The pool gives the connection its level back
        when it returns.
        """
        connection = self.engine.connect()
        if connection.dialect.name == "postgresql":
            connection.execution_options(isolation_level="READ COMMITTED")
        return connection

    @contextlib.contextmanager
    def begin(self) -> Iterator[sa.Connection]:
        """A transaction on :meth:`connect`'s connection, committed at the end."""
        with self.connect() as connection, connection.begin():
            yield connection

    def tables_ready(self) -> bool:
        """:meth:`tables_present` on a connection of its own, opened only the first
        time (the poller asks every round)."""
        ok = self._tables_ok.get(self.engine)
        if ok is None:
            with self.connect() as conn:
                ok = self.tables_present(conn)
        return ok

    def tables_present(self, connection: sa.Connection) -> bool:
        """Checked once per engine; if missing (or laid out differently than this
        version writes), say what to run and fall back to memory."""
        engine = connection.engine
        ok = self._tables_ok.get(engine)
        if ok is None:
            missing, stale = table_problems(
                sa.inspect(connection), (self.t.events, self.t.deliveries)
            )
            ok = not missing and not stale
            self._tables_ok[engine] = ok
            where = database_url(engine.url)
            if missing:
                logger.error(
                    "flask-postreg: table(s) %s missing in database %s. Create them"
                    " with db.create_all() or a migration (flask db migrate && flask"
                    " db upgrade), then restart this process: it checked once and runs"
                    " hooks in memory (not durable across restarts) until it restarts.",
                    ", ".join(missing),
                    where,
                )
            elif stale:
                logger.error(
                    "flask-postreg: table(s) %s in database %s do not have the layout"
                    " this version writes. Migrate them (flask db migrate && flask db"
                    " upgrade), or drop and recreate them with db.create_all() if"
                    " their rows can go, then restart this process: until then it"
                    " runs hooks in memory (not durable across restarts).",
                    "; ".join(stale),
                    where,
                )
        return ok

    # -- write path (in the registration's transaction) ---------------------

    def write(
        self,
        connection: sa.Connection,
        events: Sequence[Event],
        hooks: Sequence[Hook],
        *,
        run_id: str | None = None,
        leased: bool = True,
    ) -> list[Delivery]:
        """Insert events and pre-leased deliveries; return the deliveries to start.

        ``leased=False`` writes them pending and due now, for whichever poller
        claims them first (a replay, or a web process with
        ``POSTREG_RUN_IN_WEB = False``); ``run_id`` tags the events of a replay.
        """
        now = time.time()
        deliveries = []
        event_rows = []
        delivery_rows = []
        for event in events:
            event_rows.append(
                {
                    "id": event.id,
                    "user_id": stored_user_id(event.user.id),
                    "payload": event.stored_json(),
                    "created_at": to_epoch(event.context.created_at),
                    "run_id": run_id,
                }
            )
            for hook in hooks:
                lease: float | None = now + (hook.timeout or 0) + self.lease_grace
                claim = 1
                if not leased:
                    lease, claim = None, 0
                row_id = delivery_id(event.id, hook.name)
                delivery_rows.append(
                    {
                        "event_id": event.id,
                        "hook": hook.name,
                        "status": RUNNING if leased else PENDING,
                        "attempts": claim,
                        "claim": claim,
                        "locked_until": lease,
                        # Pending: due now. Running: the poller looks again when
                        # the lease ends (a crashed process).
                        "next_attempt_at": now if lease is None else lease,
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                deliveries.append(
                    Delivery(
                        event,
                        hook,
                        attempt=1,
                        row_id=row_id,
                        claim=claim,
                        lease_until=lease,
                    )
                )
        self._insert(connection, self.t.events, event_rows)
        self._insert(connection, self.t.deliveries, delivery_rows)
        return deliveries

    def revise(self, connection: sa.Connection, events: Sequence[Event]) -> None:
        """Write the new payload of events written earlier in ``connection``'s
        transaction whose user was updated before the commit."""
        e = self.t.events
        connection.execute(
            sa.update(e)
            .where(e.c.id == sa.bindparam("b_id"))
            .values(payload=sa.bindparam("b_payload"), user_id=sa.bindparam("b_user")),
            [
                {
                    "b_id": event.id,
                    "b_payload": event.stored_json(),
                    "b_user": stored_user_id(event.user.id),
                }
                for event in events
            ],
        )

    def forget(self, connection: sa.Connection, event_ids: Iterable[str]) -> None:
        """Delete the outbox rows of events written earlier in ``connection``'s
        transaction whose user was deleted before the commit."""
        ids = list(event_ids)
        if ids:
            d, e = self.t.deliveries, self.t.events
            connection.execute(sa.delete(d).where(d.c.event_id.in_(ids)))
            connection.execute(sa.delete(e).where(e.c.id.in_(ids)))

    def _insert(
        self, connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> None:
        """INSERT ``rows`` (all with the same keys) into ``table``."""
        if rows:
            self.statements.execute(
                connection, ("insert", table.name), table.insert, rows
            )

    # -- run path ------------------------------------------------------------

    def _lease(self, hooks: Iterable[Hook], now: float) -> float:
        """When a lease taken now ends: the longest hook timeout, plus the grace."""
        return now + max((h.timeout or 0 for h in hooks), default=0) + self.lease_grace

    def prepare(self, delivery: Delivery) -> Delivery | None:
        """Just before an attempt: check or take the lease; None means skip it."""
        if delivery.row_id is None:
            return delivery
        if delivery.lease_until is not None:  # pre-leased, or claimed by a poller
            # Start only if the attempt can end (hook timeout) within the lease:
            # past it another process's poller may claim the row and run it too.
            # The margin covers the watchdog noticing a timeout up to a second
            # late, and the outcome's batch.
            margin = min(1.0, self.lease_grace / 2)
            end = time.time() + (delivery.hook.timeout or 0) + margin
            if end > delivery.lease_until:
                # It waited too long in the queue. Give the row back, due now and
                # its attempt not counted (it never ran), unless a poller has
                # claimed it since (the claim token no longer matches).
                self.unclaim([delivery])
                return None
            return delivery
        return self.claim_retry(delivery)

    def claim_retry(self, delivery: Delivery) -> Delivery | None:
        """Take a pending retry this process scheduled, unless another did first."""
        self.flush()  # its 'pending' outcome may still be in the batch
        now = time.time()
        lease = self._lease([delivery.hook], now)
        with self.begin() as conn:
            taken = leases.claim_retry(conn, self.t.deliveries, delivery, lease, now)
        if taken is None:
            return None
        attempts, claim = taken
        return dataclasses.replace(
            delivery, attempt=attempts, claim=claim, lease_until=lease
        )

    def release(self, ids: Sequence[str]) -> None:
        """End the pre-leases of rows the queue refused, so they are due now."""
        rows = leases.key_rows(ids)
        if rows:
            with self.begin() as conn:
                leases.release(conn, self.t.deliveries, rows)

    def unclaim(self, deliveries: Sequence[Delivery]) -> None:
        """Hand back claims that never ran (the queue refused them, or they waited
        in it past their lease): due now, and the attempt the claim counted is
        given back."""
        rows = leases.claim_rows(deliveries)
        if rows:
            with self.begin() as conn:
                leases.unclaim(conn, self.t.deliveries, rows)

    def hand_back(self, deliveries: Sequence[Delivery]) -> int:
        """Hand back deliveries a stopping worker did not finish: pending, due now,
        the attempt not counted, and a new claim token, so an attempt still running
        cannot record its outcome over the next one. Returns how many rows it changed
        (a row claimed elsewhere since, or finished meanwhile, is left alone)."""
        rows = leases.claim_rows(deliveries)
        if not rows:
            return 0
        with self.begin() as conn:
            return leases.hand_back(conn, self.t.deliveries, rows, time.time())

    def claim_due(self, hooks: Sequence[Hook], limit: int) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries of ``hooks`` (retries, expired leases)."""
        if not hooks or limit <= 0:
            return []
        by_name = {h.name: h for h in hooks}
        now = time.time()
        ends = {h.name: self._lease([h], now) for h in hooks}
        with self.begin() as conn:
            claimed = leases.claim_due(conn, self.t.deliveries, ends, limit, now)
            events = self._load_events(conn, {c.event_id for c in claimed})
            lost = [c for c in claimed if c.event_id not in events]
            if lost:
                # Claimed again at every lease end, never run: make them dead.
                rows = [
                    {"b_event": c.event_id, "b_hook": c.hook, "b_claim": c.claim}
                    for c in lost
                ]
                error = "the event's row is missing or its payload cannot be read"
                leases.bury(
                    conn, self.t.deliveries, rows, "UnreadableEvent", error, now
                )
                logger.error(
                    "flask-postreg: %d delivery(ies) made dead: %s (event %s)",
                    len(lost),
                    error,
                    ", ".join(sorted({c.event_id for c in lost})),
                )
        deliveries = []
        for c in claimed:
            event = events.get(c.event_id)
            if event is None:
                continue
            deliveries.append(
                Delivery(
                    event,
                    by_name[c.hook],
                    attempt=c.attempts,
                    row_id=delivery_id(c.event_id, c.hook),
                    claim=c.claim,
                    lease_until=ends[c.hook],
                )
            )
        return deliveries

    def _load_events(self, conn: sa.Connection, ids: Iterable[str]) -> dict[str, Event]:
        ids = list(ids)
        if not ids:
            return {}
        e = self.t.events
        rows = conn.execute(
            sa.select(e.c.id, e.c.payload, e.c.created_at).where(e.c.id.in_(ids))
        )
        events = {}
        for row in rows:
            try:
                events[row.id] = Event.from_stored(row.payload, row.id, row.created_at)
            except (ValueError, TypeError) as exc:
                logger.error(
                    "flask-postreg: event %s has an unreadable payload (%s)",
                    row.id,
                    exc,
                )
        return events

    def record(self, outcome: Outcome) -> None:
        """Keep the outcome in the recent history and write it to its row, batched
        with others (see :class:`.outcomes.OutcomeWriter`)."""
        self.history.record(outcome)
        if outcome.row_id is not None:
            self.outcomes.add(outcome)

    def flush(self) -> None:
        """Write every outcome recorded so far (``join`` and claims call this)."""
        self.outcomes.flush()

    @property
    def lost_outcomes(self) -> int:
        return self.outcomes.lost

    # -- query API ---------------------------------------------------------

    def recent(
        self, *, status: str | None = None, hook: str | None = None, limit: int = 50
    ) -> list[Outcome]:
        return self.history.recent(status=status, hook=hook, limit=limit)

    def deliveries(
        self,
        *,
        status: str | None = None,
        hook: str | None = None,
        since: _dt.datetime | None = None,
        until: _dt.datetime | None = None,
        limit: int = 50,
        event_id: str | None = None,
    ) -> list[DeliveryRecord]:
        self.flush()
        with self.connect() as conn:
            return queries.deliveries(
                conn,
                self.t.deliveries,
                status=status,
                hook=hook,
                since=since,
                until=until,
                limit=checked_limit(limit),
                event_id=event_id,
            )

    def counts(self) -> dict[tuple[str, str], int]:
        self.flush()
        with self.connect() as conn:
            return queries.counts(conn, self.t.deliveries)

    def dead_hooks(self) -> list[str]:
        """The hooks that have dead deliveries, by name."""
        self.flush()
        with self.connect() as conn:
            return queries.dead_hooks(conn, self.t.deliveries)

    def retry(self, ids: Iterable[str]) -> int:
        d = self.t.deliveries
        rows = leases.key_rows(ids)
        if not rows:
            return 0
        return self._requeue(leases.is_key(d) & d.c.status.in_([DEAD, PENDING]), rows)

    def retry_dead(self, hook: str | None = None) -> int:
        d = self.t.deliveries
        cond: Any = sa.text(DEAD_ONLY)  # a literal: the partial index's own
        if hook is not None:
            cond = cond & (d.c.hook == hook)
        return self._requeue(cond)

    def _requeue(self, cond: Any, rows: list[dict[str, Any]] | None = None) -> int:
        self.flush()
        with self.begin() as conn:
            return queries.requeue(conn, self.t.deliveries, cond, rows)

    def prune(self, older_than_days: float, *, batch_size: int = PRUNE_BATCH) -> int:
        """Delete succeeded deliveries older than that, and events left with none.

        ``batch_size`` events per transaction: on SQLite each holds the write
        lock, which registrations wait for, so none is long.
        """
        cutoff = time.time() - older_than_days * 86400
        total = 0
        after: str | None = ""
        while after is not None:
            with self.begin() as conn:
                pruned, after = queries.prune_batch(
                    conn, self.t, cutoff, after, batch_size
                )
            total += pruned
        return total

    def hook_settings(self, connection: sa.Connection | None = None) -> dict[str, bool]:
        if connection is not None:
            # In a SAVEPOINT: if the table is missing, PostgreSQL would abort
            # the caller's whole transaction (a registration) instead.
            with connection.begin_nested():
                return queries.hook_settings(connection, self.t.hook_settings)
        with self.connect() as conn:
            return queries.hook_settings(conn, self.t.hook_settings)

    def set_enabled(self, hook: str, enabled: bool) -> None:
        with self.begin() as conn:
            queries.set_enabled(conn, self.t.hook_settings, hook, enabled)

    def event(self, event_id: str) -> Event | None:
        with self.connect() as conn:
            return self._load_events(conn, [event_id]).get(event_id)
