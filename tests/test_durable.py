"""The database store (issue 3, DESIGN 4.7, 4.8): durable at-least-once delivery.

Most tests run on a SQLite file and on PostgreSQL; the competing-workers test
needs PostgreSQL's ``FOR UPDATE SKIP LOCKED`` and runs there only.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_postreg import PostReg
from flask_postreg import User
from flask_postreg.dispatch import RetryPolicy
from flask_postreg.events import Context
from flask_postreg.events import Event
from flask_postreg.events import event_id_floor
from flask_postreg.events import new_event_id

from . import workers
from .conftest import BOTH_DATABASES
from .conftest import FailsFirst
from .conftest import Recorder
from .models import Account
from .models import db
from .outbox import accounts
from .outbox import deliveries
from .outbox import due_deliveries
from .outbox import events
from .outbox import make_event
from .outbox import row
from .outbox import store

ROOT = pathlib.Path(__file__).resolve().parent.parent

both = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)
postgres_only = pytest.mark.parametrize("db_url", BOTH_DATABASES[1:], indirect=True)


def register(app, email="ann@example.com", **fields):
    with app.app_context():
        db.session.add(Account(email=email, **fields))
        db.session.commit()


def wait_for(predicate, timeout, what="condition"):
    """Poll ``predicate`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def spawn(tmp_path, *args):
    """``python -m tests.workers ARGS`` with its output in a file (no pipe to fill)."""
    paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    path = tmp_path / f"child-{args[0]}-{time.monotonic_ns()}.log"
    with open(path, "w") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.workers", *args],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proc.output_path = path  # type: ignore[attr-defined]
    return proc


def output(proc) -> str:
    return proc.output_path.read_text()[-4000:]


def read_lines(path: pathlib.Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


# -- crash recovery -----------------------------------------------------------


@both
@pytest.mark.slow
def test_crash_recovery_runs_every_committed_hook(make_app, db_url, tmp_path, capsys):
    """SIGKILL a process mid-way through 200 registrations; a fresh one finishes."""
    log = tmp_path / "runs.txt"
    app, postreg = make_app(
        POSTREG_POLL_INTERVAL=0.1,
        POSTREG_HOOK_TIMEOUT=1.0,
        POSTREG_LEASE_GRACE=2.0,
        POSTREG_MAX_QUEUE=40,
        POSTREG_RETRY_SCHEDULE=[0.1],
    )
    for name in workers.CRASH_HOOKS:
        postreg.hook(workers.appender(str(log), name), name=name)

    child = spawn(tmp_path, "crash", db_url, str(log))
    try:
        wait_for(
            lambda: len(read_lines(log)) >= 60 or child.poll() is not None,
            60,
            "the child's first hook runs",
        )
        assert child.poll() is None, "child ended before the kill:\n" + output(child)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    assert child.returncode == -signal.SIGKILL
    ran_in_child = len(read_lines(log))

    committed = accounts(app)
    assert 0 < len(committed) <= 200
    postreg.start(app)  # the "restarted" process: the poller takes expired leases
    expected = len(committed) * len(workers.CRASH_HOOKS)

    def all_succeeded():
        counts = store(app).counts()
        done = sum(counts.get((name, "succeeded"), 0) for name in workers.CRASH_HOOKS)
        return done == expected == sum(counts.values())

    wait_for(all_succeeded, 60, "every delivery succeeded after the restart")
    assert postreg.join(10)

    rows = deliveries(app)
    assert not [d for d in rows if d.status == "dead"]
    assert sorted(e["email"] for e in events(app)) == sorted(committed)
    by_event = {e["id"]: e["email"] for e in events(app)}
    runs = collections.Counter((r[0], r[1]) for r in read_lines(log))
    for event_id in by_event:
        for name in workers.CRASH_HOOKS:
            assert runs[(event_id, name)] >= 1, (event_id, name)
    assert set(runs) <= {(e, h) for e in by_event for h in workers.CRASH_HOOKS}
    twice = sum(1 for n in runs.values() if n > 1)
    recovered = sum(1 for r in read_lines(log) if int(r[2]) == os.getpid())
    assert recovered > 0
    kind = sa.make_url(db_url).get_backend_name()
    with capsys.disabled():
        print(
            f"\ncrash recovery ({kind}): {len(committed)} users committed before"
            f" SIGKILL, {ran_in_child} hook runs in the killed process,"
            f" {recovered} after the restart, {twice} (event, hook) ran twice"
        )


# -- competing workers -----------------------------------------------------------


@postgres_only
def test_tables_found_through_the_apps_schema_translate_map(make_app, db_url, caplog):
    """An engine with ``schema_translate_map`` (one schema per tenant, say):
    the tables are checked where its statements put them, not missed (the
    store then fell back to memory: no durability, an ERROR)."""
    admin = sa.create_engine(db_url)
    with admin.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA tenant1")
    try:
        options = {"execution_options": {"schema_translate_map": {None: "tenant1"}}}
        app, postreg = make_app(SQLALCHEMY_ENGINE_OPTIONS=options)
        ran = []
        postreg.hook(lambda user, context: ran.append(user.email), name="h")
        with caplog.at_level(logging.ERROR, logger="flask_postreg"):
            register(app)
        assert postreg.join(10) and ran == ["ann@example.com"]
        assert "missing" not in caplog.text
        with admin.connect() as conn:
            query = "SELECT status FROM tenant1.postreg_deliveries"
            assert conn.exec_driver_sql(query).scalars().all() == ["succeeded"]
        postreg.shutdown(5)
        with app.app_context():
            db.drop_all()
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA tenant1 CASCADE")
        admin.dispose()


@postgres_only
def test_a_user_model_in_a_named_schema_keeps_the_outbox_beside_it(make_app, db_url):
    """``MetaData(schema="accounts")``: the outbox tables are declared in the
    same schema (``init_app`` failed with a KeyError), created by
    ``db.create_all()`` there and written there."""
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        metadata = sa.MetaData(schema="accounts")

    schema_db = SQLAlchemy(model_class=Base)

    class Member(schema_db.Model):
        __tablename__ = "members"
        id = sa.Column(sa.Integer, primary_key=True)
        email = sa.Column(sa.String(255), nullable=False)

    admin = sa.create_engine(db_url)
    with admin.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA accounts")
    app = Flask("named_schema")
    app.config.update(SQLALCHEMY_DATABASE_URI=db_url)
    schema_db.init_app(app)
    postreg = PostReg(app, db=schema_db, user_model=Member)
    ran = []
    postreg.hook(lambda user, context: ran.append(user.email), name="h")
    try:
        with app.app_context():
            schema_db.create_all()
            schema_db.session.add(Member(email="ann@example.com"))
            schema_db.session.commit()
        assert postreg.join(10) and ran == ["ann@example.com"]
        with admin.connect() as conn:
            query = "SELECT status FROM accounts.postreg_deliveries"
            assert conn.exec_driver_sql(query).scalars().all() == ["succeeded"]
    finally:
        postreg.shutdown(5)
        with app.app_context():
            schema_db.engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA accounts CASCADE")
        admin.dispose()


@postgres_only
def test_a_failure_after_an_outer_commit_does_not_drop_its_hooks(make_app, caplog):
    """A joined session's outer transaction committed; then a call on the
    connection fails before it begins again (here the server ended the session
    under it): that is not the COMMIT failing, so the hooks still run."""
    from sqlalchemy.orm import Session

    app, postreg = make_app(POSTREG_STORE="memory")
    seen = []
    postreg.hook(lambda user, context: seen.append(user.email), name="seen")
    with app.app_context():
        engine = db.engine
        conn = engine.connect()
        trans = conn.begin()
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        session = Session(bind=conn)
        session.add(Account(email="joined@example.com"))
        session.commit()
        session.close()
        trans.commit()  # its registrations wait for the next begin or check-in
        with engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            other.commit()
        with pytest.raises(sa.exc.DBAPIError):
            conn.get_isolation_level()  # fails with no statement, no transaction
        conn.close()
    assert postreg.join(10)
    assert seen == ["joined@example.com"]
    assert "run no hooks" not in caplog.text


@postgres_only
@pytest.mark.slow
def test_competing_workers_never_overlap_nor_lose(make_app, db_url, tmp_path, capsys):
    """4 processes drain 2,000 deliveries: no delivery runs twice at once, none lost."""
    n = 2000
    app, _state, _store = due_deliveries(make_app, n, hook="record")

    go = tmp_path / "go"
    logs = [tmp_path / f"runs-{i}.txt" for i in range(4)]
    procs = [spawn(tmp_path, "drain", db_url, str(log), str(go)) for log in logs]
    try:
        wait_for(
            lambda: (
                len(list(tmp_path.glob("go.ready.*"))) == 4
                or any(p.poll() is not None for p in procs)
            ),
            60,
            "4 workers ready",
        )
        go.write_text("go")
        for p in procs:
            p.wait(120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    for p in procs:
        assert p.returncode == 0, output(p)

    runs = collections.defaultdict(list)
    pids = collections.Counter()
    for log in logs:
        for event_id, attempt, pid, start, end in read_lines(log):
            runs[event_id].append((float(start), float(end), int(attempt), int(pid)))
            pids[int(pid)] += 1
    assert len(runs) == n  # none lost
    for event_id, intervals in runs.items():
        intervals.sort()
        for (_, end, *_), (start, *_) in itertools.pairwise(intervals):
            assert start >= end, (event_id, intervals)  # never two at once
    rows = deliveries(app)
    assert len(rows) == n and {d.status for d in rows} == {"succeeded"}
    assert len(pids) >= 2, pids  # they did compete
    double = sum(1 for intervals in runs.values() if len(intervals) > 1)
    with capsys.disabled():
        print(
            f"\ncompeting workers (postgresql): {n} deliveries, runs per process"
            f" {sorted(pids.values(), reverse=True)}, {double} ran twice"
        )


# -- retries ------------------------------------------------------------------------


@both
def test_fails_twice_then_succeeds_with_three_attempts(make_app):
    app, postreg = make_app()
    flaky = FailsFirst(2)
    postreg.hook(flaky, name="flaky", max_attempts=5)
    register(app)
    assert postreg.join(10)
    (d,) = deliveries(app)
    assert flaky.attempts == [1, 2, 3]
    assert (d.status, d.attempts, d.error, d.locked_until) == (
        "succeeded",
        3,
        None,
        None,
    )


@both
def test_always_failing_is_dead_after_max_attempts(make_app):
    app, postreg = make_app()
    postreg.hook(lambda u, c: 1 / 0, name="zero", max_attempts=3)
    register(app)
    assert postreg.join(10)
    (d,) = deliveries(app)
    assert (d.status, d.attempts, d.error_class) == ("dead", 3, "ZeroDivisionError")
    (record,) = store(app).deliveries(status="dead")
    assert record.next_attempt_at is None


@both
def test_next_attempt_from_jittered_schedule_and_restart_runs_it(
    make_app, db_url, caplog
):
    """The stored next attempt follows the schedule and an injected random source;
    shutdown leaves it pending, and another process runs it when due."""
    app, postreg = make_app(POSTREG_RETRY_SCHEDULE=[300, 600])
    app.extensions["postreg"].dispatcher.policy = RetryPolicy(
        [300, 600], rand=lambda: 0.0
    )
    postreg.hook(lambda u, c: 1 / 0, name="later", max_attempts=3)
    with caplog.at_level(logging.ERROR, logger="flask_postreg"):
        register(app)
        d = wait_for(
            lambda: [d for d in deliveries(app) if d.status == "pending"],
            10,
            "the first failure recorded",
        )[0]
    assert d.next_attempt_at - d.updated_at == pytest.approx(300 * 0.8)
    assert d.attempts == 1
    (record,) = store(app).deliveries(status="pending")
    assert record.next_attempt_at is not None
    postreg.shutdown(5)  # the in-process retry is 4 minutes away: dropped
    assert row(app, d.id).status == "pending"  # ...but not lost

    with app.app_context():  # time passes: the retry is due
        db.session.execute(
            sa.update(store(app).t.deliveries).values(next_attempt_at=time.time() - 1)
        )
        db.session.commit()
    ran = []
    other, other_postreg = make_app(url=db_url, POSTREG_POLL_INTERVAL=0.05)
    other_postreg.hook(lambda u, c: ran.append(c.attempt), name="later")
    other_postreg.start(other)
    wait_for(lambda: row(other, d.id).status == "succeeded", 20, "the retry ran")
    assert ran == [2] and row(other, d.id).attempts == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@both
def test_poller_rebuilds_the_event_the_registration_stored(make_app, db_url):
    """The row keeps the event's id and time in its own columns, not a second
    time in the payload; a poller in another process rebuilds the very user and
    context the registration captured."""
    from flask_postreg.testing import record_events

    app, postreg = make_app(POSTREG_RUN_IN_WEB=False)
    postreg.hook(lambda u, c: None, name="seen")
    with record_events(app, run_hooks=True) as captured:
        register(app, "ann@example.com", user_metadata={"plan": "pro", "n": [1]})
    (event,) = captured
    (stored,) = events(app)
    body = json.loads(stored["payload"])
    assert not {"eventId", "createdAt", "attempt"} & set(body["context"])

    seen = []
    other, other_postreg = make_app(url=db_url, POSTREG_POLL_INTERVAL=0.05)
    other_postreg.hook(lambda u, c: seen.append((u, c)), name="seen")
    other_postreg.start(other)
    wait_for(lambda: seen, 20, "the poller ran the hook")
    assert other_postreg.shutdown(5)
    user, context = seen[0]
    assert user == event.user
    assert user.user_metadata == {"plan": "pro", "n": (1,)}
    assert context.event_id == event.id == stored["id"]
    assert context.created_at == event.context.created_at
    assert context.created_at.tzinfo is not None
    assert context.attempt == 1
    assert context.to_dict() == event.context.to_dict()


@both
def test_rows_of_earlier_versions_and_naive_times_read_back(make_app, monkeypatch):
    """A row written before payloads left out the id and time (the whole body)
    reads back the same, under the row's own id; an event built by hand with a
    naive time is stored as UTC, whatever the process's time zone."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        app, postreg = make_app()
        postreg.shutdown(5)  # no poller: the rows stay as written
        s = store(app)
        old = make_event(1)
        renamed = new_event_id()
        with s.engine.begin() as conn:
            for row_id in (old.id, renamed):
                conn.execute(
                    sa.insert(s.t.events).values(
                        id=row_id,
                        user_id="1",
                        payload=old.to_json(),
                        created_at=time.time(),
                    )
                )
        assert s.event(old.id) == old
        assert s.event(renamed).id == s.event(renamed).context.event_id == renamed

        naive = dt.datetime(2026, 1, 2, 3, 4, 5, 678901)
        event_id = new_event_id()
        made = Event(
            event_id, User(id="2"), Context(event_id=event_id, created_at=naive)
        )
        with s.engine.begin() as conn:
            s.write(conn, [made], [])
        back = s.event(event_id)
        assert back.context.created_at == naive.replace(tzinfo=dt.timezone.utc)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_retry_schedule_jitter_bounds_in_rows():
    """Stored delays are schedule x [0.8, 1.2]: the extremes of the random source."""
    for rand, factor in ((0.0, 0.8), (0.5, 1.0), (1.0, 1.2)):
        policy = RetryPolicy([5, 300, 1800], rand=lambda r=rand: r)
        assert [policy.delay(a) for a in (1, 2, 3, 4)] == pytest.approx(
            [5 * factor, 300 * factor, 1800 * factor, 1800 * factor]
        )


# -- missing tables --------------------------------------------------------------


def register_two_logging_one_error(app, postreg, recorder, caplog):
    """Tables the store cannot use: two registrations commit, ``recorder`` runs
    for both (in memory), and one ERROR is logged (once per engine, not per
    registration); it is returned."""
    with caplog.at_level(logging.WARNING, logger="flask_postreg"):
        register(app, "ann@example.com")
        register(app, "bob@example.com")
        assert postreg.join(10)
    assert sorted(recorder.emails) == ["ann@example.com", "bob@example.com"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Account)) == 2
    return errors[0]


@both
def test_missing_tables_registration_succeeds_and_says_what_to_run(make_app, caplog):
    app, postreg = make_app(POSTREG_POLL_INTERVAL=0.05)
    recorder = Recorder()
    postreg.hook(recorder, name="recorder")
    t = store(app).t
    with app.app_context():
        t.deliveries.drop(db.engine)
        t.events.drop(db.engine)
    error = register_two_logging_one_error(app, postreg, recorder, caplog)
    assert "postreg_events" in error and "postreg_deliveries" in error
    assert "db.create_all()" in error and "flask db upgrade" in error
    assert [o.status for o in store(app).recent(hook="recorder")] == ["succeeded"] * 2


@both
def test_tables_of_an_older_layout_say_what_to_run(make_app, caplog):
    """postreg_deliveries as an earlier version created it (a surrogate id key):
    registration succeeds, hooks run in memory, one ERROR says to migrate."""
    app, postreg = make_app()
    recorder = Recorder()
    postreg.hook(recorder, name="recorder")
    with app.app_context():
        store(app).t.deliveries.drop(db.engine)
        old = sa.Table(
            "postreg_deliveries",
            sa.MetaData(),
            sa.Column("id", sa.String(40), primary_key=True),
            sa.Column("event_id", sa.String(40), nullable=False),
            sa.Column("hook", sa.String(255), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
        )
        old.create(db.engine)
    error = register_two_logging_one_error(app, postreg, recorder, caplog)
    assert "postreg_deliveries (no column attempts; no column claim" in error
    assert "primary key is not (event_id, hook)" in error
    assert "flask db upgrade" in error and "db.create_all()" in error


@both
@pytest.mark.parametrize("watched", [None, "before_cursor_execute", "handle_error"])
def test_outbox_insert_failing_fails_the_commit_with_a_sqlalchemy_error(
    make_app, watched
):
    """Tables dropped after the once-per-engine check: the INSERT fails inside
    the registration's flush. The commit raises SQLAlchemy's error (not the
    driver's), without the payload in its message, and commits nothing; also
    when a statement listener (query recording, tracing) routes it through
    SQLAlchemy, and an error listener (error reporting, exception rewriting)
    sees it."""
    app, postreg = make_app()
    postreg.hook(lambda u, c: None, name="h")
    register(app, "ann@example.com")  # tables checked (present) and cached
    assert postreg.join(10)
    t = store(app).t
    with app.app_context():
        engine = db.engine
        t.deliveries.drop(engine)
        t.events.drop(engine)
    errors = []

    def listener(*args):
        if watched == "handle_error":
            errors.append(args[0].statement)

    if watched:
        sa.event.listen(engine, watched, listener)
    try:
        with app.app_context():
            db.session.add(Account(email="bob@example.com"))
            with pytest.raises(sa.exc.DBAPIError) as raised:
                db.session.commit()
            db.session.rollback()
            emails = db.session.scalars(sa.select(Account.email)).all()
    finally:
        if watched:
            sa.event.remove(engine, watched, listener)
    assert "postreg_events" in str(raised.value)
    assert "bob@example.com" not in str(raised.value)
    assert emails == ["ann@example.com"]
    if watched == "handle_error":  # (the app's poller fails meanwhile, too)
        inserts = [s.split("(")[0].strip() for s in errors if s.startswith("INSERT")]
        assert inserts == ["INSERT INTO postreg_events"], errors


@both
def test_outbox_inserts_are_seen_by_statement_listeners(make_app):
    """With a before_cursor_execute listener (query recording, tracing) the
    outbox INSERTs go through SQLAlchemy, so the listener sees them."""
    app, postreg = make_app()
    postreg.hook(lambda u, c: None, name="h")
    seen = []
    with app.app_context():
        engine = db.engine

    def listener(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement.split("(")[0].strip())

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        register(app, "ann@example.com")
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    assert postreg.join(10)
    assert "INSERT INTO postreg_events" in seen
    assert "INSERT INTO postreg_deliveries" in seen
    assert [e["email"] for e in events(app)] == ["ann@example.com"]


# -- privacy -----------------------------------------------------------------------


@both
def test_no_secret_nor_personal_data_in_stored_errors(make_app):
    app, postreg = make_app(POSTREG_SECRETS={"CRM_TOKEN": "tok-very-secret-123"})

    def leaky(user, context):
        raise RuntimeError(
            f"CRM refused {user.email} with token {context.secrets['CRM_TOKEN']}"
        )

    postreg.hook(leaky, name="crm", max_attempts=2)
    register(app, "ann.private@example.com", password_hash="pbkdf2:SECRET-HASH")
    assert postreg.join(10)
    (d,) = deliveries(app)
    assert d.status == "dead" and d.error_class == "RuntimeError"
    assert "tok-very-secret-123" not in d.error and "[secret]" in d.error
    assert "ann.private@example.com" not in d.error and "[email]" in d.error
    everything = repr(deliveries(app)) + repr(events(app))
    assert "tok-very-secret-123" not in everything
    assert "SECRET-HASH" not in everything
    assert "CRM_TOKEN" not in everything


# -- query API ---------------------------------------------------------------------


@both
def test_query_api(make_app, db_url):
    app, postreg = make_app()
    postreg.hook(lambda u, c: None, name="ok")
    postreg.hook(lambda u, c: 1 / 0, name="bad", max_attempts=1)
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    for i in range(3):
        register(app, f"u{i}@example.com")
    assert postreg.join(10)
    postreg.shutdown(5)  # no poller from here on: the rows stay as we leave them
    s = store(app)
    state = app.extensions["postreg"]

    assert s.counts() == {("ok", "succeeded"): 3, ("bad", "dead"): 3}
    dead = s.deliveries(status="dead")
    assert len(dead) == 3 and {d.hook for d in dead} == {"bad"}
    assert all(d.error_class == "ZeroDivisionError" for d in dead)
    assert len(s.deliveries(hook="ok", limit=2)) == 2
    newest_first = s.deliveries(limit=10)
    assert len(newest_first) == 6
    assert [d.created_at for d in newest_first] == sorted(
        (d.created_at for d in newest_first), reverse=True
    )
    assert len(s.deliveries(since=before)) == 6
    assert s.deliveries(since=dt.datetime.now(dt.timezone.utc)) == []
    assert s.deliveries(until=before) == []
    assert newest_first[0].to_dict()["created_at"].endswith("+00:00")

    ok_id = s.deliveries(hook="ok", limit=1)[0].id
    assert s.retry([dead[0].id, ok_id]) == 1  # a succeeded one is not retried
    retried = row(app, dead[0].id)
    assert (retried.status, retried.attempts) == ("pending", 0)
    assert s.retry_dead(hook="ok") == 0
    assert s.retry_dead(hook="bad") == 2
    assert s.counts() == {("ok", "succeeded"): 3, ("bad", "pending"): 3}

    # Another process with the fixed hook runs them: fresh attempt budget.
    other, other_postreg = make_app(url=db_url, POSTREG_POLL_INTERVAL=0.05)
    other_postreg.hook(lambda u, c: None, name="ok")
    other_postreg.hook(lambda u, c: None, name="bad", max_attempts=1)
    other_postreg.start(other)
    wait_for(
        lambda: s.counts() == {("ok", "succeeded"): 3, ("bad", "succeeded"): 3},
        20,
        "the retried deliveries ran",
    )
    assert {d.attempts for d in s.deliveries(hook="bad")} == {1}
    assert other_postreg.shutdown(5)

    # prune: only succeeded deliveries older than the cutoff, and their events.
    assert s.prune(7) == 0
    old = time.time() - 8 * 86400
    old_id = event_id_floor(old) + "0" * 16  # an event made 8 days ago
    user = User(id="0", email="old@example.com")
    with s.engine.begin() as conn:
        s.write(conn, [Event(old_id, user, Context(event_id=old_id))], state.hooks())
        conn.execute(
            sa.update(s.t.deliveries)
            .where(s.t.deliveries.c.event_id == old_id)
            .values(status="succeeded", updated_at=old)
        )
        conn.execute(
            sa.update(s.t.events)
            .where(s.t.events.c.id == old_id)
            .values(created_at=old)
        )
    assert len(events(app)) == 4
    assert s.prune(7) == 2
    assert old_id not in {e["id"] for e in events(app)}
    assert len(events(app)) == 3 and len(deliveries(app)) == 6


@both
def test_prune_walks_old_events_in_short_transactions(make_app):
    """On SQLite a prune's transaction holds the write lock registrations wait
    for: it deletes ``batch_size`` events per transaction, and across them
    exactly the succeeded deliveries older than the cutoff and the events left
    with none."""
    app, postreg = make_app()
    for name in ("h", "g"):
        postreg.hook(lambda u, c: None, name=name)
    s = store(app)
    hooks = app.extensions["postreg"].hooks()
    old = time.time() - 8 * 86400
    old_ids = [event_id_floor(old + i) + os.urandom(8).hex() for i in range(8)]

    def event(event_id, i):
        user = User(id=str(i), email=f"u{i}@example.com")
        return Event(event_id, user, Context(event_id=event_id))

    d, e = s.t.deliveries, s.t.events
    with s.engine.begin() as conn:
        s.write(conn, [event(x, i) for i, x in enumerate(old_ids[:7])], hooks)
        s.write(conn, [event(old_ids[7], 7)], [])  # no hook was enabled
        s.write(conn, [make_event(8)], hooks)  # a recent event
        conn.execute(sa.update(d).values(status="succeeded", updated_at=old))
        conn.execute(sa.update(e).where(e.c.id.in_(old_ids)).values(created_at=old))
        dead = (d.c.event_id == old_ids[5]) & (d.c.hook == "g")
        conn.execute(sa.update(d).where(dead).values(status="dead"))
        touched = (d.c.event_id == old_ids[6]) & (d.c.hook == "h")
        conn.execute(sa.update(d).where(touched).values(updated_at=time.time()))
        conn.execute(
            sa.update(d)
            .where(d.c.event_id.not_in(old_ids))
            .values(updated_at=time.time())
        )

    commits = []

    def committed(conn):
        commits.append(conn)

    sa.event.listen(s.engine, "commit", committed)
    try:
        assert s.prune(7, batch_size=3) == 12
    finally:
        sa.event.remove(s.engine, "commit", committed)
    assert len(commits) == 3  # 8 old events, 3 at a time
    left = {(r.id.split(":")[0], r.hook, r.status) for r in deliveries(app)}
    assert {(x, h, st) for x, h, st in left if x in old_ids} == {
        (old_ids[5], "g", "dead"),
        (old_ids[6], "h", "succeeded"),  # changed since the cutoff
    }
    assert len(left) == 4  # and the recent event's two
    assert {x["id"] for x in events(app)} & set(old_ids) == {old_ids[5], old_ids[6]}
    assert s.prune(7, batch_size=3) == 0


@both
def test_database_history_keeps_no_count_of_retries_taken_elsewhere(make_app):
    """A retry another process's poller took never ends in this process's
    recent-history copy; it must not be remembered there for ever."""
    app, postreg = make_app(POSTREG_RETRY_SCHEDULE=[3600])
    postreg.hook(lambda u, c: 1 / 0, name="h", max_attempts=3)
    register(app, "ann@example.com")
    history = store(app).history
    wait_for(history.recent, 10, "the first attempt's outcome")
    assert postreg.shutdown(5)  # its retry, due in an hour, is left to pollers
    assert [o.status for o in history.recent()] == ["pending"]
    assert history._open == {} and history.counts() == {}
    assert store(app).counts() == {("h", "pending"): 1}
