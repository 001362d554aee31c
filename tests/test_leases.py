"""Leases on delivery rows (issue 3): who may run an attempt, what a claim
counts, and how a delivery that cannot run still ends as a dead letter.

Every test runs on a SQLite file and on PostgreSQL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
import time

import pytest
import sqlalchemy as sa

from flask_postreg import User
from flask_postreg import hook_failed
from flask_postreg.events import Context
from flask_postreg.events import Event
from flask_postreg.events import event_id_floor

from .conftest import BOTH_DATABASES
from .models import Account
from .models import db
from .outbox import deliveries
from .outbox import due_deliveries
from .outbox import events
from .outbox import make_event
from .outbox import row
from .outbox import written_deliveries

both = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)


class Vanishing:
    """A backend that takes every job and never runs it: the process holding
    the leases dies before any attempt ends."""

    def __init__(self):
        self.taken = []

    def capacity(self):
        return 100

    def submit(self, delivery):
        self.taken.append(delivery)
        return True


def register(app, email):
    with app.app_context():
        db.session.add(Account(email=email))
        db.session.commit()


def end_leases(s):
    """Every lease ends now (what waiting for hook timeout + grace would do)."""
    d = s.t.deliveries
    with s.engine.begin() as conn:
        conn.execute(
            sa.update(d)
            .where(d.c.status == "running")
            .values(locked_until=0.0, next_attempt_at=0.0)
        )


@both
def test_stale_worker_cannot_overwrite_a_newer_outcome(make_app):
    app, state, s, (old,) = written_deliveries(make_app, 1)
    assert old.claim == 1
    s.release([old.row_id])  # its lease ended (the queue refused it, a slow worker)
    (new,) = s.claim_due(state.hooks(), 10)  # another worker claims it: claim 2
    # Released unrun, so the attempt its pre-lease counted was given back.
    assert (new.row_id, new.claim, new.attempt) == (old.row_id, 2, 1)

    state.dispatcher.finish(old, RuntimeError("late and stale"), 1.0)
    d = row(app, old.row_id)
    assert (d.status, d.claim, d.attempts, d.error) == ("running", 2, 1, None)
    assert s.claim_retry(old.next()) is None  # nor can it take the row back

    state.dispatcher.finish(new, None, 0.5)
    d = row(app, old.row_id)
    assert (d.status, d.claim, d.attempts) == ("succeeded", 2, 1)
    state.dispatcher.finish(old, RuntimeError("even later"), 1.0)
    assert row(app, old.row_id).status == "succeeded"


@both
def test_an_error_text_no_database_column_takes_is_stored_escaped(make_app):
    """A binary response body (NUL: PostgreSQL refuses it) or an undecodable
    file name (a lone surrogate: no UTF-8 encoder takes it) in an error: the
    outcome is stored, escaped, and so are the others written in its batch."""
    app, state, _, written = written_deliveries(make_app, 3, max_attempts=1)
    ok, also_ok, failed = written
    state.dispatcher.finish(ok, None, 0.1)
    state.dispatcher.finish(also_ok, None, 0.1)
    bad = "webhook answered 500: PK\x03\x04\x00\x00 in /srv/f\udc80.bin"
    state.dispatcher.finish(failed, RuntimeError(bad), 0.1)
    rows = {d.id: d for d in deliveries(app)}
    assert [rows[d.row_id].status for d in written] == ["succeeded"] * 2 + ["dead"]
    error = rows[failed.row_id].error
    assert "PK\x03\x04\\x00\\x00 in /srv/f\\udc80.bin" in error
    assert rows[failed.row_id].error_class == "RuntimeError"


def test_a_row_the_database_refuses_leaves_its_batch_written(make_app, caplog):
    """Outcomes finishing together share a transaction: when the database
    refuses one row (here a trigger), the others are written one by one, and
    the refused one is left to its lease, named in the ERROR."""
    app, postreg = make_app()
    postreg.hook(lambda user, context: None, name="kept")
    postreg.hook(lambda user, context: None, name="refused")
    state = app.extensions["postreg"]
    s = state.store
    with s.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE UPDATE ON postreg_deliveries"
            " WHEN NEW.hook = 'refused' BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
        written = s.write(conn, [make_event(i) for i in range(2)], state.hooks())
    assert len(written) == 4
    with caplog.at_level(logging.ERROR, logger="flask_postreg"):
        for delivery in written:
            state.dispatcher.finish(delivery, None, 0.1)
        s.flush()
    rows = {d.id: d for d in deliveries(app)}
    statuses = sorted((d.hook.name, rows[d.row_id].status) for d in written)
    assert statuses == [("kept", "succeeded")] * 2 + [("refused", "running")] * 2
    (message,) = [r.getMessage() for r in caplog.records if "outcome" in r.message]
    assert "could not record 2 outcome(s)" in message and "hooks: refused" in message


def test_a_batch_the_database_cannot_take_at_all_is_not_retried_row_by_row(
    make_app, caplog
):
    """A locked (or unreachable) database refuses every row alike: writing them
    one by one would wait out the lock once per outcome, holding up join(),
    claims and shutdown. One attempt, then the leases do their work."""
    import sqlite3

    app, postreg = make_app(
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 0.05}}
    )
    postreg.hook(lambda user, context: None, name="h")
    state = app.extensions["postreg"]
    s = state.store
    with s.engine.begin() as conn:
        written = s.write(conn, [make_event(i) for i in range(5)], state.hooks())
    updates = []

    @sa.event.listens_for(s.engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE postreg_deliveries"):
            updates.append(executemany)

    lock = sqlite3.connect(s.engine.url.database, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with caplog.at_level(logging.ERROR, logger="flask_postreg"):
            for delivery in written:
                state.dispatcher.finish(delivery, None, 0.1)
            s.flush()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # One attempt per batch (usually one batch of 5); row by row would have
    # added one attempt per outcome after each failed batch.
    assert 1 <= len(updates) <= len(written)
    assert "could not record 5 outcome(s) (OperationalError" in caplog.text
    assert {d.status for d in deliveries(app)} == {"running"}  # left to leases
    assert postreg.join(5) is False  # outcomes are not durable: join() says so
    assert postreg.join(5) is True  # once


def test_a_database_that_does_not_answer_does_not_hold_the_stop_up(make_app, caplog):
    """Stopping (SIGTERM to a worker, the interpreter's exit) while the database
    does not answer (here locked, each statement waiting 30 s; a dropped
    network waits longer): the pool stops within its timeout plus a second,
    not when the database comes back; what it could not write is left to the
    leases."""
    import sqlite3

    app, postreg = make_app(SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 30}})
    postreg.hook(lambda user, context: None, name="h")
    state = app.extensions["postreg"]
    s = state.store
    with s.begin() as conn:
        (delivery,) = s.write(conn, [make_event(0)], state.hooks())
    lock = sqlite3.connect(s.engine.url.database, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    stopped = threading.Event()
    try:
        state.dispatcher.finish(delivery, None, 0.1)  # its outcome waits on the lock
        with caplog.at_level(logging.WARNING, logger="flask_postreg"):
            stopper = threading.Thread(
                target=lambda: (state.backend.shutdown(0.1), stopped.set())
            )
            stopper.start()
            assert stopped.wait(15), "the stop waited for the database"
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert "the database did not answer within 1.0s while writing outcomes" in (
        caplog.text
    )


def test_a_database_outage_is_logged_once_not_every_poll(make_app, caplog):
    """The poller meets a locked (or unreachable) database at every poll: one
    ERROR with the cause, not one per poll, then a line when polls work again."""
    import sqlite3

    app, postreg = make_app(
        POSTREG_POLL_INTERVAL=0.01,
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 0.01}},
    )
    postreg.hook(lambda user, context: None, name="h")
    s = app.extensions["postreg"].store
    checkouts = []
    sa.event.listen(s.engine, "checkout", lambda *args: checkouts.append(1))
    lock = sqlite3.connect(s.engine.url.database, isolation_level=None)
    with caplog.at_level(logging.INFO, logger="flask_postreg"):
        lock.execute("BEGIN EXCLUSIVE")
        try:
            postreg.start(app)
            deadline = time.monotonic() + 10
            while len(checkouts) < 10:  # several polls met the lock
                assert time.monotonic() < deadline, "the poller did not poll"
                threading.Event().wait(0.01)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        deadline = time.monotonic() + 10
        while "polls work again" not in caplog.text:
            assert time.monotonic() < deadline, "no line when polls worked again"
            threading.Event().wait(0.01)
    failed = [r for r in caplog.records if "poll failed" in r.getMessage()]
    assert len(failed) == 1, [r.getMessage() for r in failed]
    assert "database is locked" in failed[0].getMessage()
    settings = [r for r in caplog.records if "hook settings" in r.getMessage()]
    assert len(settings) <= 1


@both
def test_lease_too_short_for_the_hook_timeout_is_not_started(make_app):
    """A claimed delivery that waited in the queue until its lease could end
    mid-attempt is skipped (another process may claim it, never run it alongside)
    and handed back without counting the attempt it never made."""
    app, state, s, (first,) = written_deliveries(
        make_app, 1, config={"POSTREG_HOOK_TIMEOUT": 10.0}
    )
    assert s.prepare(first) is first
    s.release([first.row_id])
    (claimed,) = s.claim_due(state.hooks(), 10)
    assert s.prepare(claimed) is claimed
    late = dataclasses.replace(claimed, lease_until=time.time() + 5)
    assert s.prepare(late) is None
    # Handed back, due now, and the attempt that never ran is not counted.
    assert row(app, first.row_id).attempts == claimed.attempt - 1
    (again,) = s.claim_due(state.hooks(), 10)
    assert (again.attempt, again.claim) == (claimed.attempt, claimed.claim + 1)


@both
def test_an_attempt_must_fit_its_lease_with_a_margin(make_app):
    """Just fitting is not enough: the watchdog may notice a timeout up to a
    second late, and another process may claim the row at the lease's end."""
    _app, _state, s, (first,) = written_deliveries(
        make_app, 1, config={"POSTREG_HOOK_TIMEOUT": 10.0}
    )
    tight = dataclasses.replace(first, lease_until=time.time() + 10.5)
    assert s.prepare(tight) is None
    roomy = dataclasses.replace(first, lease_until=time.time() + 12.0)
    assert s.prepare(roomy) is roomy


@both
def test_release_takes_any_number_of_ids(make_app):
    """The poller releases every id the queue refused in one call: more than
    SQLite's bound-variable limit must work (one primary-key lookup each)."""
    _app, state, s, (refused,) = written_deliveries(make_app, 1)
    s.release([f"evt_{i:032x}:h" for i in range(40_000)] + [refused.row_id, "junk"])
    (again,) = s.claim_due(state.hooks(), 10)
    assert again.row_id == refused.row_id


@both
def test_a_claimed_row_is_leased_for_its_own_hook_only(make_app):
    """A poller claiming a 1 s hook's row must not lease it for a 600 s hook's
    timeout: should the process die, that row would wait ten minutes."""
    app, postreg = make_app(POSTREG_LEASE_GRACE=5.0)
    postreg.hook(lambda user, context: None, name="quick", timeout=1.0)
    postreg.hook(lambda user, context: None, name="slow", timeout=600.0)
    state = app.extensions["postreg"]
    s = state.store
    with s.engine.begin() as conn:
        written = s.write(conn, [make_event(1)], state.hooks())
    s.release([d.row_id for d in written])
    before = time.time()
    claimed = {d.hook.name: d for d in s.claim_due(state.hooks(), 10)}
    after = time.time()
    assert set(claimed) == {"quick", "slow"}
    rows = {d.hook: d for d in deliveries(app)}
    for name, timeout in (("quick", 1.0), ("slow", 600.0)):
        lease = claimed[name].lease_until
        assert before + timeout + 5.0 <= lease <= after + timeout + 5.0
        assert rows[name].locked_until == pytest.approx(lease)


@both
def test_claim_due_takes_at_most_limit(make_app):
    """PostgreSQL once claimed every due row per poll (a rescanned LIMIT subquery)."""
    _app, state, s = due_deliveries(make_app, 50)
    first = s.claim_due(state.hooks(), 20)
    second = s.claim_due(state.hooks(), 20)
    third = s.claim_due(state.hooks(), 20)
    assert [len(first), len(second), len(third)] == [20, 20, 10]
    ids = [d.row_id for d in first + second + third]
    assert len(set(ids)) == 50
    assert s.claim_due(state.hooks(), 20) == []


def test_poller_query_uses_the_partial_due_index(make_app):
    """SQLite uses a partial index only for a query that spells its condition the
    same way (literals, not bound values); otherwise every poll scans the table."""
    _app, state, s = due_deliveries(make_app, 3)
    seen = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("UPDATE"):
            seen.append((statement, parameters))

    sa.event.listen(s.engine, "before_cursor_execute", grab)
    try:
        assert len(s.claim_due(state.hooks(), 10)) == 3
    finally:
        sa.event.remove(s.engine, "before_cursor_execute", grab)
    ((statement, parameters),) = seen
    with s.engine.connect() as conn:
        plan = [
            row[-1]
            for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement, parameters
            )
        ]
    assert any("ix_postreg_deliveries_due" in step for step in plan), plan
    assert not any(step.startswith("SCAN postreg_deliveries") for step in plan), plan


