"""DESIGN 4.4: each (event, hook) is its own job; failures are isolated and retried."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
import time

import pytest
import sqlalchemy as sa
from flask import current_app

from flask_postreg import PermanentError
from flask_postreg import RetryLater
from flask_postreg import User
from flask_postreg import hook_failed
from flask_postreg import hook_succeeded
from flask_postreg import post_user_registration
from flask_postreg.dispatch import Outcome
from flask_postreg.dispatch import RetryPolicy
from flask_postreg.events import Context
from flask_postreg.handlers import _http
from flask_postreg.store.memory import MemoryStore

from .conftest import FailsFirst
from .models import Account
from .models import db


def register(app, email="ann@example.com"):
    with app.app_context():
        db.session.add(Account(email=email, password_hash="pbkdf2:sha256:SECRET-HASH"))
        db.session.commit()


@contextlib.contextmanager
def connected(app, *receivers):
    """``receivers`` connected to ``post_user_registration`` for ``app``."""
    for receiver in receivers:
        post_user_registration.connect(receiver, app)
    try:
        yield
    finally:
        for receiver in receivers:
            post_user_registration.disconnect(receiver, app)


def outcomes(app, **filters):
    return app.extensions["postreg"].store.recent(**filters)


def test_failing_hook_does_not_stop_others_nor_the_request(
    app, postreg, recorder, caplog
):
    def broken(user, context):
        raise ValueError("CRM said no")

    postreg.hook(broken, name="broken", max_attempts=1)

    @app.post("/register")
    def view():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
        return "created", 201

    with caplog.at_level(logging.WARNING, logger="flask_postreg"):
        assert app.test_client().post("/register").status_code == 201
        assert postreg.join(10)
    assert recorder.emails == ["ann@example.com"]
    (dead,) = outcomes(app, hook="broken")
    assert (dead.status, dead.attempt, dead.error_class) == ("dead", 1, "ValueError")
    record = next(r for r in caplog.records if "broken" in r.getMessage())
    assert record.levelno == logging.ERROR
    assert dead.event_id in record.getMessage()
    assert "CRM said no" in record.getMessage()


def test_fails_twice_then_succeeds_in_three_attempts(app, postreg):
    flaky = FailsFirst(2)
    postreg.hook(flaky, name="flaky", max_attempts=5)
    register(app)
    assert postreg.join(10)
    assert flaky.attempts == [1, 2, 3]
    history = [(o.attempt, o.status) for o in reversed(outcomes(app, hook="flaky"))]
    assert history == [(1, "pending"), (2, "pending"), (3, "succeeded")]


def test_always_failing_hook_is_dead_after_max_attempts(app, postreg):
    received = []
    postreg.hook(lambda u, c: 1 / 0, name="zero", max_attempts=3)

    def on_failed(sender, event, hook, attempt, error, final, **extra):
        received.append((sender, hook, attempt, type(error).__name__, final))

    with hook_failed.connected_to(on_failed, app):
        register(app)
        assert postreg.join(10)
    assert received == [
        (app, "zero", 1, "ZeroDivisionError", False),
        (app, "zero", 2, "ZeroDivisionError", False),
        (app, "zero", 3, "ZeroDivisionError", True),
    ]
    assert outcomes(app, hook="zero")[0].status == "dead"


def test_permanent_error_is_dead_at_once(app, postreg):
    postreg.hook(
        lambda u, c: (_ for _ in ()).throw(PermanentError("gone")), name="gone"
    )
    register(app)
    assert postreg.join(10)
    (outcome,) = outcomes(app, hook="gone")
    assert (outcome.status, outcome.attempt) == ("dead", 1)


def test_event_id_is_stable_across_retries(app, postreg):
    seen = []

    def flaky(user, context):
        seen.append(context.event_id)
        if len(seen) < 2:
            raise RetryLater("busy", retry_after=0)

    postreg.hook(flaky, name="flaky")
    register(app)
    assert postreg.join(10)
    assert len(seen) == 2 and seen[0] == seen[1]


def test_succeeded_signal_and_app_context(app, postreg):
    got = []

    def hook(user, context):
        got.append(current_app.name)

    postreg.hook(hook, name="ctx")

    def on_ok(sender, event, hook, attempt, duration, **extra):
        got.append((sender, hook, attempt, duration >= 0))

    with hook_succeeded.connected_to(on_ok, app):
        register(app)
        assert postreg.join(10)
    assert got == [app.name, (app, "ctx", 1, True)]


def test_blinker_receivers_run_in_the_pool(app, postreg, recorder):
    got = []

    def receiver(sender, user, context, **extra):
        got.append((sender, user.email, threading.current_thread().name))

    with connected(app, receiver):
        register(app)
        assert postreg.join(10)
    assert got == [(app, "ann@example.com", got[0][2])]
    assert got[0][2].startswith("postreg-worker")
    names = [h.name for h in postreg.hooks(app)]
    assert "recorder" in names


def test_receivers_made_by_one_factory_each_run_as_their_own_hook(app, postreg):
    """They share a module:qualname; the second used to be dropped silently.
    They are numbered in connection order (blinker hands them over from a set,
    in an order that differs between processes: outbox rows would run the
    wrong one)."""
    got = []

    def make_receiver(label):
        def receiver(sender, user, context, **extra):
            got.append(label)

        return receiver

    labels = ["crm", "audit", "billing", "erp", "ads", "bi"]
    receivers = [make_receiver(label) for label in labels]
    with connected(app, *receivers):
        register(app)
        assert postreg.join(10)
        assert sorted(got) == sorted(labels)
        hooks = [h for h in postreg.hooks(app) if h.source == "receiver"]
        got.clear()
        with app.app_context():
            for hook in hooks:  # which receiver each name runs
                hook.func(User(email="x@example.com"), Context())
    assert got == labels
    base = (
        "signal:tests.test_dispatch:test_receivers_made_by_one_factory_each_run"
        "_as_their_own_hook.<locals>.make_receiver.<locals>.receiver"
    )
    assert [h.name for h in hooks] == [base] + [f"{base}#{n}" for n in range(2, 7)]


def test_one_receiver_connected_and_disconnected_per_app(make_app, new_db_url):
    """Connecting a receiver already known for one app to another, or
    disconnecting it from one, changes that app's hooks at once (its cached
    list used to miss it: blinker's receiver ids stay the same)."""
    from flask_postreg import PostReg

    shared = PostReg()
    a, _ = make_app(shared, name="a", url=new_db_url("ra"))
    b, _ = make_app(shared, name="b", url=new_db_url("rb"))
    got = []

    def receiver(sender, user, context, **extra):
        got.append((sender.name, user.email))

    def signup(app, email):
        register(app, email)
        assert shared.join(10)

    post_user_registration.connect(receiver, a)
    try:
        signup(a, "one@example.com")
        signup(b, "two@example.com")  # caches b's hooks: no receiver
        post_user_registration.connect(receiver, b)
        signup(b, "three@example.com")
        post_user_registration.disconnect(receiver, a)
        signup(a, "four@example.com")
    finally:
        post_user_registration.disconnect(receiver)
    assert got == [("a", "one@example.com"), ("b", "three@example.com")]


