"""Run-time hook switches (``flask postreg enable/disable``): stored in
``postreg_hook_settings`` and applied by every process within
``POSTREG_POLL_INTERVAL``, from its very first registration."""

from __future__ import annotations

import logging
import threading

import pytest
import sqlalchemy as sa

from .conftest import BOTH_DATABASES
from .conftest import Recorder
from .models import Account
from .models import db
from .outbox import accounts
from .outbox import deliveries
from .outbox import events

both = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)


def register(app, email):
    with app.app_context():
        db.session.add(Account(email=email))
        db.session.commit()


def hooks_written(app, email):
    """The hooks the outbox has rows of for ``email``'s event."""
    (event_id,) = [e["id"] for e in events(app) if e["email"] == email]
    return sorted(d.hook for d in deliveries(app) if d.event_id == event_id)


@both
def test_a_web_process_without_a_poller_applies_the_switches(make_app):
    """With ``POSTREG_RUN_IN_WEB = False`` no poller runs in the web process:
    it reads the switches itself when it writes rows, at most once per
    interval. (It read them never: an enabled hook got no rows, ever.)"""
    app, postreg = make_app(POSTREG_RUN_IN_WEB=False, POSTREG_POLL_INTERVAL=1e-6)
    postreg.hook(lambda u, c: None, name="crm", enabled=False)
    postreg.hook(lambda u, c: None, name="slack")
    store = app.extensions["postreg"].store
    # `flask postreg enable crm` and `disable slack`, run in another process.
    store.set_enabled("crm", True)
    store.set_enabled("slack", False)
    register(app, "ann@example.com")
    assert hooks_written(app, "ann@example.com") == ["crm"]
    store.set_enabled("slack", True)
    register(app, "bob@example.com")
    assert hooks_written(app, "bob@example.com") == ["crm", "slack"]


@both
def test_no_enabled_hook_writes_no_outbox_row(make_app):
    """Every hook disabled: a registration writes nothing to the outbox (an
    event row would only keep personal data), so a user added and deleted
    before the commit leaves nothing either."""
    app, postreg = make_app()
    postreg.hook(lambda u, c: None, name="crm")
    store = app.extensions["postreg"].store
    store.set_enabled("crm", False)  # `flask postreg disable crm`
    register(app, "ann@example.com")
    with app.app_context():
        gone = Account(email="gone@example.com")
        db.session.add(gone)
        db.session.flush()
        db.session.delete(gone)
        db.session.commit()
    assert postreg.join(10)
    assert sorted(accounts(app)) == ["ann@example.com"]
    assert events(app) == [] and deliveries(app) == []


@both
def test_the_first_registration_of_a_process_applies_the_switches(make_app):
    """A process whose poller has not polled yet (its pool starts with the first
    registration) still honours a hook disabled before it started."""
    app, postreg = make_app()
    on, off = Recorder(), Recorder()
    postreg.hook(on, name="on")
    postreg.hook(off, name="off")
    app.extensions["postreg"].store.set_enabled("off", False)
    register(app, "ann@example.com")
    assert postreg.join(10)
    assert on.emails == ["ann@example.com"] and off.calls == []
    assert hooks_written(app, "ann@example.com") == ["on"]


@both
def test_switches_are_read_on_the_registrations_own_connection(make_app, caplog):
    """Read inside the registration's transaction, on its connection: with a
    static pool a second connection is the same one (closing it rolled the
    user's row back, while its hooks still ran); with a pool of one there is
    no second one (the read waited for the pool's timeout, then failed; here the
    background threads wait for the request's connection instead)."""
    for pool, backend in (
        # One connection shared by every thread: hooks run inline.
        ({"poolclass": sa.pool.StaticPool}, "sync"),
        ({"pool_size": 1, "max_overflow": 0, "pool_timeout": 5}, "thread"),
    ):
        app, postreg = make_app(POSTREG_BACKEND=backend, SQLALCHEMY_ENGINE_OPTIONS=pool)
        on, off = Recorder(), Recorder()
        postreg.hook(on, name="on")
        postreg.hook(off, name="off")
        app.extensions["postreg"].store.set_enabled("off", False)
        with caplog.at_level(logging.ERROR, logger="flask_postreg"):
            register(app, "ann@example.com")
            assert postreg.join(10)
        assert caplog.records == [], pool
        assert on.emails == ["ann@example.com"] and off.calls == [], pool
        assert accounts(app) == {"ann@example.com": "1"}, pool
        assert hooks_written(app, "ann@example.com") == ["on"], pool
        postreg.shutdown(5)
        with app.app_context():
            db.engine.dispose()
            db.drop_all()


def test_a_stale_settings_read_never_lands_after_a_fresher_one(make_app, monkeypatch):
    """The poller read the switches (hook disabled), then ``enable`` ran and its
    refresh saw the hook enabled: the poller's older read must not land last.
    (It did, in CI: a registration right after ``enable`` skipped the hook.)"""
    app, postreg = make_app()
    postreg.hook(lambda u, c: None, name="off")
    state = app.extensions["postreg"]
    store = state.store
    store.set_enabled("off", False)
    read, go = threading.Event(), threading.Event()
    real = store.hook_settings

    def slow_poller_read(connection=None):
        settings = real(connection)
        if threading.current_thread().name == "stale-poller":
            read.set()
            assert go.wait(10)
        return settings

    monkeypatch.setattr(store, "hook_settings", slow_poller_read)
    poller = threading.Thread(target=state.refresh_settings, name="stale-poller")
    poller.start()
    assert read.wait(10)  # it has read "disabled"
    store.set_enabled("off", True)
    fresh = threading.Thread(target=state.refresh_settings)
    fresh.start()
    # Without one refresh at a time the fresh one ends now, before the stale one
    # (with it, it waits for the stale one's lock and this join times out).
    fresh.join(1.0)
    go.set()
    poller.join(10)
    fresh.join(10)
    assert state.settings == {"off": True}


def test_a_switch_applies_even_in_a_dict_at_a_freed_ones_address(make_app):
    """The hooks cache was keyed by id(settings), and CPython often gives a new
    dict the address of one just freed: the fresher switches were then ignored
    until the next change."""
    app, postreg = make_app()
    postreg.hook(lambda u, c: None, name="off")
    state = app.extensions["postreg"]

    def names():
        return [h.name for h in state.hooks()]

    state.settings = {"off": False}
    assert names() == []
    address = id(state.settings)
    state.settings = {}  # the first dict is freed
    for _ in range(10_000):
        fresh = {"off": True}
        if id(fresh) == address:
            break
    assert id(fresh) == address, "no dict came at the freed address"
    state.settings = fresh
    assert names() == ["off"]
