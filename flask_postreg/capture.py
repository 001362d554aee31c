"""SQLAlchemy session listeners: see new users at flush, release them at commit.

``after_flush``  snapshots each new instance of the app's user model (subclasses
                 too) into an :class:`~flask_postreg.Event` (in database mode also
                 writing its outbox rows on the flush's connection), keyed by the
                 innermost transaction (savepoint or root).
``after_commit`` on a savepoint release moves its events to the parent; on the
                 root commit marks them committed. Never raises.
``after_transaction_end`` on the root, after a commit, hands the committed
                 events to the app's dispatcher: the session has given its
                 connection back by then, so an inline (sync) hook or outcome
                 write never waits on a pool that has no other connection.
                 Otherwise it drops what is still keyed on the ended
                 transaction: that transaction was rolled back.

The listeners are module-level functions installed once on
:class:`sqlalchemy.orm.Session` (so every session class sees them), and routed
by ``current_app``: an app without the extension never fires.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import TYPE_CHECKING
from typing import Any

import sqlalchemy as sa
from flask.globals import _cv_app
from sqlalchemy import Connection
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction
from sqlalchemy.orm.attributes import instance_state

from .handover import by_state
from .handover import defer
from .handover import hand_over_kept
from .handover import outer_transaction

if TYPE_CHECKING:
    from .dispatch import Delivery
    from .events import Event
    from .events import User
    from .state import _State

logger = logging.getLogger("flask_postreg")

_PENDING = "flask_postreg.pending"
#: InstanceState -> event id of the users captured in the session's transaction.
_CAPTURED = "flask_postreg.captured"
#: Deliveries of a root commit, handed over when the root transaction ends.
_COMMITTED = "flask_postreg.committed"
#: Set when a flush deleted a captured user: the root commit checks which stood.
_DELETES = "flask_postreg.deletes"
#: Set by a DELETE statement (an ORM bulk delete) in the session's transaction.
_BULK_DELETE = "flask_postreg.bulk_delete"
#: Event ids of captured users a DELETE statement removed (found at the commit).
_GONE = "flask_postreg.gone"
#: SessionTransaction -> {event id: Event}: captured users a later flush of that
#: transaction updated, snapshot again (:func:`_revise`).
_REVISED = "flask_postreg.revised"
_install_lock = threading.Lock()

Pending = dict[SessionTransaction, list[tuple["_State", "Delivery"]]]


def _state() -> _State | None:
    """The current app's state, or None (no app context, no extension, disabled)."""
    ctx = _cv_app.get(None)  # the proxy's own lookup, minus its overhead
    if ctx is None:
        return None
    state: _State | None = ctx.app.extensions.get("postreg")
    if state is None or not state.enabled:
        return None
    return state


def after_flush(session: Session, flush_context: Any) -> None:
    state = _state()
    if state is None:
        return
    model = state.user_model
    # Only rows this flush wrote (flush(objects=[...]) leaves others pending).
    flushed = getattr(flush_context, "states", None)
    captured: dict[Any, str] | None = session.info.get(_CAPTURED)
    if captured:
        if session.deleted:
            _forget_deleted(state, session, flushed, captured)
        _revise(state, session, flushed, captured)
    new = [
        obj
        for obj in session.new
        if isinstance(obj, model)
        and (flushed is None or instance_state(obj) in flushed)
    ]
    if not new:
        return
    deliveries, events = state.capture(new, session)
    if not deliveries:
        return
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:  # pragma: no cover - a flush always has one
        return
    pending: Pending = session.info.setdefault(_PENDING, {})
    pending.setdefault(transaction, []).extend((state, d) for d in deliveries)
    session.info.setdefault(_CAPTURED, {}).update(events)