def test_shutdown_of_one_app_leaves_the_others_running(make_app, new_db_url):
    """An app factory per test stops its own app's pool in teardown; another
    app of the same PostReg keeps running its hooks."""
    from flask_postreg import PostReg

    shared = PostReg()
    a, _ = make_app(shared, name="a", url=new_db_url("sa"))
    b, _ = make_app(shared, name="b", url=new_db_url("sb"))
    got = []
    shared.hook(lambda user, context: got.append(user.email), name="rec")
    for app in (a, b):
        register(app, f"{app.name}1@example.com")
    assert shared.join(10)
    with a.app_context():  # the current_app proxy names the app too
        assert shared.shutdown(5, app=current_app)
    for thread in a.extensions["postreg"].backend.threads():
        thread.join(5)
        assert not thread.is_alive(), f"{thread.name} of app a lives on"
    register(a, "a2@example.com")  # left pending in a's outbox, not run here
    register(b, "b2@example.com")
    assert shared.join(10)
    assert sorted(got) == ["a1@example.com", "b1@example.com", "b2@example.com"]


def test_a_receiver_whose_eq_raises_does_not_break_the_commit(app, postreg):
    """Receivers are matched by identity: an object's own ``__eq__`` (which may
    assume its own kind) never runs inside the registration's flush."""
    got = []

    class Forward:
        url = "https://crm.example.com"

        def __eq__(self, other):
            return self.url == other.url  # AttributeError for a function

        __hash__ = object.__hash__

        def __call__(self, sender, user, context, **extra):
            got.append("forward")

    def plain(sender, user, context, **extra):
        got.append("plain")

    with connected(app, plain, Forward()):
        register(app)
        assert postreg.join(10)
    assert sorted(got) == ["forward", "plain"]


