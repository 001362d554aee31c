"""The durable store: an outbox in the app's own database.

Write path: in the registration's own transaction (the flush's connection), one
``postreg_events`` row per event and one ``postreg_deliveries`` row per enabled
hook, two statements in all. The rows are *pre-leased* (status ``running``, a
lease a little longer than the hook's timeout) so the backend starts them at once
after the commit and no poller takes them meanwhile.

Every later write is guarded by the row's ``claim`` token: a claim (poller, or an
in-process retry) increments it, and an outcome is written only ``WHERE claim =``
the token its attempt ran under, so a stale worker cannot overwrite a newer state.
Outcomes finishing together are written in one transaction (group commit).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import sqlalchemy as sa

from .. import forksafe
from ..dispatch import DEAD
from ..dispatch import PENDING
from ..dispatch import RUNNING
from ..dispatch import SUCCEEDED
from ..dispatch import Delivery
from ..dispatch import Hook
from ..events import Event
from ..events import event_id_floor
from .base import DeliveryRecord
from .base import Store
from .base import delivery_id
from .base import to_datetime
from .base import to_epoch
from .memory import MemoryStore
from .tables import OPEN_STATUSES
from .tables import Tables

if TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from ..dispatch import Outcome

logger = logging.getLogger("flask_postreg")

#: Seconds a lease lasts beyond the hook's own timeout (queue wait, slow writes);
#: ``POSTREG_LEASE_GRACE``.
LEASE_GRACE = 60.0


def _watched(connection: sa.Connection) -> bool:
    """Does anything observe or rewrite this connection's statements or errors?"""
    dispatch = connection.dispatch
    return bool(
        dispatch.before_execute
        or dispatch.after_execute
        or dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
        or connection.dialect.dispatch.handle_error
        or connection.engine.logger.isEnabledFor(logging.INFO)
        or connection.get_execution_options().get("schema_translate_map")
    )


def table_problems(
    inspector: Any, tables: Iterable[sa.Table]
) -> tuple[list[str], list[str]]:
    """The names of ``tables`` missing from the database, and how each of the
    others differs from what this version writes (missing columns, another
    primary key: a table created by an earlier version), as ``name (problems)``."""
    missing, stale = [], []
    for table in tables:
        if not inspector.has_table(table.name, schema=table.schema):
            missing.append(table.name)
            continue
        columns = inspector.get_columns(table.name, schema=table.schema)
        found = {c["name"] for c in columns}
        problems = [f"no column {c.name}" for c in table.columns if c.name not in found]
        key = inspector.get_pk_constraint(table.name, schema=table.schema)
        ours = [c.name for c in table.primary_key.columns]
        if sorted(key.get("constrained_columns") or []) != sorted(ours):
            problems.append(f"primary key is not ({', '.join(ours)})")
        if problems:
            stale.append(f"{table.name} ({'; '.join(problems)})")
    return missing, stale


def index_problems(inspector: Any, tables: Iterable[sa.Table]) -> list[str]:
    """Indexes of ``tables`` missing, or on other columns or uniqueness than this
    version declares (made by an earlier version): rows are still written, but
    a guarantee or a speed-up the index gives is missing."""
    problems = []
    for table in tables:
        found = {
            ix["name"]: ix
            for ix in inspector.get_indexes(table.name, schema=table.schema)
        }
        for index in table.indexes:
            columns = [c.name for c in index.columns]
            have = found.get(index.name)
            if have is None:
                problems.append(f"{index.name} is missing")
            elif list(have["column_names"]) != columns or bool(have["unique"]) != bool(
                index.unique
            ):
                unique = "unique " if index.unique else ""
                problems.append(f"{index.name} is not {unique}({', '.join(columns)})")
    return problems


def _keys(ids: Iterable[str]) -> list[dict[str, Any]]:
    """``b_event``/``b_hook`` parameters for delivery ids; others are ignored."""
    keys = (split_delivery_id(i) for i in ids)
    return [{"b_event": k[0], "b_hook": k[1]} for k in keys if k is not None]


