"""Handing committed registrations to their app's dispatcher.

Usually at once, when the session's root transaction ends. A session joined to
a connection's transaction it did not begin (``Session(bind=conn)`` or
``binds={User: conn}`` inside ``conn.begin()``) only committed its part: its
registrations wait on that connection for the transaction's own COMMIT, follow
its SAVEPOINTs, and are dropped if it rolls back or its COMMIT fails.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy import event
from sqlalchemy.orm import Session

from .store.statements import QUIET_ERROR_LISTENERS

if TYPE_CHECKING:
    from .dispatch import Delivery
    from .state import _State

logger = logging.getLogger("flask_postreg")

#: connection.info key: an _Outer (registrations waiting for that transaction).
_OUTER = "flask_postreg.outer"
#: connection.info key: registrations of an outer transaction whose COMMIT is
#: under way, started when the connection begins again or is checked in.
_COMMITTING = "flask_postreg.committing"


def by_state(
    items: list[tuple[_State, Delivery]],
) -> list[tuple[_State, list[tuple[_State, Delivery]]]]:
    """``items`` grouped by app state, in order."""
    first = items[0][0] if items else None
    if all(item[0] is first for item in items):  # one app: the usual case
        return [(first, items)] if first is not None else []
    groups: dict[int, tuple[_State, list[tuple[_State, Delivery]]]] = {}
    for item in items:
        groups.setdefault(id(item[0]), (item[0], []))[1].append(item)
    return list(groups.values())


def outer_transaction(session: Session, state: _State) -> Connection | None:
    """The connection the user model is bound to, if it is in a transaction the
    session did not begin (it committed only its own part of it)."""
    bind = session.bind
    if not isinstance(bind, Connection):
        try:
            bind = session.get_bind(mapper=state.mapper)
        except Exception:  # no bind for the model: nothing was written
            return None
    return bind if isinstance(bind, Connection) and bind.in_transaction() else None


def hand_over(items: list[tuple[_State, Delivery]]) -> None:
    for state, group in by_state(items):
        state.committed([delivery for _, delivery in group])


@dataclasses.dataclass
class _Outer:
    """Registrations waiting for a connection's transaction that a session joined.

    Each batch is numbered as it arrives, and each SAVEPOINT of the connection
    begun since the first batch remembers the number it began at (a stack:
    savepoints end innermost first). Rolling one back drops exactly what arrived
    inside it; one begun before the first batch holds all of them.
    """

    items: list[tuple[int, tuple[_State, Delivery]]] = dataclasses.field(
        default_factory=list
    )
    seq: int = 0
    savepoints: list[int] = dataclasses.field(default_factory=list)


def defer(connection: Connection, items: list[tuple[_State, Delivery]]) -> None:
    outer: _Outer | None = connection.info.get(_OUTER)
    if outer is None:
        outer = connection.info[_OUTER] = _Outer()
        for name, fn in _OUTER_LISTENERS:
            if not event.contains(connection, name, fn):
                event.listen(connection, name, fn)
        engine = connection.engine
        if not event.contains(engine, "handle_error", _outer_commit_failed):
            event.listen(engine, "handle_error", _outer_commit_failed)
    outer.seq += 1
    outer.items.extend((outer.seq, item) for item in items)


def _outer_commit(connection: Connection) -> None:
    """SQLAlchemy's ``commit`` event: the database's COMMIT comes after it. A
    hook started here could miss its own user, and its outcome would wait on
    (or miss) rows not yet committed: hand over once the COMMIT is done, when
    the connection begins its next transaction or goes back to the pool."""
    outer: _Outer | None = _info(connection).pop(_OUTER, None)
    if outer is not None and outer.items:
        committing = connection.info.setdefault(_COMMITTING, [])
        committing.extend(item for _, item in outer.items)
        engine = connection.engine
        if not event.contains(engine, "checkin", _outer_checkin):
            event.listen(engine, "checkin", _outer_checkin)


def _outer_begin(connection: Connection) -> None:
    """The COMMIT before this is done (the connection's ``info`` is its pool
    record's, so what it committed is found at check-in too)."""
    hand_over_kept(_info(connection), _COMMITTING)


def _outer_checkin(dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        hand_over_kept(record.info, _COMMITTING)


def hand_over_kept(info: dict[Any, Any], key: str) -> None:
    """Start the committed registrations kept in ``info`` under ``key``. Never
    raises: the caller's commit, begin or close must not fail for us."""
    items = info.pop(key, None)
    if items:
        try:
            hand_over(items)
        except Exception:
            logger.exception(
                "flask-postreg could not hand committed registrations over"
            )


def _outer_commit_failed(context: sa.engine.ExceptionContext) -> None:
    """The COMMIT after a ``commit`` event failed (a deferred constraint, a
    serialization failure, a lost connection): nothing it held was committed,
    so its registrations run no hooks. (A failed statement has a ``statement``;
    a failed COMMIT has none.)"""
    connection = context.connection
    if connection is None or context.statement is not None:
        return
    try:
        # Other calls fail with no statement too (a check of the isolation
        # level, say); a failing COMMIT is the only one still in its transaction.
        if not connection.in_transaction():
            return
    except Exception:
        return
    items = _info(connection).pop(_COMMITTING, None)
    if items:
        logger.warning(
            "flask-postreg: the COMMIT of a transaction a session joined failed"
            " (%s); its %d registration(s) run no hooks",
            type(context.original_exception).__name__,
            len(items),
        )


QUIET_ERROR_LISTENERS.add(_outer_commit_failed)


def _info(connection: Connection) -> dict[Any, Any]:
    """``connection.info``, or an empty dict when the connection is invalidated
    (reading it would try to reconnect and fail the app's rollback; the
    reconnect clears it anyway)."""
    try:
        return connection.info
    except Exception:
        return {}


def _outer_rollback(connection: Connection) -> None:
    info = _info(connection)
    info.pop(_OUTER, None)
    info.pop(_COMMITTING, None)  # a COMMIT that failed, rolled back


def _outer_savepoint(connection: Connection, name: str | None) -> None:
    outer: _Outer | None = _info(connection).get(_OUTER)
    if outer is not None:
        outer.savepoints.append(outer.seq)


def _outer_rollback_savepoint(connection: Connection, name: str, context: Any) -> None:
    outer: _Outer | None = _info(connection).get(_OUTER)
    if outer is not None:
        began = outer.savepoints.pop() if outer.savepoints else 0
        outer.items = [(n, item) for n, item in outer.items if n <= began]


def _outer_release_savepoint(connection: Connection, name: str, context: Any) -> None:
    outer: _Outer | None = _info(connection).get(_OUTER)
    if outer is not None and outer.savepoints:  # its batches go to its parent
        outer.savepoints.pop()


_OUTER_LISTENERS = (
    ("commit", _outer_commit),
    ("begin", _outer_begin),
    ("rollback", _outer_rollback),
    ("savepoint", _outer_savepoint),
    ("rollback_savepoint", _outer_rollback_savepoint),
    ("release_savepoint", _outer_release_savepoint),
)