def test_a_hook_named_like_a_configured_handler_is_refused(make_app):
    from flask_postreg import ConfigError
    from flask_postreg import PostReg

    early = PostReg()
    early.hook(lambda u, c: None, name="console")
    with pytest.raises(ConfigError, match=r"'console'.*rename the hook"):
        make_app(early, POSTREG_CONSOLE=True)
    _app, late = make_app(POSTREG_CONSOLE=True)
    with pytest.raises(ValueError, match="'console' is the name of a built-in"):
        late.hook(lambda u, c: None, name="console")


def test_async_hooks_are_awaited(app, postreg):
    done = []

    async def notify(user, context):
        await asyncio.sleep(0)
        done.append(user.email)

    postreg.hook(notify, name="async")
    register(app)
    assert postreg.join(10)
    assert done == ["ann@example.com"]


def test_hanging_hook_times_out_while_others_finish(make_app):
    app, postreg = make_app(POSTREG_MAX_WORKERS=1, POSTREG_RETRY_SCHEDULE=[0])
    release = threading.Event()
    finished = []
    postreg.hook(
        lambda u, c: release.wait(30), name="hang", timeout=0.2, max_attempts=1
    )
    postreg.hook(lambda u, c: finished.append(u.email), name="quick")
    try:
        register(app, "a@example.com")
        register(app, "b@example.com")
        # One worker, and the first job hangs: only the watchdog's replacement
        # worker lets the quick hooks finish.
        assert postreg.join(10)
        assert sorted(finished) == ["a@example.com", "b@example.com"]
        timed_out = outcomes(app, hook="hang")
        assert [o.error_class for o in timed_out] == ["HookTimeout", "HookTimeout"]
        assert all(o.status == "dead" for o in timed_out)
    finally:
        release.set()


def test_late_completion_does_not_overwrite_timeout(make_app):
    app, postreg = make_app()
    release = threading.Event()
    returned = threading.Event()

    def slow(user, context):
        release.wait(30)
        returned.set()

    postreg.hook(slow, name="slow", timeout=0.1, max_attempts=1)
    register(app)
    assert postreg.join(10)
    release.set()
    assert returned.wait(10)
    assert postreg.join(10)
    assert [o.status for o in outcomes(app, hook="slow")] == ["dead"]


def test_backpressure_drops_and_counts_in_memory_mode(make_app, caplog):
    app, postreg = make_app(
        POSTREG_MAX_WORKERS=1, POSTREG_MAX_QUEUE=2, POSTREG_STORE="memory"
    )
    gate = threading.Event()
    started = threading.Event()

    def blocking(user, context):
        started.set()
        gate.wait(30)

    postreg.hook(blocking, name="blocking")
    with caplog.at_level(logging.WARNING, logger="flask_postreg"):
        register(app, "first@example.com")
        assert started.wait(10)  # the worker is busy; now the queue fills
        for i in range(5):
            register(app, f"u{i}@example.com")
    state = app.extensions["postreg"]
    assert state.dropped == 3
    assert any("queue is full" in r.getMessage() for r in caplog.records)
    gate.set()
    assert postreg.join(10)
    assert len(outcomes(app, hook="blocking")) == 3