@both
def test_dead_letters_are_listed_and_retried_through_their_partial_index(make_app):
    """``deliveries --status dead`` and ``retry --dead`` read the few dead rows,
    not every delivery ever kept (SQLite: the query plan names the index)."""
    _app, state, s, written = written_deliveries(make_app, 3, max_attempts=1)
    for delivery in written[:2]:
        state.dispatcher.finish(delivery, RuntimeError("down"), 0.1)
    s.flush()
    statements = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if "postreg_deliveries" in statement:
            statements.append((statement, parameters))

    sa.event.listen(s.engine, "before_cursor_execute", grab)
    try:
        dead = s.deliveries(status="dead", limit=10)
        assert s.retry_dead(hook="h") == 2
    finally:
        sa.event.remove(s.engine, "before_cursor_execute", grab)
    assert [d.id for d in dead] == [d.row_id for d in reversed(written[:2])]
    assert [d.status for d in s.deliveries(hook="h")].count("pending") == 2
    if s.engine.dialect.name != "sqlite":
        return
    with s.engine.connect() as conn:
        for statement, parameters in statements:
            plan = [
                row[-1]
                for row in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + statement, parameters
                )
            ]
            assert any("ix_postreg_deliveries_dead" in step for step in plan), plan


def test_listing_reads_the_newest_keys_instead_of_sorting_the_table(make_app):
    """``deliveries()`` (``flask postreg list``) on a table of millions of rows:
    newest first is the primary key backwards, and a time window a range of it;
    before, every listing sorted the whole table."""
    _app, _state, s = due_deliveries(make_app, 3)
    seen = []

    def grab(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("SELECT"):
            seen.append((statement, parameters))

    now = dt.datetime.now(dt.timezone.utc)
    sa.event.listen(s.engine, "before_cursor_execute", grab)
    try:
        assert len(s.deliveries(limit=2)) == 2
        assert len(s.deliveries(since=now - dt.timedelta(hours=1), until=now)) == 3
    finally:
        sa.event.remove(s.engine, "before_cursor_execute", grab)
    newest, window = seen
    with s.engine.connect() as conn:
        plans = [
            [row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + q, p)]
            for q, p in (newest, window)
        ]
    for plan in plans:
        assert not any("TEMP B-TREE" in step for step in plan), plan
    assert any("PRIMARY KEY (event_id>? AND event_id<?)" in step for step in plans[1])


