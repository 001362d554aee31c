"""``flask postreg replay``: a resumable backfill, on the example app's model."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from example_app import create_app
from example_app import db
from example_app import postreg
from example_app.models import User
from flask_postreg import PostReg
from flask_postreg.testing import record_events

from .conftest import sqlite_savepoint_recipe


@pytest.fixture
def app(tmp_path):
    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/replay.db",
            "POSTREG_CONSOLE": True,
            "POSTREG_SLACK_WEBHOOK_URL": None,
            "POSTREG_WEBHOOKS": [],
        }
    )
    now = dt.datetime.now(dt.timezone.utc)
    with record_events(app), app.app_context():  # existing users: no hooks now
        for i in range(7):
            db.session.add(
                User(username=f"u{i}", email=f"u{i}@example.com", password_hash="x")
            )
        db.session.add(
            User(
                username="old",
                email="old@example.com",
                password_hash="x",
                created_at=now - dt.timedelta(days=10),
            )
        )
        db.session.commit()
    yield app
    postreg.shutdown(5)
    with app.app_context():
        db.engine.dispose()


def invoke(app, *args):
    return app.test_cli_runner().invoke(args=["postreg", *args])


def rows(app, run_id=None):
    store = app.extensions["postreg"].store
    e, d = store.t.events, store.t.deliveries
    with store.engine.connect() as conn:
        events = conn.execute(
            sa.select(e.c.user_id).where(e.c.run_id == run_id)
            if run_id
            else sa.select(e.c.user_id)
        ).all()
        deliveries = conn.execute(sa.select(d.c.hook, d.c.status, d.c.attempts)).all()
    return [r.user_id for r in events], deliveries


def test_replay_twice_with_the_same_run_id_creates_no_duplicate(app):
    result = invoke(
        app, "replay", "--since", "3d", "--run-id", "r1", "--batch-size", "3"
    )
    assert result.exit_code == 0, result.output
    assert "created 7 event(s)" in result.output
    users, deliveries = rows(app, "r1")
    assert len(users) == len(set(users)) == 7
    assert {(h, s, a) for h, s, a in deliveries} == {("console", "pending", 0)}
    assert len(deliveries) == 7

    again = json.loads(
        invoke(app, "replay", "--since", "3d", "--run-id", "r1", "--json").output
    )
    window = {k: again.pop(k) for k in ("since", "until")}
    assert again == {
        "run_id": "r1",
        "users": 7,
        "created": 0,
        "skipped": 7,
        "hooks": ["console"],
        "dry_run": False,
        "deliveries": 0,
        "undated": 0,
    }
    since, until = (dt.datetime.fromisoformat(window[k]) for k in ("since", "until"))
    assert dt.timedelta(days=3) <= until - since < dt.timedelta(days=3, minutes=5)
    assert len(rows(app, "r1")[0]) == 7
    # A different run is a different backfill.
    other = json.loads(invoke(app, "replay", "--since", "30d", "--json").output)
    assert other["created"] == 8 and other["run_id"].startswith("replay-")


def test_replay_resumes_an_interrupted_run(app):
    state = app.extensions["postreg"]
    from flask_postreg.replay import replay

    with app.app_context():
        first = replay(state, since=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
                       until=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1),
                       run_id="r2")  # fmt: skip
    assert first.created == 1  # only "old"
    result = invoke(app, "replay", "--since", "2000-01-01", "--run-id", "r2", "--json")
    data = json.loads(result.output)
    assert (data["created"], data["skipped"]) == (7, 1)
    assert len(rows(app, "r2")[0]) == 8


def test_a_time_with_an_offset_is_that_instant(app):
    """``--since`` with an offset selects from that instant: the model stores
    naive UTC, so the bound is converted, not stripped of its offset (which
    moved the window by the offset and missed the users in between)."""
    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=10)
    since = (old - dt.timedelta(hours=1)).astimezone(dt.timezone(dt.timedelta(hours=5)))
    result = invoke(
        app, "replay", "--since", since.isoformat(), "--until", "3d", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["created"] == 1  # "old", 10 days ago


def test_users_registering_during_a_replay_are_left_to_their_own_events(app):
    """Without --until the window ends when the replay starts: a user who
    registers while it runs gets a live event, not a replayed one as well."""
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    with record_events(app), app.app_context():  # as if it registered mid-run
        db.session.add(
            User(username="late", email="late@example.com", password_hash="x",
                 created_at=soon)
        )  # fmt: skip
        db.session.commit()
    data = json.loads(invoke(app, "replay", "--since", "1d", "--json").output)
    assert data["created"] == 7, data  # u0..u6, not "late"
    assert dt.datetime.fromisoformat(data["until"]) < soon


def test_replay_leaves_the_callers_session_alone(app):
    """Called from Python with uncommitted changes in db.session: the replay
    reads in a session of its own, so its rollbacks do not throw them away."""
    from flask_postreg.replay import replay

    with record_events(app), app.app_context():
        pending = User(
            username="pending", email="pending@example.com", password_hash="x"
        )
        db.session.add(pending)
        result = replay(
            app.extensions["postreg"],
            since=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
        )
        assert result.created == 8
        assert pending in db.session.new
        db.session.commit()
        assert db.session.get(User, pending.id) is not None


@contextlib.contextmanager
def own_model_app(tmp_path, db_, model, rows):
    """An app of its own for ``model`` (on ``db_``) with one no-op hook and
    ``rows`` committed without running hooks; yields (app, state)."""
    app_ = Flask(__name__)
    app_.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/own.db"
    db_.init_app(app_)
    ext = PostReg()
    ext.hook(lambda u, c: None, name="h")
    ext.init_app(app_, db=db_, user_model=model)
    try:
        with record_events(app_), app_.app_context():
            db_.create_all()
            db_.session.add_all(rows)
            db_.session.commit()
        with app_.app_context():
            yield app_, app_.extensions["postreg"]
    finally:
        ext.shutdown(5)
        with app_.app_context():
            db_.engine.dispose()


def test_users_without_a_creation_time_are_counted_not_replayed(tmp_path):
    """Rows older than the creation-time column (NULL) are in no window: the
    result says how many, instead of leaving them out silently."""
    from flask_postreg.replay import replay

    class Base(DeclarativeBase):
        pass

    members = SQLAlchemy(model_class=Base)

    class Member(members.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str]
        created_at: Mapped[dt.datetime | None]

    now = dt.datetime.now(dt.timezone.utc)
    rows_ = [
        Member(email="old@example.com", created_at=None),
        Member(email="new@example.com", created_at=now),
    ]
    with own_model_app(tmp_path, members, Member, rows_) as (_, state):
        result = replay(state, since=now - dt.timedelta(days=1))
    assert (result.users, result.created, result.undated) == (1, 1, 1)


def test_dry_run_writes_nothing_and_the_poller_delivers(app):
    data = json.loads(
        invoke(app, "replay", "--since", "1d", "--dry-run", "--json").output
    )
    assert data["dry_run"] and data["created"] == 7 and data["deliveries"] == 7
    assert rows(app) == ([], [])
    result = invoke(app, "replay", "--since", "1d", "--dry-run")
    assert "would create 7 event(s)" in result.output
    # Written rows are pending, due now: a poller round runs them.
    invoke(app, "replay", "--since", "1d", "--hook", "console", "--run-id", "r3")
    state = app.extensions["postreg"]
    state.start()
    state.poller.poll_once(state.backend)
    assert postreg.join(10)
    assert {s for _, s, _ in rows(app)[1]} == {"succeeded"}


def test_replay_errors(app):
    result = invoke(app, "replay", "--since", "1d", "--hook", "nope")
    assert result.exit_code == 1 and "unknown hook 'nope'" in result.output
    assert "console" in result.output
    invoke(app, "disable", "console")
    result = invoke(app, "replay", "--since", "1d", "--hook", "console")
    assert result.exit_code == 1 and "flask postreg enable console" in result.output
    result = invoke(app, "replay", "--since", "1d")
    assert result.exit_code == 1 and "no enabled hook" in result.output
    assert invoke(app, "replay", "--since", "soon").exit_code == 2


@pytest.mark.parametrize(
    ("db_url", "explicit_begin"),
    [
        ("sqlite", False),
        ("sqlite", True),
        pytest.param("postgresql", False, marks=pytest.mark.postgres),
    ],
    indirect=["db_url"],
)
def test_two_replays_of_one_run_at_once_write_each_event_once(
    db_url, explicit_begin, monkeypatch
):
    """Both read "nothing done yet" before either writes (held at a barrier just
    before the store's write): the unique run index stops the second writer,
    which reads again and skips. With an explicit BEGIN (SQLAlchemy's pysqlite
    SAVEPOINT recipe) SQLite fails one of the two at once instead: it retries."""
    from flask_postreg.replay import replay

    app = create_app(
        {
            "SQLALCHEMY_DATABASE_URI": db_url,
            "POSTREG_CONSOLE": True,
            "POSTREG_SLACK_WEBHOOK_URL": None,
            "POSTREG_WEBHOOKS": [],
        }
    )
    state = app.extensions["postreg"]
    with record_events(app), app.app_context():
        if explicit_begin:
            sqlite_savepoint_recipe(db.engine)
        for i in range(5):
            db.session.add(
                User(username=f"u{i}", email=f"u{i}@example.com", password_hash="x")
            )
        db.session.commit()
    barrier = threading.Barrier(2, timeout=20)
    local = threading.local()
    store = state.store
    write = store.write

    def held_write(*args, **kwargs):
        if not getattr(local, "held", False):
            local.held = True
            barrier.wait()
        return write(*args, **kwargs)

    monkeypatch.setattr(store, "write", held_write)
    results = {}

    def run(name):
        try:
            with app.app_context():
                results[name] = replay(
                    state,
                    since=dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc),
                    run_id="same",
                )
        except Exception as exc:  # reported by the assertion below
            results[name] = exc

    try:
        threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        postreg.shutdown(5)
    try:
        assert not [r for r in results.values() if isinstance(r, Exception)], results
        assert sorted(r.created for r in results.values()) == [0, 5], results
        users, deliveries = rows(app, "same")
        assert sorted(users) == sorted(set(users)) and len(users) == 5
        assert len(deliveries) == 5
    finally:
        with app.app_context():
            db.drop_all()
            db.engine.dispose()


def test_a_user_id_longer_than_its_column_is_replayed_once(tmp_path):
    """The events row keeps a user id cut to its column's width; the replay's
    lookup of users done compares the same cut id, so a second run of the run
    skips that user instead of failing on the unique (run_id, user_id) index."""

    class Base(DeclarativeBase):
        pass

    keyed = SQLAlchemy(model_class=Base)

    class Keyed(keyed.Model):  # type: ignore[name-defined,misc]
        key: Mapped[str] = mapped_column(primary_key=True)
        email: Mapped[str]
        created_at: Mapped[dt.datetime]

    now = dt.datetime.now(dt.timezone.utc)
    from flask_postreg.replay import replay

    user = Keyed(key="k" * 300, email="a@example.com", created_at=now)
    with own_model_app(tmp_path, keyed, Keyed, [user]) as (_, state):
        since = now - dt.timedelta(days=1)
        first = replay(state, since=since, run_id="r")
        again = replay(state, since=since, run_id="r")
    assert (first.created, again.created, again.skipped) == (1, 0, 1)