def test_sync_backend_runs_inline_and_commit_never_raises(make_app):
    app, postreg = make_app(POSTREG_BACKEND="sync")
    seen = []
    postreg.hook(
        lambda u, c: seen.append(threading.current_thread().name), name="inline"
    )
    postreg.hook(lambda u, c: 1 / 0, name="boom", max_attempts=2)
    register(app)  # would raise here if a hook's error leaked into commit()
    assert seen == [threading.current_thread().name]
    assert [o.attempt for o in outcomes(app, hook="boom")] == [2, 1]


def test_sync_backend_runs_after_the_session_gave_its_connection_back(make_app, caplog):
    """With a pool of one connection, a sync hook that reads the database and
    the outcome write both need the connection the committing session held:
    they waited for the pool's timeout and failed. They run once it is back."""
    app, postreg = make_app(
        POSTREG_BACKEND="sync",
        SQLALCHEMY_ENGINE_OPTIONS={
            "pool_size": 1,
            "max_overflow": 0,
            "pool_timeout": 1,
        },
    )
    counts = []

    @postreg.hook(name="reads", max_attempts=1)
    def reads(user, context):
        counts.append(db.session.scalar(sa.select(sa.func.count(Account.id))))

    with caplog.at_level(logging.ERROR, logger="flask_postreg"):
        register(app)
    assert counts == [1]
    [outcome] = outcomes(app, hook="reads")
    assert (outcome.status, outcome.attempt) == ("succeeded", 1)
    assert not caplog.records


def test_a_disabled_extension_captures_and_emits_nothing(make_app):
    """``POSTREG_ENABLED = False``: neither a commit nor ``emit()`` runs a hook
    or writes an outbox row (``emit()`` still returns the event it made)."""
    app, postreg = make_app(POSTREG_ENABLED=False)
    ran = []
    postreg.hook(lambda u, c: ran.append(u.email), name="h")
    with app.app_context():
        account = Account(email="ann@example.com")
        db.session.add(account)
        db.session.commit()
        event = postreg.emit(account)
    assert postreg.join(10)
    assert ran == [] and event.user.email == "ann@example.com"
    assert postreg.store(app).deliveries() == []


def test_a_disabled_app_runs_no_pending_row_and_no_worker(make_app):
    """``POSTREG_ENABLED = False`` runs no hook: its first request (or
    ``postreg.start()``) starts no pool or poller, so rows another process left
    pending stay pending; ``flask postreg worker`` refuses to start."""
    from flask_postreg import PostRegError
    from flask_postreg import worker

    web, web_postreg = make_app(POSTREG_RUN_IN_WEB=False)
    ran = []
    web_postreg.hook(lambda u, c: ran.append(u.email), name="h")
    register(web)
    assert web_postreg.join(10)
    app, postreg = make_app(POSTREG_ENABLED=False, POSTREG_POLL_INTERVAL=0.05)
    postreg.hook(lambda u, c: ran.append(u.email), name="h")
    assert app.test_client().get("/").status_code == 404
    postreg.start(app)
    state = app.extensions["postreg"]
    assert state.backend.started_threads == 0
    stop = threading.Event()
    stop.set()
    with pytest.raises(PostRegError, match="POSTREG_ENABLED is False"):
        worker.run(state, shutdown_timeout=1.0, stop=stop)
    assert state.backend.started_threads == 0
    assert ran == []
    assert [d.status for d in postreg.store(app).deliveries()] == ["pending"]


@pytest.mark.parametrize("store", ["memory", "database"])
def test_both_stores_list_the_newest_registration_first(make_app, store):
    """Ann's retry ends after Bob registered: the memory store listed by latest
    outcome (Ann first), the database store by event (Bob first)."""
    app, postreg = make_app(POSTREG_STORE=store, POSTREG_RETRY_SCHEDULE=[0.3])
    flaky = FailsFirst(1)

    @postreg.hook(name="a", max_attempts=2)
    def hook(user, context):
        if user.email == "ann@example.com":
            flaky(user, context)

    register(app, "ann@example.com")
    register(app, "bob@example.com")
    assert postreg.join(10)
    listed = postreg.store(app).deliveries(hook="a")
    assert [d.attempts for d in listed] == [1, 2]  # Bob's, then Ann's retried one


