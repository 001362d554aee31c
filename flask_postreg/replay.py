"""``flask postreg replay``: new events for users already in the table (a backfill).

Users are selected by their creation time (the first column named
``created_at``, ``created``, ``date_joined`` or ``registered_at``), read in
batches in primary-key order, snapshotted like a fresh registration, and written
to the outbox in one transaction per batch: events tagged with the run id,
deliveries pending and due now, for the poller of a running app or
``flask postreg worker``. A user who already has an event with the same run id is
skipped, so re-running an interrupted replay with its ``--run-id`` finishes it
without duplicates (give it the same window: the first run prints it, resolved;
``until`` defaults to the start of the run, so users registering meanwhile are
left to their own live events); users with no creation time are counted, never
selected; two replays of one run at once cannot both write a user's
event (a unique index), the later one reads the batch again and skips it. Users
whose ``id`` field is empty cannot be told apart and are written each time.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
import uuid
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

import sqlalchemy as sa

from .dispatch import Hook
from .errors import PostRegError
from .store.tables import RUN_ID_WIDTH
from .store.tables import stored_user_id
from .worker import require_database

if TYPE_CHECKING:
    from .state import _State

#: Column names tried, in order, for a user's creation time.
CREATED_COLUMNS = ("created_at", "created", "date_joined", "registered_at")
BATCH = 500


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    run_id: str
    users: int
    created: int
    skipped: int
    hooks: tuple[str, ...]
    dry_run: bool
    #: The window, resolved (``until`` defaults to when the replay started).
    since: str = ""
    until: str = ""
    #: Users with no creation time: never in a window, never replayed.
    undated: int = 0

    @property
    def deliveries(self) -> int:
        return self.created * len(self.hooks)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["hooks"] = list(self.hooks)
        data["deliveries"] = self.deliveries
        return data


#: Times a batch is read again after another replay of the same run wrote
#: some of its users' events first.
CONFLICT_RETRIES = 5


def _sqlite_busy(engine: sa.Engine, exc: sa.exc.OperationalError) -> bool:
    return engine.dialect.name == "sqlite" and "locked" in str(exc.orig)


def new_run_id() -> str:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"replay-{stamp}-{uuid.uuid4().hex[:6]}"


def created_column(model: type) -> sa.Column[Any]:
    """The model's creation-time column, or an error naming what was looked for."""
    mapper: Any = sa.inspect(model)
    table: sa.Table = mapper.local_table
    for name in CREATED_COLUMNS:
        if name in table.c:
            column: sa.Column[Any] = table.c[name]
            return column
    raise PostRegError(
        f"replay selects users by creation time, but {model.__name__} has no column"
        f" named {', '.join(CREATED_COLUMNS)}. Add one in UTC (for example"
        " created_at = mapped_column(DateTime(timezone=True), default=lambda:"
        " datetime.now(timezone.utc))), or call postreg.emit(user) for the users to"
        " backfill."
    )


def _bound(column: sa.Column[Any], when: _dt.datetime) -> Any:
    """``when`` (aware) as the column stores times: naive UTC, aware, or epoch."""
    kind = column.type
    if when.tzinfo is not None:  # naive UTC below means UTC, not the given offset
        when = when.astimezone(_dt.timezone.utc)
    if isinstance(kind, sa.DateTime):
        return when if kind.timezone else when.replace(tzinfo=None)
    if isinstance(kind, sa.Date):
        return when.date()
    if isinstance(kind, (sa.Integer, sa.Float, sa.Numeric)):
        return when.timestamp()
    return when.replace(tzinfo=None)


def choose_hooks(state: _State, hook: str | None) -> list[Hook]:
    state.refresh_settings()
    every = state.hooks(include_disabled=True)
    if hook is None:
        hooks = [h for h in every if h.enabled]
        if not hooks:
            raise PostRegError("no enabled hook: nothing to replay")
        return hooks
    by_name = {h.name: h for h in every}
    if hook not in by_name:
        raise PostRegError(
            f"unknown hook {hook!r}. The app's hooks are:"
            f" {', '.join(sorted(by_name)) or '(none)'}"
        )
    if not by_name[hook].enabled:
        raise PostRegError(
            f"hook {hook!r} is disabled: enable it first (flask postreg enable {hook})"
        )
    return [by_name[hook]]