@both
def test_poller_hands_back_what_the_queue_refuses(make_app):
    """A claim the backend cannot queue is released at once, its attempt given
    back, instead of sitting on its lease (hook timeout + grace) unrun."""
    app, state, s = due_deliveries(make_app, 5)

    class FullAfterTwo:
        def __init__(self):
            self.taken = []

        def capacity(self):
            return 5

        def submit(self, delivery):
            if len(self.taken) < 2:
                self.taken.append(delivery)
                return True
            return False

    backend = FullAfterTwo()
    assert state.poller.poll_once(backend) == 2
    rows = {d.id: d for d in deliveries(app)}
    taken = {d.row_id for d in backend.taken}
    for row_id, d in rows.items():
        if row_id in taken:
            assert (d.attempts, d.claim) == (1, 2) and d.locked_until > time.time()
        else:
            assert (d.attempts, d.claim, d.locked_until) == (0, 2, 0.0)
    again = s.claim_due(state.hooks(), 10)
    assert {d.row_id for d in again} == set(rows) - taken
    assert {d.attempt for d in again} == {1}


@both
def test_a_refused_pre_lease_gives_its_attempt_back(make_app):
    """A registration's pre-lease counts attempt 1 before anything runs; when
    the queue refuses the job, that attempt never ran and the next run is still
    attempt 1 of the budget (and the last one allowed ends dead, not earlier)."""
    app, state, s, (written,) = written_deliveries(make_app, 1, max_attempts=2)
    s.release([written.row_id])
    assert row(app, written.row_id).attempts == 0
    (first,) = s.claim_due(state.hooks(), 10)
    assert first.attempt == 1
    assert state.dispatcher.finish(first, RuntimeError("down"), 0.1).status == "pending"
    end_leases(s)
    (second,) = s.claim_due(state.hooks(), 10)
    assert second.attempt == 2
    assert state.dispatcher.finish(second, RuntimeError("down"), 0.1).status == "dead"
    assert row(app, written.row_id).attempts == 2