def _revise(
    state: _State, session: Session, flushed: Any, captured: dict[Any, str]
) -> None:
    """Users captured by an earlier flush of this transaction and updated by this
    one (``flush()`` for the id, then ``user.username = f"user{user.id}"``): the
    hooks get what is committed, so they are snapshot again, same event id and
    context. Kept per transaction as the deliveries are (a SAVEPOINT rolled back
    takes its revisions along); the event rows are updated in the transaction.
    """
    keys = flushed if flushed is not None else map(instance_state, session.dirty)
    updated = [
        key
        for key in keys
        if key in captured
        and (obj := key.obj()) is not None
        and obj not in session.deleted
        and obj not in session.new
    ]
    if not updated:
        return
    revised: dict[SessionTransaction, dict[str, Event]] = session.info.setdefault(
        _REVISED, {}
    )
    latest = _events(session)
    for level in revised.values():
        latest.update(level)
    changed = []
    for key in updated:
        event = latest.get(captured[key])
        if event is None:  # nothing to deliver for it
            continue
        try:
            user = _resnapshot(state, key, event.user)
        except Exception:
            logger.exception(
                "flask-postreg could not snapshot an updated %s again; its hooks"
                " get it as first flushed",
                key.class_.__name__,
            )
            continue
        if user != event.user:
            changed.append(dataclasses.replace(event, user=user))
    if not changed:
        return
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:  # pragma: no cover - a flush always has one
        return
    state.revise(changed, session)
    revised.setdefault(transaction, {}).update((e.id, e) for e in changed)


def _resnapshot(state: _State, key: Any, before: User) -> User:
    """``key``'s user again; a field whose attribute is not loaded now (expired:
    set to a SQL expression, ``session.expire()``, a server-side ``onupdate``)
    keeps its value from ``before`` (a snapshot never loads with SQL)."""
    user = state.snapshot_user(key.obj())
    unloaded = key.unloaded
    if unloaded:
        columns = state.field_map(key.class_).columns
        kept = {
            f: getattr(before, f) for f, name in columns.items() if name in unloaded
        }
        if kept:
            user = dataclasses.replace(user, **kept)
    return user


def _events(session: Session) -> dict[str, Event]:
    """The events of the deliveries pending in the session, by id."""
    pending: Pending = session.info.get(_PENDING) or {}
    return {d.event.id: d.event for group in pending.values() for _, d in group}


def _with_revisions(
    session: Session, items: list[tuple[_State, Delivery]]
) -> list[tuple[_State, Delivery]]:
    """``items`` with the last snapshot of each user a flush updated (the root
    commits: every revision still kept is the root's or a released SAVEPOINT's)."""
    revised = session.info.pop(_REVISED, None)
    if not revised:
        return items
    last: dict[str, Event] = {}
    for level in revised.values():
        last.update(level)
    return [
        (state, dataclasses.replace(d, event=last[d.event.id]))
        if d.event.id in last
        else (state, d)
        for state, d in items
    ]


def _forget_deleted(
    state: _State, session: Session, flushed: Any, captured: dict[Any, str]
) -> None:
    """Users captured earlier in this transaction and deleted by this flush:
    their outbox rows go (database mode, in the flush's transaction, so rolling
    back a SAVEPOINT around the delete brings them back). Their deliveries stay
    pending until the root commit, which drops those whose delete stood."""
    gone = set()
    for obj in session.deleted:
        key = instance_state(obj)
        if flushed is None or key in flushed:
            event_id = captured.get(key)
            if event_id is not None:
                gone.add(event_id)
    if gone:
        session.info[_DELETES] = True
        state.forget(gone, session)


def _without_deleted(
    session: Session, items: list[tuple[_State, Delivery]]
) -> list[tuple[_State, Delivery]]:
    """``items`` without the deliveries of users whose delete was committed
    (SQLAlchemy reverts ``was_deleted`` when a SAVEPOINT around it rolls back),
    or whose row a DELETE statement removed (found by ``before_commit``)."""
    gone = _marked_deleted(session.info.get(_CAPTURED) or {})
    gone |= session.info.pop(_GONE, set())
    return [item for item in items if item[1].event.id not in gone]


def _marked_deleted(captured: dict[Any, str]) -> set[str]:
    """Event ids of captured users the session holds as deleted."""
    return {event_id for key, event_id in captured.items() if key.was_deleted}


def do_orm_execute(orm_execute_state: Any) -> None:
    """A DELETE statement on the user model's tables (``session.execute(
    delete(User)...)``, ``Query.delete()``): the commit checks which captured
    users still have a row."""
    if not orm_execute_state.is_delete:
        return
    state = _state()
    table = getattr(orm_execute_state.statement, "table", None)
    if state is not None and table is not None and table not in state.mapper.tables:
        return  # another model's rows
    orm_execute_state.session.info[_BULK_DELETE] = True


