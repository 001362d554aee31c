"""The outbox's hot statements: compiled once per dialect, run on the driver's
cursor.

The outbox INSERTs run in every registration's transaction, where each
microsecond is measured (``make bench``): SQLAlchemy's per-statement
compile-cache lookup and execution context cost more than SQLite's own work for
these rows, and the outcome writer holds the database's write lock shorter.
When anything watches or rewrites the connection's statements the statement goes
through SQLAlchemy as usual, so nothing the app relies on is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

Statement = sa.Insert | sa.Update


#: ``handle_error`` listeners of this package that ignore statement errors (the
#: driver path may skip them).
QUIET_ERROR_LISTENERS: set[Callable[..., Any]] = set()


def watched(connection: sa.Connection) -> bool:
    """Does anything observe or rewrite this connection's statements or errors?

    Execute and cursor listeners (Flask-SQLAlchemy's query recording, tracing
    libraries), ``handle_error`` listeners (but ours), SQL logging, a
    ``schema_translate_map``.
    """
    dispatch = connection.dispatch
    return bool(
        dispatch.before_execute
        or dispatch.after_execute
        or dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
        or _handles_errors(connection)
        or connection.engine.logger.isEnabledFor(logging.INFO)
        or connection.get_execution_options().get("schema_translate_map")
    )


def _handles_errors(connection: sa.Connection) -> bool:
    listeners = connection.dialect.dispatch.handle_error
    return bool(listeners) and any(fn not in QUIET_ERROR_LISTENERS for fn in listeners)


class StatementCache:
    """Statements by name, and their driver SQL by (dialect, paramstyle, name)."""

    def __init__(self) -> None:
        self._statements: dict[tuple[str, str], Statement] = {}
        self._compiled: dict[tuple[str, ...], tuple[str, list[str] | None]] = {}

    def execute(
        self,
        connection: sa.Connection,
        name: tuple[str, str],
        build: Callable[[], Statement],
        rows: list[dict[str, Any]],
    ) -> None:
        """Run the statement ``name`` (made by ``build`` the first time) for
        ``rows`` (all with the same keys), on ``connection``'s transaction.

        Either way an error is SQLAlchemy's ``DBAPIError`` without parameters:
        the payload is personal data.
        """
        stmt = self._statements.get(name)
        if stmt is None:
            stmt = self._statements[name] = build()
        if watched(connection):
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