def replay(
    state: _State,
    *,
    since: _dt.datetime,
    until: _dt.datetime | None = None,
    hook: str | None = None,
    run_id: str | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Backfill; see the module docstring. Call inside an app context."""
    store = require_database(state)
    hooks = choose_hooks(state, hook)
    run_id = run_id or new_run_id()
    if len(run_id) > RUN_ID_WIDTH:
        raise PostRegError(
            f"the run id is {len(run_id)} characters long; a run id has at most"
            f" {RUN_ID_WIDTH} (the one a replay prints is 36)"
        )
    model = state.user_model
    column = created_column(model)
    mapper: Any = sa.inspect(model)
    pks: Sequence[sa.Column[Any]] = mapper.primary_key
    if len(pks) != 1:
        raise PostRegError(
            f"replay needs a single-column primary key on {model.__name__}"
        )
    pk = pks[0]
    # Users registering while the replay runs get their own live events: an
    # open window would give them a replayed one as well.
    until = until or _dt.datetime.now(_dt.timezone.utc)
    window = [column >= _bound(column, since), column < _bound(column, until)]
    # A session of its own: the caller's (db.session) may hold changes of its
    # own, which the rollback after each read must not throw away.
    with state.db.session.session_factory() as session:
        undated = session.execute(
            sa.select(sa.func.count()).select_from(model).where(column.is_(None))
        ).scalar_one()
        total = session.execute(
            sa.select(sa.func.count()).select_from(model).where(*window)
        ).scalar_one()
        if on_total is not None:
            on_total(int(total))
        e = store.t.events
        users = created = skipped = 0
        last: Any = None
        while True:
            query: Any = sa.select(model).where(*window).order_by(pk).limit(batch_size)
            if last is not None:
                query = query.where(pk > last)
            instances = list(session.execute(query).scalars())
            if not instances:
                break
            last = getattr(instances[-1], pk.key)
            events = [state.snapshot(instance) for instance in instances]
            session.rollback()  # end the read; writes go through their own transaction
            keys = {ev.id: stored_user_id(ev.user.id) for ev in events}
            ids = [k for k in keys.values() if k is not None]
            for attempt in range(1, CONFLICT_RETRIES + 1):
                try:
                    with store.begin() as conn:
                        done = {
                            row.user_id
                            for row in conn.execute(
                                sa.select(e.c.user_id).where(
                                    e.c.run_id == run_id, e.c.user_id.in_(ids)
                                )
                            )
                        }
                        fresh = [ev for ev in events if keys[ev.id] not in done]
                        if fresh and not dry_run:
                            store.write(conn, fresh, hooks, run_id=run_id, leased=False)
                    break
                except sa.exc.IntegrityError:
                    # Another replay of this run wrote some of these users' events
                    # since we looked (the unique run_id + user_id index): look again.
                    if attempt == CONFLICT_RETRIES:
                        raise
                except sa.exc.OperationalError as exc:
                    # SQLite in a transaction begun before the read (an explicit
                    # BEGIN): two writers deadlock and SQLite fails one at once
                    # ("database is locked"). Its rollback lets the other commit.
                    if (
                        not _sqlite_busy(store.engine, exc)
                        or attempt == CONFLICT_RETRIES
                    ):
                        raise
                    time.sleep(0.05 * attempt)
            users += len(events)
            created += len(fresh)
            skipped += len(events) - len(fresh)
            if progress is not None:
                progress(len(events))
    return ReplayResult(
        run_id=run_id,
        users=users,
        created=created,
        skipped=skipped,
        hooks=tuple(h.name for h in hooks),
        dry_run=dry_run,
        since=since.astimezone(_dt.timezone.utc).isoformat(),
        until=until.astimezone(_dt.timezone.utc).isoformat(),
        undated=int(undated),
    )