def before_commit(session: Session) -> None:
    """After a DELETE statement in this transaction, users captured in it whose
    row is gone (one SELECT): their outbox rows go now, in the transaction, and
    their deliveries at the root commit.

    Checked at every commit (a SAVEPOINT's release too, and the root's last, so
    its answer stands), inside a SAVEPOINT of its own: a failed SELECT must not
    abort the registration's transaction (PostgreSQL would then roll it back
    at COMMIT without a word). Should it fail, those hooks run, as before.
    """
    if _BULK_DELETE not in session.info:
        return
    captured: dict[Any, str] | None = session.info.get(_CAPTURED)
    state = _state()
    if not captured or state is None:
        return
    try:
        connection = state.user_connection(session)
        with connection.begin_nested():
            gone = _rows_gone(connection, captured)
            if gone:
                state.forget(gone, session)
    except Exception:
        logger.exception(
            "flask-postreg could not check for captured users a DELETE removed;"
            " their hooks will run"
        )
        return
    session.info[_GONE] = gone
    if gone:
        session.info[_DELETES] = True


#: Ids per SELECT of :func:`_rows_gone` (databases cap bound parameters).
_ROWS_PER_CHECK = 500


def _rows_gone(connection: Connection, captured: dict[Any, str]) -> set[str]:
    """Event ids of captured users whose row is no longer there."""
    gone = _marked_deleted(captured)
    by_mapper: dict[Any, dict[tuple[Any, ...], str]] = {}
    for key, event_id in captured.items():
        if event_id not in gone and key.identity is not None:
            mapper = key.mapper.base_mapper
            by_mapper.setdefault(mapper, {})[tuple(key.identity)] = event_id
    for mapper, ids in by_mapper.items():
        columns = mapper.primary_key
        keys = list(ids)
        found: set[tuple[Any, ...]] = set()
        for start in range(0, len(keys), _ROWS_PER_CHECK):
            chunk = keys[start : start + _ROWS_PER_CHECK]
            wanted = (
                columns[0].in_([k[0] for k in chunk])
                if len(columns) == 1
                else sa.tuple_(*columns).in_(chunk)
            )
            query = sa.select(*columns).where(wanted)
            found.update(tuple(row) for row in connection.execute(query))
        gone.update(event_id for k, event_id in ids.items() if k not in found)
    return gone


def after_commit(session: Session) -> None:
    pending: Pending | None = session.info.get(_PENDING)
    if not pending:
        return
    try:
        nested = session.get_nested_transaction()
        if nested is not None:  # a SAVEPOINT was released: the parent decides
            moved = pending.pop(nested, None)
            if moved and nested.parent is not None:
                pending.setdefault(nested.parent, []).extend(moved)
            revised = session.info.get(_REVISED) or {}
            later = revised.pop(nested, None)
            if later and nested.parent is not None:
                revised.setdefault(nested.parent, {}).update(later)
            return
        session.info.pop(_PENDING, None)
        items = [item for group in pending.values() for item in group]
        items = _with_revisions(session, items)
        if session.info.pop(_DELETES, False):
            items = _without_deleted(session, items)
        session.info.pop(_CAPTURED, None)
        for state, group in by_state(items):
            outer = outer_transaction(session, state)
            if outer is None:
                session.info.setdefault(_COMMITTED, []).extend(group)
            else:
                # The session joined a transaction it does not own
                # (Session(bind=conn) or binds={User: conn} inside conn.begin()):
                # the rows are committed only when that transaction is; hand
                # over then, or drop on its rollback.
                defer(outer, group)
    except Exception:  # commit() must not raise for us: the row is committed
        logger.exception("flask-postreg could not hand committed registrations over")


def after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the root ended: its users are settled
        for key in (_CAPTURED, _DELETES, _BULK_DELETE, _GONE, _REVISED):
            session.info.pop(key, None)
        hand_over_kept(session.info, _COMMITTED)
    revised = session.info.get(_REVISED)
    if revised:  # a SAVEPOINT rolled back (or moved to its parent already)
        revised.pop(transaction, None)
    pending: Pending | None = session.info.get(_PENDING)
    if not pending:
        return
    pending.pop(transaction, None)
    if not pending:
        session.info.pop(_PENDING, None)


_LISTENERS = (
    ("after_flush", after_flush),
    ("do_orm_execute", do_orm_execute),
    ("before_commit", before_commit),
    ("after_commit", after_commit),
    ("after_transaction_end", after_transaction_end),
)


def install() -> None:
    """Install the listeners once per process (SQLAlchemy does not de-duplicate)."""
    with _install_lock:
        for name, fn in _LISTENERS:
            if not event.contains(Session, name, fn):
                event.listen(Session, name, fn)
