"""The outbox tables, declared on the host's metadata (``postreg_`` prefix).

They sit on the user model's ``MetaData`` (so on its bind): ``db.create_all()``
and Flask-Migrate autogenerate see them; the extension never creates them itself.
Times are UTC epoch seconds (floats): comparable and indexable the same way on
every database. Indexes are few on purpose: each one is written in the
registration's own transaction, and on a SQLite file each B-tree a commit touches
is one more page journaled and synced: a registration writes three (the event,
its deliveries, the poller's index); the partial index of dead letters takes no
registration's row. Event ids are time-ordered, so inserts
append to the B-trees instead of landing at random pages; on SQLite the tables
are WITHOUT ROWID, so a text primary key is one B-tree, not a table plus an index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa

from ..dispatch import DEAD
from ..dispatch import PENDING
from ..dispatch import RUNNING

EVENTS = "postreg_events"
DELIVERIES = "postreg_deliveries"
HOOK_SETTINGS = "postreg_hook_settings"

#: The rows the poller may claim; its query spells this condition the same way
#: (as literals: SQLite uses a partial index only for a matching condition).
OPEN_STATUSES = f"status IN ('{PENDING}', '{RUNNING}')"
#: The dead letters, spelled the same way by the queries that list or retry them.
DEAD_ONLY = f"status = '{DEAD}'"


#: Width of ``postreg_events.user_id``.
USER_ID_WIDTH = 255
#: Width of ``postreg_events.run_id`` (a replay's run id).
RUN_ID_WIDTH = 64


def stored_user_id(user_id: str | None) -> str | None:
    """A user id as the events row holds it (cut to the column's width): what
    writes store and what lookups by user (a replay's) must compare."""
    return user_id[:USER_ID_WIDTH] if user_id else None


@dataclasses.dataclass(frozen=True)
class Tables:
    events: sa.Table
    deliveries: sa.Table
    hook_settings: sa.Table


def _partial(name: str, *columns_and_where: str, unique: bool = False) -> sa.Index:
    """An index over the columns, of the rows matching the last argument (a
    condition written the same way as the queries that use it)."""
    *columns, where = columns_and_where
    return sa.Index(
        name,
        *columns,
        unique=unique,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )


def tables_for(metadata: sa.MetaData) -> Tables:
    """The three tables on ``metadata``, declared once (many apps share a db);
    in its default ``schema`` if it has one, as the user model's tables are."""

    def key(name: str) -> str:
        return f"{metadata.schema}.{name}" if metadata.schema else name

    if key(EVENTS) not in metadata.tables:
        sa.Table(
            EVENTS,
            metadata,
            sa.Column("id", sa.String(40), primary_key=True, comment="event id"),
            sa.Column("user_id", sa.String(USER_ID_WIDTH), nullable=True),
            sa.Column(
                "payload",
                sa.Text,
                nullable=False,
                comment="Auth0-shaped JSON, no secrets",
            ),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column(
                "run_id", sa.String(RUN_ID_WIDTH), nullable=True, comment="replay run"
            ),
            # Only replays set run_id: a partial index costs registrations nothing.
            # Unique: two replays of one run cannot both write a user's event.
            _partial(
                "ix_postreg_events_run_id",
                "run_id",
                "user_id",
                "run_id IS NOT NULL",
                unique=True,
            ),
            sqlite_with_rowid=False,
        )
    if key(DELIVERIES) not in metadata.tables:
        sa.Table(
            DELIVERIES,
            metadata,
            # One row per (event, hook): the key leads with the event, so an
            # event's deliveries (and the foreign key's checks) need no index.
            sa.Column(
                "event_id",
                sa.String(40),
                sa.ForeignKey(f"{key(EVENTS)}.id", ondelete="CASCADE"),
                primary_key=True,
            ),
            sa.Column("hook", sa.String(255), primary_key=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False, default=0),
            sa.Column(
                "claim", sa.Integer, nullable=False, default=0, comment="lease token"
            ),
            sa.Column("locked_until", sa.Float, nullable=True, comment="lease end"),
            sa.Column(
                "next_attempt_at",
                sa.Float,
                nullable=False,
                comment="when the poller looks next: due time, or lease end",
            ),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Column("duration", sa.Float, nullable=True),
            sa.Column("error_class", sa.String(255), nullable=True),
            sa.Column("error", sa.Text, nullable=True),
            # The poller's one query: pending and due, or running with its lease
            # ended (a running row's next_attempt_at is its lease end).
            # Partial: finished rows (almost all of them) leave it, so it stays
            # small and recording an outcome only deletes an entry.
            _partial(
                "ix_postreg_deliveries_due", "status", "next_attempt_at", OPEN_STATUSES
            ),
            # Dead letters, newest first (``deliveries --status dead``, ``retry
            # --dead``): few rows, none written by a registration.
            _partial("ix_postreg_deliveries_dead", "event_id", "hook", DEAD_ONLY),
            sqlite_with_rowid=False,
        )
    if key(HOOK_SETTINGS) not in metadata.tables:
        sa.Table(
            HOOK_SETTINGS,
            metadata,
            sa.Column("hook", sa.String(255), primary_key=True),
            sa.Column("enabled", sa.Boolean, nullable=False),
            sa.Column("updated_at", sa.Float, nullable=False),
        )
    return Tables(
        metadata.tables[key(EVENTS)],
        metadata.tables[key(DELIVERIES)],
        metadata.tables[key(HOOK_SETTINGS)],
    )


def table_problems(
    inspector: Any, tables: Iterable[sa.Table]
) -> tuple[list[str], list[str]]:
    """The names of ``tables`` missing from the database, and how each of the
    others differs from what this version writes (missing columns, another
    primary key: a table created by an earlier version), as ``name (problems)``."""
    missing, stale = [], []
    for table in tables:
        if not inspector.has_table(table.name, schema=_schema(inspector, table)):
            missing.append(table.name)
            continue
        columns = inspector.get_columns(table.name, schema=_schema(inspector, table))
        found = {c["name"] for c in columns}
        problems = [f"no column {c.name}" for c in table.columns if c.name not in found]
        key = inspector.get_pk_constraint(table.name, schema=_schema(inspector, table))
        ours = [c.name for c in table.primary_key.columns]
        if sorted(key.get("constrained_columns") or []) != sorted(ours):
            problems.append(f"primary key is not ({', '.join(ours)})")
        if problems:
            stale.append(f"{table.name} ({'; '.join(problems)})")
    return missing, stale


def _schema(inspector: Any, table: sa.Table) -> str | None:
    """The schema ``table`` is in for this connection: its own, as the
    connection's ``schema_translate_map`` renders it (the app's engine may set
    one, and reflection does not apply it)."""
    bind = getattr(inspector, "bind", None)
    options = bind.get_execution_options() if bind is not None else {}
    translate = options.get("schema_translate_map")
    if translate and table.schema in translate:
        return translate[table.schema]  # type: ignore[no-any-return]
    return table.schema


def index_problems(inspector: Any, tables: Iterable[sa.Table]) -> list[str]:
    """Indexes of ``tables`` missing, or on other columns, uniqueness or
    partiality than this version declares (made by an earlier version): rows are
    still written, but a guarantee or a speed-up the index gives is missing.

    A partial index's condition is compared for presence only: PostgreSQL
    reflects it rewritten (``status::text = ANY (ARRAY[...])``).
    """
    dialect = inspector.dialect.name
    problems = []
    for table in tables:
        found = {
            ix["name"]: ix
            for ix in inspector.get_indexes(
                table.name, schema=_schema(inspector, table)
            )
        }
        for index in table.indexes:
            columns = [c.name for c in index.columns]
            have = found.get(index.name)
            unique = "unique " if index.unique else ""
            where = _where(index, dialect)
            shape = f"{unique}({', '.join(columns)})"
            if have is None:
                problems.append(f"{index.name} is missing")
            elif list(have["column_names"]) != columns or bool(have["unique"]) != bool(
                index.unique
            ):
                problems.append(f"{index.name} is not {shape}")
            elif (where is None) != (
                (have.get("dialect_options") or {}).get(f"{dialect}_where") is None
            ):
                only = "not partial" if where is None else f"partial (WHERE {where})"
                problems.append(f"{index.name} is not {only}")
    return problems


def _where(index: sa.Index, dialect: str) -> str | None:
    """The declared condition of a partial index on ``dialect``, or None."""
    options = index.dialect_options.get(dialect) if dialect in _PARTIAL else None
    where = options.get("where") if options is not None else None
    return None if where is None else str(where)


#: Dialects whose partial indexes SQLAlchemy reflects (``<name>_where``).
_PARTIAL = ("sqlite", "postgresql")