@both
def test_a_delivery_whose_leases_keep_expiring_ends_dead(make_app, caplog):
    """A hook that kills its process at every attempt (or an outcome that can
    never be written) would be claimed again at every lease end, for ever. An
    expired lease is forgiven once (the attempt it counted may never have run);
    past max_attempts + 1 claims the delivery is dead, through the usual path:
    an ERROR, the ``hook_failed`` signal, the recorded outcome."""
    app, state, s, (written,) = written_deliveries(make_app, 1, max_attempts=2)
    failed = []

    def on_failed(sender, event, hook, attempt, error, final, **extra):
        failed.append((hook, attempt, type(error).__name__, final))

    backend = Vanishing()
    with (
        hook_failed.connected_to(on_failed, app),
        caplog.at_level(logging.ERROR, logger="flask_postreg"),
    ):
        for _ in range(5):
            end_leases(s)
            state.poller.poll_once(backend)
    # The registration's pre-lease, then two claims (the budget plus one).
    assert [d.attempt for d in backend.taken] == [2, 3]
    d = row(app, written.row_id)
    assert (d.status, d.attempts, d.error_class) == ("dead", 3, "LeaseExpired")
    assert "expired without an outcome" in d.error, d.error
    assert d.locked_until is None
    assert failed == [("h", 3, "LeaseExpired", True)]
    assert any(written.event.id in r.getMessage() for r in caplog.records)


