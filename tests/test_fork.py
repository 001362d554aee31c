"""DESIGN 4.6: a forked child (gunicorn --preload) runs its own hooks."""

from __future__ import annotations

import os
import threading
import warnings

import pytest

from .conftest import BOTH_DATABASES
from .models import Account
from .models import db


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_runs_its_own_hooks(make_app, tmp_path):
    """The parent's pool is running at fork time; the child must start its own.

    Memory store: its idle workers wait only on Python conditions, which the
    child re-creates. (In database mode the poller thread may be inside SQLite,
    whose C-level mutexes a fork copies locked: fork before threads start, as
    gunicorn --preload does; the pool starts lazily for that reason.)
    """
    from .conftest import Recorder

    app, postreg = make_app(POSTREG_STORE="memory")
    recorder = Recorder()
    postreg.hook(recorder, name="recorder")
    marker = tmp_path / "child.txt"

    def child_hook(user, context):
        if os.getpid() != parent:
            marker.write_text(f"{os.getpid()} {user.email}")

    parent = os.getpid()
    postreg.hook(child_hook, name="child")
    with app.app_context():  # start the parent's pool first
        db.session.add(Account(email="parent@example.com"))
        db.session.commit()
    assert postreg.join(10)

    with warnings.catch_warnings():  # 3.12+ warns about fork() with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: register, wait for its own pool, report by exit code
        code = 1
        try:
            with app.app_context():
                db.engine.dispose(close=False)
                db.session.add(Account(email="child@example.com"))
                db.session.commit()
            code = 0 if postreg.join(10) else 2
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    child_pid, email = marker.read_text().split()
    assert int(child_pid) == pid and email == "child@example.com"
    assert recorder.emails == ["parent@example.com"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)
def test_forked_child_does_not_share_the_parents_connections(make_app):
    """A gunicorn --preload factory: init_app, then db.create_all() leaves a
    connection in the pool, then the fork. The child must not use the parent's
    socket (on PostgreSQL, children would share one); the store drops the
    inherited pool even if nothing in the parent used the store yet."""
    app, postreg = make_app()
    postreg.hook(lambda u, c: None, name="h")
    with app.app_context():
        db.create_all()
        engine = db.engine
    assert engine.pool.checkedin() >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        os._exit(0 if engine.pool.checkedin() == 0 else 3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child inherited the pool"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_slack_limiter_held_by_a_parent_thread_is_free_in_the_child():
    """A parent's Slack sender inside the rate limiter at fork time: the child's
    copy of the lock would stay held for ever (its holder does not exist there)
    and every Slack hook of the child would hang until its timeout."""
    from flask_postreg.handlers.slack_ratelimit import RateLimiter

    limiter = RateLimiter(0.0)
    held, done = threading.Event(), threading.Event()

    def sender_inside_the_limiter():
        with limiter._lock:  # as acquire() holds it
            held.set()
            done.wait(10)

    parent_thread = threading.Thread(target=sender_inside_the_limiter)
    parent_thread.start()
    assert held.wait(10)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            acquired = threading.Event()
            threading.Thread(
                target=lambda: (limiter.acquire(), acquired.set()), daemon=True
            ).start()
            os._exit(0 if acquired.wait(5) else 4)
    finally:
        done.set()
        parent_thread.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's limiter hung"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_reports_the_outcomes_it_could_not_write(make_app):
    """``join()`` says False when an outcome could not be written since the
    last ``join()``; it compares the store's count with the one it reported,
    and a child inherits both: one reset without the other hid the child's own
    lost outcomes behind the parent's."""
    import sqlite3

    from .outbox import make_event

    app, postreg = make_app(
        POSTREG_BACKEND="sync",  # outcomes written inline: no thread to fork
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 0.05}},
    )
    postreg.hook(lambda user, context: None, name="h")
    state = app.extensions["postreg"]
    s = state.store
    with s.begin() as conn:
        written = s.write(conn, [make_event(i) for i in range(3)], state.hooks())

    def lose(deliveries):
        lock = sqlite3.connect(s.engine.url.database, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            for delivery in deliveries:
                state.dispatcher.finish(delivery, None, 0.1)
        finally:
            lock.execute("ROLLBACK")
            lock.close()

    lose(written[:2])
    assert postreg.join(5) is False and postreg.join(5) is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            lose(written[2:])
            code = 0 if postreg.join(5) is False else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