def test_disabled_hook_does_not_run(app, postreg, recorder):
    ran = []
    postreg.hook(lambda u, c: ran.append(1), name="off", enabled=False)
    register(app)
    assert postreg.join(10)
    assert ran == [] and recorder.emails == ["ann@example.com"]


def test_hooks_get_secrets_which_are_never_logged(make_app, caplog):
    app, postreg = make_app(POSTREG_SECRETS={"CRM_TOKEN": "tok-very-secret-123"})

    def uses_secret(user, context):
        raise RuntimeError(f"CRM rejected token {context.secrets['CRM_TOKEN']}")

    postreg.hook(uses_secret, name="crm", max_attempts=1)
    with caplog.at_level(logging.DEBUG):
        register(app)
        assert postreg.join(10)
    assert "tok-very-secret-123" not in caplog.text
    (outcome,) = outcomes(app, hook="crm")
    assert "tok-very-secret-123" not in outcome.error
    assert "[secret]" in outcome.error


def test_secrets_callable_runs_in_the_app_context_and_stays_hidden(make_app, caplog):
    """POSTREG_SECRETS may be a callable (a vault, the app's config): resolved for
    each attempt in an app context, and what it returned is hidden from stored
    errors and logs even when it returns a new value each time (rotated tokens)."""
    calls = []

    def secrets():
        calls.append(1)
        return {"CRM_TOKEN": f"{current_app.config['CRM_PREFIX']}-{len(calls)}"}

    app, postreg = make_app(POSTREG_SECRETS=secrets, CRM_PREFIX="tok-rotating")
    seen = []

    def uses_secret(user, context):
        seen.append(context.secrets["CRM_TOKEN"])
        raise RuntimeError(f"CRM rejected token {context.secrets['CRM_TOKEN']}")

    postreg.hook(uses_secret, name="crm", max_attempts=2)
    with caplog.at_level(logging.DEBUG):
        register(app)
        assert postreg.join(10)
    assert seen[:2] == ["tok-rotating-1", seen[1]] and len(set(seen)) == 2
    assert "tok-rotating" not in caplog.text
    failures = outcomes(app, hook="crm")
    assert [o.status for o in failures] == ["dead", "pending"]
    for outcome in failures:
        assert "tok-rotating" not in outcome.error and "[secret]" in outcome.error


def test_a_broken_secrets_callable_fails_the_attempt_not_the_registration(
    make_app, caplog
):
    broken = [True]

    def secrets():
        if broken[0]:
            raise LookupError("the vault is sealed")
        return {"CRM_TOKEN": "tok-from-the-vault"}

    app, postreg = make_app(POSTREG_SECRETS=secrets)
    seen = []
    postreg.hook(
        lambda user, context: seen.append(context.secrets["CRM_TOKEN"]),
        name="crm",
        max_attempts=3,
    )
    with caplog.at_level(logging.WARNING, logger="flask_postreg"):
        register(app)
        assert postreg.join(10)
    failed = outcomes(app, hook="crm")[0]  # newest first
    assert (failed.status, failed.error_class) == ("dead", "LookupError")
    assert "vault is sealed" in caplog.text
    broken[0] = False
    register(app, "bob@example.com")
    assert postreg.join(10)
    assert seen == ["tok-from-the-vault"]


def test_duplicate_hook_name_is_refused(postreg):
    postreg.hook(lambda u, c: None, name="x")
    with pytest.raises(ValueError, match="already registered"):
        postreg.hook(lambda u, c: None, name="x")


def test_default_hook_name_is_module_and_qualname(postreg, app):
    @postreg.hook
    def welcome(user, context):
        pass

    assert (
        "tests.test_dispatch:test_default_hook_name_is_module_and_qualname.<locals>.welcome"
        in [h.name for h in postreg.hooks(app)]
    )