@both
def test_a_delivery_whose_event_cannot_be_read_ends_dead(make_app, caplog):
    """A claimed row whose event payload is unreadable cannot run: it is dead at
    once, with the reason, instead of being claimed at every lease end."""
    app, state, s, (written,) = written_deliveries(make_app, 1)
    e = s.t.events
    with s.engine.begin() as conn:
        conn.execute(sa.update(e).values(payload="{not json"))
    end_leases(s)
    with caplog.at_level(logging.ERROR, logger="flask_postreg"):
        assert s.claim_due(state.hooks(), 10) == []
    d = row(app, written.row_id)
    assert (d.status, d.attempts, d.error_class) == ("dead", 1, "UnreadableEvent")
    assert written.event.id in caplog.text
    end_leases(s)
    assert s.claim_due(state.hooks(), 10) == []
    assert row(app, written.row_id).status == "dead"


def three_behind_a_gate(make_app, **config):
    """An app (``config``) whose hook ``gated`` blocks until ``gate`` is set, and
    three registrations: the first runs (``started`` is set), the rest wait.
    ``(app, started, gate, calls)``; ``calls`` are the e-mails it was run for."""
    app, postreg = make_app(**config)
    started, gate = threading.Event(), threading.Event()
    calls = []

    def gated(user, context):
        calls.append(user.email)
        started.set()
        gate.wait(30)

    postreg.hook(gated, name="gated")
    for i in range(3):
        register(app, f"u{i}@example.com")
    return app, started, gate, calls


