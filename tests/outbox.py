"""Read the outbox tables back, and check they match exactly what was committed."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from flask import Flask

from flask_postreg import User
from flask_postreg.events import Context
from flask_postreg.events import Event
from flask_postreg.events import new_event_id

from .models import Account


def store(app: Flask) -> Any:
    return app.extensions["postreg"].store


def is_database(app: Flask) -> bool:
    return getattr(store(app), "name", "") == "database"


def events(app: Flask) -> list[dict[str, Any]]:
    """Every ``postreg_events`` row: id, user_id, and the payload's user e-mail."""
    s = store(app)
    e = s.t.events
    with s.engine.connect() as conn:
        rows = conn.execute(sa.select(e.c.id, e.c.user_id, e.c.payload)).all()
    return [
        {
            "id": r.id,
            "user_id": r.user_id,
            "email": json.loads(r.payload)["user"]["email"],
            "payload": r.payload,
        }
        for r in rows
    ]


def deliveries(app: Flask) -> list[Any]:
    """Every ``postreg_deliveries`` row, after writing batched outcomes, with its
    delivery ``id`` (``event_id:hook``)."""
    s = store(app)
    s.flush()
    d = s.t.deliveries
    delivery_id = (d.c.event_id + ":" + d.c.hook).label("id")
    with s.engine.connect() as conn:
        return list(conn.execute(sa.select(d, delivery_id)).all())


def accounts(app: Flask) -> dict[str, str]:
    """Committed accounts in the app's database: e-mail -> id (as text)."""
    s = store(app)
    table = Account.__table__
    with s.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.email, table.c.id)).all()
    return {email: str(id_) for email, id_ in rows}


def assert_rows_match_committed(
    app: Flask, emails: Iterable[str], *, emitted: Iterable[str] = ()
) -> None:
    """Database mode: the outbox holds exactly the committed users' events.

    ``emails`` are the users whose hooks ran; ``emitted`` those among them sent
    with ``postreg.emit(User(...))`` that have no account row. Checks:

    - one ``postreg_events`` row per registration, for exactly those users;
    - every account in the database has its event (none without), and the
      event's ``user_id`` is that account's id;
    - one ``postreg_deliveries`` row per event per enabled hook, all succeeded
      (call after ``postreg.join()``).
    """
    if not is_database(app):
        return
    expected = sorted(emails)
    emitted = set(emitted)
    rows = events(app)
    assert sorted(r["email"] for r in rows) == expected
    committed = accounts(app)
    assert sorted(committed) == sorted(e for e in expected if e not in emitted)
    for row in rows:
        if row["email"] in committed:
            assert row["user_id"] == committed[row["email"]], row
    hooks = sorted(h.name for h in app.extensions["postreg"].hooks())
    per_event: dict[str, list[str]] = collections.defaultdict(list)
    for d in deliveries(app):
        per_event[d.event_id].append(d.hook)
        assert d.status == "succeeded", (d.hook, d.status, d.error)
    assert set(per_event) == {r["id"] for r in rows}
    for event_id, names in per_event.items():
        assert sorted(names) == hooks, event_id


def row(app: Flask, row_id: str) -> Any:
    """The ``postreg_deliveries`` row of one delivery id."""
    (found,) = [d for d in deliveries(app) if d.id == row_id]
    return found


def make_event(i: int) -> Event:
    """An event for user ``i``, as a registration would make it."""
    event_id = new_event_id()
    user = User(id=str(i), email=f"u{i}@example.com", username=f"u{i}")
    return Event(id=event_id, user=user, context=Context(event_id=event_id))


def written_deliveries(
    make_app: Any,
    n: int,
    hook: str = "h",
    config: dict[str, Any] | None = None,
    **options: Any,
) -> tuple[Any, ...]:
    """An app (``config``) with one no-op ``hook`` (``options`` are the hook's)
    and ``n`` deliveries of it written straight to the outbox, pre-leased as a
    registration writes them (and not queued): ``(app, state, store,
    deliveries)``."""
    app, postreg = make_app(**(config or {}))
    postreg.hook(lambda user, context: None, name=hook, **options)
    state = app.extensions["postreg"]
    hooks = [h for h in state.hooks() if h.name == hook]
    s = store(app)
    with s.engine.begin() as conn:
        written = s.write(conn, [make_event(i) for i in range(n)], hooks)
    return app, state, s, written


def due_deliveries(make_app: Any, n: int, hook: str = "h") -> tuple[Any, ...]:
    """:func:`written_deliveries`, released: pending and due now for any
    process's poller. ``(app, state, store)``."""
    app, state, s, written = written_deliveries(make_app, n, hook)
    s.release([d.row_id for d in written])
    return app, state, s