class TestRetryPolicy:
    def test_schedule_with_jitter_bounds(self):
        low = RetryPolicy([5, 300], rand=lambda: 0.0)
        high = RetryPolicy([5, 300], rand=lambda: 1.0)
        mid = RetryPolicy([5, 300], rand=lambda: 0.5)
        assert low.delay(1) == pytest.approx(4.0)
        assert high.delay(1) == pytest.approx(6.0)
        assert mid.delay(2) == pytest.approx(300.0)
        # The last step repeats.
        assert mid.delay(7) == pytest.approx(300.0)

    def test_retry_after_is_honoured_but_capped(self):
        policy = RetryPolicy([5, 60], rand=lambda: 0.5)
        assert policy.delay(1, retry_after=30) == 30
        assert policy.delay(1, retry_after=10_000) == 60
        assert policy.delay(1, retry_after=-3) == 0

    def test_a_retry_after_that_is_not_a_number_leaves_it_to_the_schedule(self):
        """A hook passing a raw ``Retry-After`` date, or a server saying ``nan``:
        the schedule decides (a NaN delay would never come due)."""
        policy = RetryPolicy([5, 60], rand=lambda: 0.5)
        for odd in ("Wed, 21 Oct 2015 07:28:00 GMT", float("nan"), "inf", None):
            assert RetryLater("busy", retry_after=odd).delay is None  # type: ignore[arg-type]
        assert RetryLater("busy", retry_after="12").delay == 12.0  # type: ignore[arg-type]
        assert policy.delay(1, retry_after=float("nan")) == 5.0
        assert _http.retry_after("nan") is None
        assert _http.retry_after("inf") is None
        assert _http.retry_after("120") == 120.0


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("this exception has no text")


def test_odd_exceptions_are_recorded_and_no_worker_is_lost(make_app):
    """A hook error whose message cannot be read, or a RetryLater whose
    retry_after is a date string or NaN, is still classified and recorded; the
    pool's only worker survives to run the next registration's hooks."""
    app, postreg = make_app(POSTREG_MAX_WORKERS=1, POSTREG_STORE="memory")

    def unprintable(user, context):
        raise Unprintable()

    postreg.hook(unprintable, name="unprintable", max_attempts=1)
    for odd in ("Wed, 21 Oct 2015 07:28:00 GMT", float("nan")):
        hook = FailsFirst(1, RetryLater("busy", retry_after=odd))
        postreg.hook(hook, name=f"odd-{odd}", max_attempts=2)
    register(app, "a@example.com")
    register(app, "b@example.com")
    assert postreg.join(10)
    dead = outcomes(app, hook="unprintable")
    assert [o.status for o in dead] == ["dead", "dead"]
    assert dead[0].error == "(a Unprintable whose message could not be read)"
    for odd in ("Wed, 21 Oct 2015 07:28:00 GMT", float("nan")):
        history = [o.status for o in reversed(outcomes(app, hook=f"odd-{odd}"))]
        assert history == ["pending", "succeeded", "succeeded"]