@both
def test_a_stopping_worker_starts_nothing_it_handed_back(make_app):
    """A worker whose running hook outlasts the shutdown timeout hands back
    everything unfinished; the queued deliveries leave its queue, so they do
    not start here after another worker may have claimed them."""
    from flask_postreg import worker

    app, started, gate, calls = three_behind_a_gate(
        make_app,
        POSTREG_RUN_IN_WEB=False,
        POSTREG_MAX_WORKERS=1,
        POSTREG_POLL_INTERVAL=0.05,
    )
    state = app.extensions["postreg"]
    stop = threading.Event()
    released = []
    runner = threading.Thread(
        target=lambda: released.append(
            worker.run(state, shutdown_timeout=0.1, stop=stop, echo=lambda _: None)
        )
    )
    runner.start()
    try:
        assert started.wait(10)
        stop.set()
        runner.join(30)
        assert released == [3]
    finally:
        gate.set()
    assert state.backend.join(10)
    assert len(calls) == 1
    assert (
        sorted((d.status, d.attempts) for d in deliveries(app)) == [("pending", 0)] * 3
    )


@both
@pytest.mark.parametrize("exiting", [True, False], ids=["at exit", "going on"])
def test_a_web_process_out_of_drain_time_hands_back_what_it_did_not_finish(
    make_app, caplog, exiting
):
    """A web process (hooks run in it) stopping with deliveries queued behind a
    hook that outlasts the drain: the queued ones go back pending, due now and
    no attempt charged (not left running until their leases end, an attempt
    spent that never ran). At interpreter exit the running one too (it is cut
    off); a process that goes on (``postreg.shutdown(app=...)``) lets it finish
    and record its outcome, not run it twice."""
    app, started, gate, calls = three_behind_a_gate(
        make_app, POSTREG_MAX_WORKERS=1, POSTREG_MAX_ATTEMPTS=2
    )
    state = app.extensions["postreg"]
    try:
        assert started.wait(10)
        with caplog.at_level(logging.WARNING, logger="flask_postreg"):
            assert state.backend.shutdown(0.1, exiting=exiting) is False
    finally:
        gate.set()
    handed_back = 3 if exiting else 2
    assert state.backend.handed_back == handed_back
    assert f"{handed_back} left pending for the next process" in caplog.text
    if not exiting:
        assert state.backend.join(10)  # the running attempt ends here
    rows = deliveries(app)
    finished = [] if exiting else [("succeeded", 1, None)]
    assert (
        sorted((d.status, d.attempts, d.locked_until) for d in rows)
        == [("pending", 0, None)] * handed_back + finished
    )
    assert all(d.next_attempt_at <= time.time() for d in rows if d.status == "pending")
    # A cut-off attempt's late success does not overwrite the hand-back (its
    # claim no longer holds): the next process runs it again, at attempt 1.
    state.store.flush()
    claimed = state.store.claim_due(state.hooks(), 10)
    assert sorted(d.attempt for d in claimed) == [1] * handed_back
    assert len(calls) == 1