def split_delivery_id(value: str) -> tuple[str, str] | None:
    """``(event_id, hook)`` from :func:`delivery_id`; None if it is not one.

    Event ids never contain ``:``; hook names may (``slack:notify``).
    """
    event_id, sep, hook = str(value).partition(":")
    return (event_id, hook) if sep and event_id and hook else None


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A delivery row this process now holds a lease on."""

    event_id: str
    hook: str
    attempts: int
    claim: int


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
        self.batch_delay = batch_delay
        self.history = MemoryStore(history_size, counts=False)
        self._engine: sa.Engine | None = None
        # Statements by name, and their driver SQL by (dialect, paramstyle, name):
        # see _execute.
        self._statements: dict[tuple[str, str], sa.Insert | sa.Update] = {}
        self._compiled: dict[tuple[str, ...], tuple[str, list[str] | None]] = {}
        self._tables_ok: weakref.WeakKeyDictionary[sa.Engine, bool] = (
            weakref.WeakKeyDictionary()
        )
        self._after_fork()
        forksafe.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._writer_pid = 0
        self._flush_lock = threading.Lock()
        self._buffer: list[tuple[int, Outcome]] = []
        self._ticket = 0
        self._flushed = 0
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

    def tables_ready(self) -> bool:
        """:meth:`tables_present` on a connection of its own, opened only the first
        time (the poller asks every round)."""
        ok = self._tables_ok.get(self.engine)
        if ok is None:
            with self.engine.connect() as conn:
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
            where = engine.url.render_as_string(hide_password=True)
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
                    "user_id": event.user.id,
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

    def _insert(
        self, connection: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]
    ) -> None:
        """INSERT ``rows`` (all with the same keys) into ``table``."""
        if rows:
            self._execute(connection, ("insert", table.name), table.insert, rows)

    def _execute(
        self,
        connection: sa.Connection,
        name: tuple[str, str],
        build: Callable[[], sa.Insert | sa.Update],
        rows: list[dict[str, Any]],
    ) -> None:
        """Run the statement ``name`` (made by ``build`` the first time) for
        ``rows``, compiled once per dialect, on the driver's own cursor.

        The outbox INSERTs run in every registration's transaction, where each
        microsecond is measured (``make bench``): SQLAlchemy's per-statement
        compile-cache lookup and execution context cost more than SQLite's own
        work for these rows; the outcome writer holds the database lock shorter.
        When anything watches or rewrites the connection's statements (execute
        and cursor listeners, as Flask-SQLAlchemy's query recording and tracing
        libraries add, ``handle_error`` listeners, SQL logging, a
        ``schema_translate_map``) the statement goes through SQLAlchemy as usual.
        Either way an error is SQLAlchemy's ``DBAPIError`` without parameters:
        the payload is personal data.
        """
        stmt = self._statements.get(name)
        if stmt is None:
            stmt = self._statements[name] = build()
        if _watched(connection):
            try:
                connection.execute(stmt, rows)
            except sa.exc.StatementError as exc:
                exc.hide_parameters = True
                raise
            return
        dialect = connection.dialect
        key = (dialect.name, dialect.paramstyle, *name)
        compiled = self._compiled.get(key)
        if compiled is None:
            keys = list(rows[0]) if isinstance(stmt, sa.Insert) else None
            done = stmt.compile(dialect=dialect, column_keys=keys)
            order = list(done.positiontup or ()) if dialect.positional else None
            compiled = (str(done), order)
            self._compiled[key] = compiled
        sql, order = compiled
        params: list[Any] = (
            [tuple(row[k] for k in order) for row in rows]
            if order is not None
            else rows
        )
        cursor = connection.connection.cursor()
        try:
            if len(params) == 1:
                cursor.execute(sql, params[0])
            else:
                cursor.executemany(sql, params)
        except dialect.loaded_dbapi.Error as exc:
            raise sa.exc.DBAPIError.instance(
                sql,
                params,
                exc,
                dialect.loaded_dbapi.Error,
                hide_parameters=True,
                dialect=dialect,
            ) from exc
        finally:
            cursor.close()

    # -- run path ------------------------------------------------------------

    def prepare(self, delivery: Delivery) -> Delivery | None:
        """Just before an attempt: check or take the lease; None means skip it."""
        if delivery.row_id is None:
            return delivery
        if delivery.lease_until is not None:  # pre-leased, or claimed by a poller
            # Start only if the attempt can end (hook timeout) within the lease:
            # past it another process's poller may claim the row and run it too.
            if time.time() + (delivery.hook.timeout or 0) > delivery.lease_until:
                # It waited too long in the queue. Give the row back, due now and
                # its attempt not counted (it never ran), unless a poller has
                # claimed it since (the claim token no longer matches).
                self.unclaim([delivery])
                return None
            return delivery
        return self.claim_retry(delivery)

    def _claim_values(self, lease: float, now: float) -> dict[str, Any]:
        """A claim: one more attempt, a new token, the lease (and the poller's next
        look at the row, should this process die, at the lease end)."""
        d = self.t.deliveries
        return {
            "status": RUNNING,
            "attempts": d.c.attempts + 1,
            "claim": d.c.claim + 1,
            "locked_until": lease,
            "next_attempt_at": lease,
            "updated_at": now,
        }

    def claim_retry(self, delivery: Delivery) -> Delivery | None:
        """Take a pending retry this process scheduled, unless another did first."""
        self.flush()  # its 'pending' outcome may still be in the batch
        d = self.t.deliveries
        now = time.time()
        lease = now + (delivery.hook.timeout or 0) + self.lease_grace
        stmt = (
            sa.update(d)
            .where(
                d.c.event_id == delivery.event.id,
                d.c.hook == delivery.hook.name,
                d.c.claim == delivery.claim,
                d.c.status == PENDING,
            )
            .values(self._claim_values(lease, now))
            .returning(d.c.attempts, d.c.claim)
        )
        with self.engine.begin() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        return dataclasses.replace(
            delivery, attempt=row.attempts, claim=row.claim, lease_until=lease
        )

    def release(self, ids: Sequence[str]) -> None:
        """End the pre-leases of rows the queue refused, so they are due now."""
        rows = _keys(ids)
        if not rows:
            return
        d = self.t.deliveries
        stmt = (
            sa.update(d)
            .where(self._is_key(), d.c.claim == 1, d.c.status == RUNNING)
            .values(locked_until=0.0, next_attempt_at=0.0)
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)  # one primary-key lookup per id, any number

    def _is_key(self) -> Any:
        """WHERE clause: the row is ``b_event:b_hook`` (see :func:`_keys`)."""
        d = self.t.deliveries
        return sa.and_(
            d.c.event_id == sa.bindparam("b_event"), d.c.hook == sa.bindparam("b_hook")
        )

    def _claimed(self) -> Any:
        """WHERE clause: the row is still held under the claim the caller ran with."""
        d = self.t.deliveries
        return sa.and_(
            d.c.event_id == sa.bindparam("b_event"),
            d.c.hook == sa.bindparam("b_hook"),
            d.c.claim == sa.bindparam("b_claim"),
            d.c.status == RUNNING,
        )

    @staticmethod
    def _claim_rows(deliveries: Sequence[Delivery]) -> list[dict[str, Any]]:
        return [
            {"b_event": x.event.id, "b_hook": x.hook.name, "b_claim": x.claim}
            for x in deliveries
            if x.row_id is not None
        ]

    def unclaim(self, deliveries: Sequence[Delivery]) -> None:
        """Hand back claims that never ran (the queue refused them, or they waited
        in it past their lease): due now, and the attempt the claim counted is
        given back."""
        rows = self._claim_rows(deliveries)
        if not rows:
            return
        d = self.t.deliveries
        stmt = (
            sa.update(d)
            .where(self._claimed())
            .values(locked_until=0.0, next_attempt_at=0.0, attempts=d.c.attempts - 1)
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    def hand_back(self, deliveries: Sequence[Delivery]) -> int:
        """Hand back deliveries a stopping worker did not finish: pending, due now,
        the attempt not counted, and a new claim token, so an attempt still running
        cannot record its outcome over the next one. Returns how many rows it changed
        (a row claimed elsewhere since, or finished meanwhile, is left alone)."""
        rows = self._claim_rows(deliveries)
        if not rows:
            return 0
        d = self.t.deliveries
        now = time.time()
        stmt = (
            sa.update(d)
            .where(self._claimed())
            .values(
                status=PENDING,
                attempts=sa.case((d.c.attempts > 0, d.c.attempts - 1), else_=0),
                claim=d.c.claim + 1,
                locked_until=None,
                next_attempt_at=now,
                updated_at=now,
            )
        )
        handed = 0
        with self.engine.begin() as conn:
            for row in rows:  # executemany reports no reliable rowcount everywhere
                handed += int(conn.execute(stmt, row).rowcount or 0)
        return handed

    def claim_due(self, hooks: Sequence[Hook], limit: int) -> list[Delivery]:
        """Lease up to ``limit`` due deliveries of ``hooks`` (retries, expired leases)."""
        if not hooks or limit <= 0:
            return []
        by_name = {h.name: h for h in hooks}
        d = self.t.deliveries
        now = time.time()
        lease = now + max(h.timeout or 0 for h in hooks) + self.lease_grace
        # Pending and due, or running with an ended lease (a dead process):
        # a running row's next_attempt_at is its lease end.
        due = sa.and_(
            sa.text(OPEN_STATUSES),
            d.c.next_attempt_at <= now,
            d.c.hook.in_(list(by_name)),
        )
        candidates = (
            sa.select(d.c.event_id, d.c.hook)
            .where(due)
            .order_by(d.c.next_attempt_at)
            .limit(limit)
        )
        if self.engine.dialect.name == "postgresql":
            # A materialized CTE, run once. As "id IN (SELECT ... LIMIT n FOR
            # UPDATE SKIP LOCKED)" PostgreSQL may rescan the subquery for each
            # outer row; each rescan skips the rows just updated and takes the
            # next n, so one poll claimed every due row, not n.
            picked = (
                candidates.with_for_update(skip_locked=True)
                .cte("postreg_due")
                .prefix_with("MATERIALIZED")
            )
            chosen = sa.and_(
                d.c.event_id == picked.c.event_id, d.c.hook == picked.c.hook
            )
        else:  # SQLite: one UPDATE statement holds the write lock throughout
            chosen = sa.tuple_(d.c.event_id, d.c.hook).in_(candidates)
        stmt = (
            sa.update(d)
            .where(chosen, due)
            .values(self._claim_values(lease, now))
            .returning(d.c.event_id, d.c.hook, d.c.attempts, d.c.claim)
        )
        with self.engine.begin() as conn:
            claimed = [Claimed(*row) for row in conn.execute(stmt)]
            events = self._load_events(conn, {c.event_id for c in claimed})
        deliveries = []
        for c in claimed:
            event = events.get(c.event_id)
            if event is None:  # pruned under us; nothing to run
                continue
            deliveries.append(
                Delivery(
                    event,
                    by_name[c.hook],
                    attempt=c.attempts,
                    row_id=delivery_id(c.event_id, c.hook),
                    claim=c.claim,
                    lease_until=lease,
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
        """Write the outcome, batched with others.

        With ``batch_delay`` 0 the caller waits for its row (outcomes finishing
        together still share one transaction). Otherwise a writer thread commits
        whatever gathered every ``batch_delay`` seconds: one transaction for many
        outcomes instead of one per outcome, which on SQLite is one disk sync
        instead of many. If the process dies first, the lease expires and the
        poller runs the delivery again: at least once, as promised.
        """
        self.history.record(outcome)
        if outcome.row_id is None:
            return
        with self._lock:
            self._ticket += 1
            ticket = self._ticket
            self._buffer.append((ticket, outcome))
            if self.batch_delay > 0:
                self._ensure_writer()
                self._wake.notify()
                return
        self._drain(ticket)

    def flush(self) -> None:
        """Write every outcome recorded so far (``join`` and claims call this)."""
        with self._lock:
            ticket = self._ticket
        self._drain(ticket)

    def _drain(self, ticket: int) -> None:
        """Write buffered outcomes until ``ticket`` is written (group commit)."""
        with self._flush_lock:
            with self._lock:
                if self._flushed >= ticket or not self._buffer:
                    return  # a batch written by another thread included ours
                batch = self._buffer
                self._buffer = []
                last = batch[-1][0]
            try:
                self._write_outcomes([o for _, o in batch])
            except Exception as exc:
                logger.error(
                    "flask-postreg could not record %d outcome(s) (%s); their leases"
                    " will expire and the poller will run them again",
                    len(batch),
                    type(exc).__name__,
                )
            with self._lock:
                self._flushed = max(self._flushed, last)

    def _ensure_writer(self) -> None:
        """Start the batch writer in this process (lock held)."""
        if self._writer_pid == os.getpid():
            return
        self._writer_pid = os.getpid()
        try:
            threading.Thread(
                target=self._write_loop, name="postreg-writer", daemon=True
            ).start()
        except RuntimeError:  # interpreter exiting: write inline from now on
            self.batch_delay = 0.0

    def _write_loop(self) -> None:
        pid = os.getpid()
        while True:
            with self._lock:
                while not self._buffer:
                    if self._writer_pid != pid:
                        return
                    self._wake.wait()
                ticket = self._ticket
            time.sleep(self.batch_delay)  # let a batch gather
            self._drain(ticket)

    def _write_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        d = self.t.deliveries
        now = time.time()

        def build() -> sa.Update:
            return (
                sa.update(d)
                .where(
                    d.c.event_id == sa.bindparam("b_event"),
                    d.c.hook == sa.bindparam("b_hook"),
                    d.c.claim == sa.bindparam("b_claim"),
                )
                .values(
                    status=sa.bindparam("b_status"),
                    locked_until=sa.null(),
                    next_attempt_at=sa.bindparam("b_next"),
                    duration=sa.bindparam("b_duration"),
                    error_class=sa.bindparam("b_error_class"),
                    error=sa.bindparam("b_error"),
                    updated_at=sa.bindparam("b_updated"),
                )
            )

        rows = [
            {
                "b_event": o.event_id,
                "b_hook": o.hook,
                "b_claim": o.claim,
                "b_status": o.status,
                "b_next": now + o.retry_in if o.retry_in is not None else now,
                "b_duration": o.duration,
                "b_error_class": o.error_class,
                "b_error": o.error,
                "b_updated": now,
            }
            for o in outcomes
        ]
        with self.engine.begin() as conn:
            self._execute(conn, ("outcome", d.name), build, rows)

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
        d = self.t.deliveries
        query = (
            sa.select(d)
            .order_by(d.c.created_at.desc(), d.c.event_id, d.c.hook)
            .limit(limit)
        )
        if status is not None:
            query = query.where(d.c.status == status)
        if hook is not None:
            query = query.where(d.c.hook == hook)
        if event_id is not None:
            query = query.where(d.c.event_id == event_id)
        if since is not None:
            query = query.where(d.c.created_at >= since.timestamp())
        if until is not None:
            query = query.where(d.c.created_at < until.timestamp())
        with self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def counts(self) -> dict[tuple[str, str], int]:
        self.flush()
        d = self.t.deliveries
        query = sa.select(d.c.hook, d.c.status, sa.func.count()).group_by(
            d.c.hook, d.c.status
        )
        with self.engine.connect() as conn:
            return {(hook, status): n for hook, status, n in conn.execute(query)}

    def retry(self, ids: Iterable[str]) -> int:
        d = self.t.deliveries
        rows = _keys(ids)
        if not rows:
            return 0
        return self._requeue(self._is_key() & d.c.status.in_([DEAD, PENDING]), rows)

    def retry_dead(self, hook: str | None = None) -> int:
        d = self.t.deliveries
        cond = d.c.status == DEAD
        if hook is not None:
            cond = cond & (d.c.hook == hook)
        return self._requeue(cond)

    def _requeue(self, cond: Any, rows: list[dict[str, Any]] | None = None) -> int:
        """Back to pending, due now, with a fresh attempt budget; ``rows`` are
        the parameters of ``cond``, one statement each."""
        self.flush()
        d = self.t.deliveries
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
        with self.engine.begin() as conn:
            if rows is None:
                return int(conn.execute(stmt).rowcount or 0)
            # One by one: executemany reports no reliable rowcount everywhere.
            return sum(int(conn.execute(stmt, row).rowcount or 0) for row in rows)

    def prune(self, older_than_days: float) -> int:
        """Delete succeeded deliveries older than that, and events left with none."""
        d, e = self.t.deliveries, self.t.events
        cutoff = time.time() - older_than_days * 86400
        with self.engine.begin() as conn:
            deleted = conn.execute(
                sa.delete(d).where(d.c.status == SUCCEEDED, d.c.updated_at < cutoff)
            ).rowcount
            orphan = ~sa.exists().where(d.c.event_id == e.c.id)
            # Event ids start with their creation time: the id bound makes this a
            # range of the primary key, not a scan of every event kept.
            conn.execute(
                sa.delete(e).where(
                    e.c.id < event_id_floor(cutoff), e.c.created_at < cutoff, orphan
                )
            )
        return int(deleted or 0)

    def hook_settings(self) -> dict[str, bool]:
        h = self.t.hook_settings
        with self.engine.connect() as conn:
            return {row.hook: bool(row.enabled) for row in conn.execute(sa.select(h))}

    def set_enabled(self, hook: str, enabled: bool) -> None:
        h = self.t.hook_settings
        now = time.time()
        with self.engine.begin() as conn:
            updated = conn.execute(
                sa.update(h)
                .where(h.c.hook == hook)
                .values(enabled=enabled, updated_at=now)
            ).rowcount
            if not updated:
                conn.execute(
                    sa.insert(h).values(hook=hook, enabled=enabled, updated_at=now)
                )

    def event(self, event_id: str) -> Event | None:
        with self.engine.connect() as conn:
            return self._load_events(conn, [event_id]).get(event_id)


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