@pytest.mark.parametrize("raised", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_a_hook_raising_a_base_exception_fails_and_keeps_its_worker(make_app, raised):
    """``KeyboardInterrupt`` (or ``SystemExit``...) raised by a hook on a pool
    thread is that attempt's failure: Ctrl-C reaches the main thread only.
    It killed the worker; the watchdog then counted it hung, until no worker
    was left to run anything."""
    app, postreg = make_app(POSTREG_MAX_WORKERS=1, POSTREG_STORE="memory")

    def quits(user, context):
        raise raised()

    postreg.hook(quits, name="quits", max_attempts=1)
    for i in range(6):  # more than the watchdog's allowance of hung threads
        register(app, f"u{i}@example.com")
    assert postreg.join(10)
    dead = outcomes(app, hook="quits")
    assert [(o.status, o.error_class) for o in dead] == [("dead", raised.__name__)] * 6


def test_backpressure_in_database_mode_loses_nothing(make_app):
    app, postreg = make_app(
        POSTREG_MAX_WORKERS=1, POSTREG_MAX_QUEUE=2, POSTREG_POLL_INTERVAL=0.05
    )
    gate = threading.Event()
    started = threading.Event()
    seen = []
    all_seen = threading.Event()

    def blocking(user, context):
        started.set()
        gate.wait(30)
        seen.append(user.email)
        if len(seen) == 6:
            all_seen.set()

    postreg.hook(blocking, name="blocking")
    register(app, "first@example.com")
    assert started.wait(10)
    for i in range(5):
        register(app, f"u{i}@example.com")
    assert app.extensions["postreg"].dropped == 0
    gate.set()
    assert all_seen.wait(20), seen  # the poller ran what the queue refused
    assert postreg.join(10)
    assert sorted(seen) == sorted(
        ["first@example.com"] + [f"u{i}@example.com" for i in range(5)]
    )


def test_store_accessor_is_the_query_api(app, postreg, recorder):
    register(app)
    assert postreg.join(10)
    store = postreg.store(app)
    assert store is app.extensions["postreg"].store
    (record,) = store.deliveries(hook="recorder")
    assert (record.status, record.attempts) == ("succeeded", 1)
    assert store.counts() == {("recorder", "succeeded"): 1}


@pytest.mark.parametrize("store_name", ["memory", "database"])
def test_naive_query_times_are_utc_in_both_stores(make_app, monkeypatch, store_name):
    """``deliveries(since=, until=)`` read a naive time as UTC, as event times
    are stored, whatever the process's time zone. (The database store read it
    as local time; the memory store raised comparing it with aware times.)"""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        app, postreg = make_app(POSTREG_STORE=store_name)
        postreg.hook(lambda u, c: None, name="h")
        register(app)
        assert postreg.join(10)
        store = postreg.store(app)
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        minute = datetime.timedelta(minutes=1)
        assert [d.hook for d in store.deliveries(since=now - minute)] == ["h"]
        assert store.deliveries(since=now + minute) == []
        assert [d.hook for d in store.deliveries(until=now + minute)] == ["h"]
        assert store.deliveries(until=now - minute) == []
    finally:
        monkeypatch.undo()
        time.tzset()


def test_async_hook_with_the_sync_backend_inside_a_running_loop(make_app):
    app, postreg = make_app(POSTREG_BACKEND="sync")
    done = []

    async def notify(user, context):
        await asyncio.sleep(0)
        done.append(user.email)

    postreg.hook(notify, name="async")

    async def main():  # e.g. an async CLI or test commits the user
        register(app)

    asyncio.run(main())
    assert done == ["ann@example.com"]
    assert outcomes(app, hook="async")[0].status == "succeeded"


def test_memory_counts_cover_more_than_the_history(make_app):
    app, postreg = make_app(POSTREG_STORE="memory", POSTREG_HISTORY_SIZE=2)
    postreg.hook(lambda u, c: None, name="noop")
    postreg.hook(lambda u, c: 1 / 0, name="boom", max_attempts=2)
    for i in range(5):
        register(app, f"u{i}@example.com")
    assert postreg.join(10)
    store = postreg.store(app)
    assert store.counts() == {("noop", "succeeded"): 5, ("boom", "dead"): 5}
    assert len(store.deliveries(limit=100)) == 2  # memory stays bounded


def test_memory_counts_move_a_retry_evicted_from_the_history():
    """A delivery waiting for its retry falls out of the bounded history; when it
    ends, its count still moves from pending to dead (it was counted twice)."""
    store = MemoryStore(2)
    now = datetime.datetime.now(datetime.timezone.utc)

    def outcome(event, hook, status, retry_in=None):
        return Outcome(event, hook, 1, status, 0.0, now, retry_in=retry_in)

    store.record(outcome("evt_a", "boom", "pending", retry_in=1.0))
    store.record(outcome("evt_b", "noop", "succeeded"))
    store.record(outcome("evt_c", "noop", "succeeded"))  # evt_a leaves the history
    assert store.counts() == {("boom", "pending"): 1, ("noop", "succeeded"): 2}
    store.record(outcome("evt_a", "boom", "dead"))
    assert store.counts() == {("boom", "dead"): 1, ("noop", "succeeded"): 2}