@both
def test_an_exit_after_an_explicit_shutdown_hands_back_what_still_runs(make_app):
    """``postreg.shutdown()`` left the running attempt to finish; the process
    then exits (the atexit drain) with it still running: it is cut off, so it
    goes back pending too instead of staying leased with an attempt spent."""
    app, started, gate, _ = three_behind_a_gate(make_app, POSTREG_MAX_WORKERS=1)
    backend = app.extensions["postreg"].backend
    try:
        assert started.wait(10)
        assert backend.shutdown(0.1) is False
        assert backend.handed_back == 2
        assert backend.shutdown(0.1, exiting=True) is False  # as at exit
        assert backend.handed_back == 1
    finally:
        gate.set()
    rows = deliveries(app)
    assert sorted((d.status, d.attempts) for d in rows) == [("pending", 0)] * 3


def test_only_errors_one_row_can_cause_are_retried_row_by_row():
    """A batch's failure is retried row by row only when it may be one row's:
    a database out of reach, locked or a pool exhausted would make each row
    wait out its own timeout."""
    from flask_postreg.store.outcomes import _about_a_row

    orig = Exception("x")
    assert _about_a_row(sa.exc.DataError("UPDATE", {}, orig))
    assert _about_a_row(sa.exc.IntegrityError("UPDATE", {}, orig))
    assert _about_a_row(UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogate"))
    assert not _about_a_row(sa.exc.OperationalError("UPDATE", {}, orig))
    assert not _about_a_row(sa.exc.TimeoutError("QueuePool limit reached"))
    assert not _about_a_row(sa.exc.InterfaceError("UPDATE", {}, orig))


@pytest.mark.parametrize("db_url", BOTH_DATABASES[1:], indirect=True)
@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("how", ["engine", "execution_options"])
def test_the_outbox_runs_at_read_committed_whatever_the_app_sets(
    make_app, isolation, how
):
    """An app's engine at REPEATABLE READ or SERIALIZABLE: the outbox's own
    short UPDATEs (outcomes, claims, hand-backs), each already guarded by its
    claim token, would fail with serialization errors whenever they met
    another process's, losing whole batches to their leases. They run at
    READ COMMITTED: here a hand-back that waited on a row another process's
    outcome was writing hands back the other row and skips that one."""
    options = (
        {"isolation_level": isolation}
        if how == "engine"
        else {"execution_options": {"isolation_level": isolation}}
    )
    config = {"SQLALCHEMY_ENGINE_OPTIONS": options}
    app, _, s, (a, b) = written_deliveries(make_app, 2, config=config)
    with s.connect() as conn:
        level = conn.exec_driver_sql("SHOW transaction_isolation").scalar()
    assert level == "read committed"
    with app.app_context(), db.engine.connect() as conn:  # the app's, unchanged
        level = conn.exec_driver_sql("SHOW transaction_isolation").scalar()
    assert level == isolation.lower()
    d = s.t.deliveries
    with app.app_context():
        other = db.engine.connect()  # as the app configured it
    try:
        pid = other.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        other.execute(  # b's outcome, being written by another process
            sa.update(d)
            .where(d.c.event_id == b.event.id, d.c.claim == 1)
            .values(status="succeeded", locked_until=None)
        )
        handed = []
        worker = threading.Thread(target=lambda: handed.append(s.hand_back([a, b])))
        worker.start()
        deadline = time.monotonic() + 10
        with s.connect() as watch:  # until the hand-back waits on b's lock
            blocked = sa.text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> :pid"
            )
            while not watch.execute(blocked, {"pid": pid}).scalar():
                assert time.monotonic() < deadline, "the hand-back never waited"
                watch.rollback()
        other.commit()
    finally:
        other.close()
    worker.join(10)
    assert handed == [1]
    statuses = {r.event_id: r.status for r in deliveries(app)}
    assert (statuses[a.event.id], statuses[b.event.id]) == ("pending", "succeeded")


@both
def test_join_waits_for_a_poll_between_its_claim_and_its_submit(make_app):
    """join() returned while the poller held a row it had claimed and not yet
    queued: a caller saw it 'running' with nothing left to wait for (a CI
    flake of the stored-errors test, whose retry the poller took over)."""
    app, state, s = due_deliveries(make_app, 1)
    claimed, go = threading.Event(), threading.Event()
    real = s.claim_due

    def slow_claim(hooks, limit):
        taken = real(hooks, limit)
        if taken:
            claimed.set()
            assert go.wait(10)
        return taken

    s.claim_due = slow_claim
    postreg = state.ext
    state.start()  # the pool and its poller, whose first round claims the row
    try:
        assert claimed.wait(10)
        assert not postreg.join(0.2)
    finally:
        go.set()
    assert postreg.join(10)
    assert [(d.status, d.attempts) for d in deliveries(app)] == [("succeeded", 1)]


@both
def test_a_worker_runs_deliveries_when_the_app_uses_the_sync_backend(make_app):
    """The web app's config (BACKEND='sync', RUN_IN_WEB=False) is the worker's
    too; the sync backend has no poller, so the worker ran nothing. It now
    polls with a pool of its own."""
    from flask_postreg import worker

    app, postreg = make_app(
        POSTREG_BACKEND="sync", POSTREG_RUN_IN_WEB=False, POSTREG_POLL_INTERVAL=0.05
    )
    ran = threading.Event()
    postreg.hook(lambda u, c: ran.set(), name="h")
    register(app, "ann@example.com")
    assert [d.status for d in deliveries(app)] == ["pending"]
    state = app.extensions["postreg"]
    stop = threading.Event()
    runner = threading.Thread(
        target=worker.run,
        args=(state,),
        kwargs={"shutdown_timeout": 5, "stop": stop, "echo": lambda _: None},
    )
    runner.start()
    try:
        assert ran.wait(10), "the worker never ran the delivery"
    finally:
        stop.set()
        runner.join(30)
    assert [d.status for d in deliveries(app)] == ["succeeded"]


def test_the_poller_prunes_with_the_retention_days_once_an_hour(make_app):
    """``POSTREG_RETENTION_DAYS``: the poller's first round prunes succeeded
    deliveries older than that (and their events); the rounds after it, within
    the hour, do not read the table again."""
    app, postreg = make_app(POSTREG_RETENTION_DAYS=2)
    postreg.hook(lambda u, c: None, name="h")
    state = app.extensions["postreg"]
    s = state.store
    d, e = s.t.deliveries, s.t.events

    def succeeded(days_ago):
        when = time.time() - days_ago * 86400
        event_id = event_id_floor(when) + os.urandom(8).hex()
        user = User(id=str(days_ago), email=f"u{days_ago}@example.com")
        with s.engine.begin() as conn:
            s.write(conn, [Event(event_id, user, Context(event_id=event_id))], [])
            conn.execute(
                sa.insert(d).values(
                    event_id=event_id,
                    hook="h",
                    status="succeeded",
                    attempts=1,
                    claim=1,
                    next_attempt_at=when,
                    created_at=when,
                    updated_at=when,
                )
            )
            conn.execute(sa.update(e).where(e.c.id == event_id).values(created_at=when))
        return event_id

    class Idle:  # takes no claims: only the prune is under test
        def capacity(self):
            return 0

    old, recent = succeeded(3), succeeded(1)
    state.poller.poll_once(Idle())
    assert {r.event_id for r in deliveries(app)} == {recent}
    assert old not in {x["id"] for x in events(app)}
    later = succeeded(3)
    state.poller.poll_once(Idle())  # within the hour: not pruned again yet
    assert {r.event_id for r in deliveries(app)} == {recent, later}
