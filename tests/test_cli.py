"""``flask postreg ...`` in-process, with ``app.test_cli_runner()``."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import sys
import threading

import pytest
import sqlalchemy as sa

from flask_postreg import PermanentError
from flask_postreg.store import MemoryStore
from flask_postreg.terminal import parse_when

from .models import Account
from .models import db


def invoke(app, *args, input=None):
    return app.test_cli_runner().invoke(args=["postreg", *args], input=input)


def register(app, postreg, *emails):
    with app.app_context():
        for email in emails:
            db.session.add(Account(email=email))
        db.session.commit()
    assert postreg.join(10)


@pytest.fixture
def failing(postreg):
    @postreg.hook(name="failing", max_attempts=1)
    def failing(user, context):
        raise PermanentError("the CRM said no")

    return failing


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- WHEN ------------------------------------------------------------------


def test_parse_when():
    now = dt.datetime(2024, 5, 10, 12, 0, tzinfo=dt.timezone.utc)
    assert parse_when("2h", now=now) == now - dt.timedelta(hours=2)
    assert parse_when("3d", now=now) == now - dt.timedelta(days=3)
    assert parse_when("30m ago", now=now) == now - dt.timedelta(minutes=30)
    assert parse_when("1w", now=now) == now - dt.timedelta(weeks=1)
    assert parse_when("today", now=now) == dt.datetime(
        2024, 5, 10, tzinfo=dt.timezone.utc
    )
    assert parse_when("2024-05-01") == dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    assert parse_when("2024-05-01T10:00:00+02:00").hour == 10
    assert parse_when("2024-05-01T10:00Z").tzinfo is not None
    with pytest.raises(ValueError, match="ISO date"):
        parse_when("yesterday-ish")
    for huge in ("999999d", "99999999999999999999999h"):
        with pytest.raises(ValueError, match="further back than any date"):
            parse_when(huge, now=now)


def test_a_time_out_of_range_is_a_usage_error(app, postreg):
    result = invoke(app, "deliveries", "--since", "999999d")
    assert result.exit_code == 2, result.output
    assert "further back than any date" in result.output


# -- hooks -----------------------------------------------------------------


def test_hooks_lists_settings_last_outcome_and_counts(app, postreg, recorder, failing):
    register(app, postreg, "ann@example.com")
    result = invoke(app, "hooks")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "HOOK", "SOURCE", "ENABLED", "ATTEMPTS", "TIMEOUT", "LAST", "COUNTS"
    ]  # fmt: skip
    assert lines[1].index("decorator") == lines[0].index("SOURCE")  # aligned
    assert "\x1b[" not in result.output  # no colours off a terminal
    data = json.loads(invoke(app, "hooks", "--json").output)
    by_name = {h["name"]: h for h in data}
    assert by_name["recorder"]["source"] == "decorator"
    assert by_name["recorder"]["enabled"] is True
    assert by_name["recorder"]["max_attempts"] == 8
    assert by_name["recorder"]["timeout"] == 10.0
    assert by_name["recorder"]["counts"] == {"succeeded": 1}
    assert by_name["recorder"]["last"]["status"] == "succeeded"
    assert by_name["failing"]["counts"] == {"dead": 1}
    assert by_name["failing"]["last"]["error_class"] == "PermanentError"


def test_hooks_shows_handlers_and_receivers(make_app):
    from flask_postreg import post_user_registration

    app, _postreg = make_app(POSTREG_CONSOLE=True)

    def on_registered(sender, user, context, **extra):
        pass

    post_user_registration.connect(on_registered, app)
    try:
        data = json.loads(invoke(app, "hooks", "--json").output)
    finally:
        post_user_registration.disconnect(on_registered, app)
    assert {(h["name"], h["source"]) for h in data} == {
        ("console", "handler"),
        ("signal:tests.test_cli:test_hooks_shows_handlers_and_receivers.<locals>.on_registered", "receiver"),
    }  # fmt: skip


def test_hooks_without_any(app, postreg):
    result = invoke(app, "hooks")
    assert result.exit_code == 0 and "No hooks" in result.output


# -- test (the Runner) ---------------------------------------------------------


def test_test_runs_every_hook_and_fails_with_status_1(app, postreg, recorder, failing):
    result = invoke(app, "test")
    assert result.exit_code == 1, result.output
    assert "ok    recorder" in result.output
    assert "FAIL  failing" in result.output
    assert "PermanentError: the CRM said no" in result.output
    assert "Traceback" in result.output
    assert "1 ok, 1 failed" in result.output
    assert recorder.emails == ["user1@foo.com"]


def test_test_chosen_hook_json_and_payload_file(
    app, postreg, recorder, failing, tmp_path
):
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"user": {"email": "ann@example.com"}, "context": {}}))
    result = invoke(app, "test", "recorder", "--payload", str(body), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True
    assert [r["hook"] for r in data["results"]] == ["recorder"]
    assert set(data["results"][0]) >= {"hook", "ok", "duration", "error", "logs"}
    assert recorder.emails == ["ann@example.com"]
    stdin = json.dumps({"user": {"email": "bob@example.com"}})
    result = invoke(app, "test", "recorder", "--payload", "-", input=stdin)
    assert result.exit_code == 0, result.output
    assert recorder.emails[-1] == "bob@example.com"
    data = json.loads(invoke(app, "test", "failing", "--json").output)
    assert data["ok"] is False and data["results"][0]["error_class"] == "PermanentError"


def test_test_runs_disabled_hooks_too_and_says_so(app, postreg, recorder):
    """The Runner is for trying a hook before turning it on."""
    ran = []
    postreg.hook(lambda u, c: ran.append(u.email), name="off", enabled=False)
    result = invoke(app, "test")
    assert result.exit_code == 0, result.output
    assert "(disabled)" in next(ln for ln in result.output.splitlines() if "off" in ln)
    assert ran == ["user1@foo.com"] and recorder.emails == ["user1@foo.com"]
    data = json.loads(invoke(app, "test", "off", "--json").output)
    assert [(r["hook"], r["ok"], r["enabled"]) for r in data["results"]] == [
        ("off", True, False)
    ]
    # Registrations still skip it.
    register(app, postreg, "ann@example.com")
    assert ran == ["user1@foo.com", "user1@foo.com"]


def test_test_keeps_what_a_hook_prints_out_of_the_json(app, postreg):
    """The README's quick-start hook print()s: its lines are the hook's logs
    (like Auth0's console.log in its Runner), not text in the JSON stream."""

    @postreg.hook(name="printer")
    def printer(user, context):
        print("New user:", user.email, "language:", context.request_language)
        print("no newline at the end", end="")
        sys.stderr.write("to stderr\n")

    result = invoke(app, "test", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # A line left without its newline is kept, last.
    assert data["results"][0]["logs"] == [
        "New user: user1@foo.com language: en-us",
        "to stderr",
        "no newline at the end",
    ]
    result = invoke(app, "test")
    assert "      | New user: user1@foo.com language: en-us" in result.output
    # The streams are given back: this print() reaches pytest's capture.
    print("after the Runner")
    assert type(sys.stdout).__name__ != "_Printed"


def test_test_errors(app, postreg, recorder):
    result = invoke(app, "test", "nope")
    assert result.exit_code == 1
    assert "unknown hook(s): nope" in result.output and "recorder" in result.output
    result = invoke(app, "test", "--payload", "-", input="{oops")
    assert result.exit_code == 1 and "not valid JSON" in result.output
    result = invoke(app, "test", "--payload", "/no/such/file.json")
    assert result.exit_code == 2


# -- deliveries ----------------------------------------------------------------


def test_deliveries_filters_and_json(app, postreg, recorder, failing):
    register(app, postreg, "ann@example.com", "bob@example.com")
    result = invoke(app, "deliveries")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].split()[:3] == ["ID", "HOOK", "STATUS"]
    assert result.output.count("evt_") == 4
    assert "PermanentError: the CRM said no" in result.output
    dead = json.loads(invoke(app, "deliveries", "--status", "dead", "--json").output)
    assert [d["hook"] for d in dead] == ["failing", "failing"]
    assert dead[0]["error"] == "the CRM said no" and dead[0]["attempts"] == 1
    by_hook = json.loads(
        invoke(app, "deliveries", "--hook", "recorder", "--json").output
    )
    assert {d["status"] for d in by_hook} == {"succeeded"}
    assert (
        len(json.loads(invoke(app, "deliveries", "--limit", "1", "--json").output)) == 1
    )
    assert (
        len(json.loads(invoke(app, "deliveries", "--since", "1h", "--json").output))
        == 4
    )
    future = json.loads(
        invoke(app, "deliveries", "--since", "2999-01-01", "--json").output
    )
    assert future == []
    assert "No deliveries" in invoke(app, "deliveries", "--since", "2999-01-01").output


def test_deliveries_bad_options(app, postreg):
    result = invoke(app, "deliveries", "--since", "last tuesday")
    assert result.exit_code == 2 and "ISO date" in result.output
    result = invoke(app, "deliveries", "--status", "lost")
    assert result.exit_code == 2


# -- retry -----------------------------------------------------------------------


def test_retry_ids_and_dead(app, postreg, recorder, failing):
    register(app, postreg, "ann@example.com", "bob@example.com")
    store = app.extensions["postreg"].store
    dead = store.deliveries(status="dead")
    result = invoke(app, "retry", dead[0].id)
    assert result.exit_code == 0, result.output
    assert "1 of 1" in result.output
    assert {d.id for d in store.deliveries(status="pending")} == {dead[0].id}
    data = json.loads(
        invoke(app, "retry", "--dead", "--hook", "failing", "--json").output
    )
    assert data == {"retried": 1}
    assert store.deliveries(status="dead") == []
    result = invoke(app, "retry", "dlv_nope")
    assert result.exit_code == 1 and "matched no dead or pending" in result.output
    assert invoke(app, "retry").exit_code == 2
    assert invoke(app, "retry", "x", "--dead").exit_code == 2
    assert invoke(app, "retry", "x", "--hook", "h").exit_code == 2


def test_retry_runs_only_hooks_the_app_has(app, postreg, recorder, failing):
    """Rows of a hook the app does not have would go pending and never run: a
    typo or a removed hook is an error, and ``--dead`` leaves their rows."""
    register(app, postreg, "ann@example.com")
    store = app.extensions["postreg"].store
    (dead,) = store.deliveries(status="dead")
    with store.engine.begin() as conn:  # a hook removed from the code since
        d = store.t.deliveries
        conn.execute(
            sa.insert(d).from_select(
                [c.name for c in d.columns],
                sa.select(
                    *[sa.literal("removed") if c.name == "hook" else c for c in d.c]
                ).where(d.c.hook == "failing"),
            )
        )
    result = invoke(app, "retry", "--dead", "--hook", "failnig")
    assert result.exit_code == 1 and "unknown hook 'failnig'" in result.output
    result = invoke(app, "retry", f"{dead.event_id}:removed")
    assert result.exit_code == 1 and "unknown hook(s) 'removed'" in result.output
    result = invoke(app, "retry", f"{dead.event_id}:signal:gone:hook")
    assert "unknown hook(s) 'signal:gone:hook'" in result.output  # ':' in names
    result = invoke(app, "retry", "--dead")
    assert result.exit_code == 0, result.output
    assert "1 dead delivery(ies) sent back to pending." in result.output
    assert "no longer has were left as they are: removed." in result.output
    assert [d.status for d in store.deliveries(hook="removed")] == ["dead"]


def test_retry_takes_a_hook_name_with_colons(app, postreg):
    """A delivery id is ``event_id:hook`` and hook names may hold ``:``
    (``crm:sync``, a receiver's ``signal:module:name``)."""

    @postreg.hook(name="crm:sync", max_attempts=1)
    def sync(user, context):
        raise PermanentError("down")

    register(app, postreg, "ann@example.com")
    (dead,) = app.extensions["postreg"].store.deliveries(status="dead")
    assert dead.id.endswith(":crm:sync")
    result = invoke(app, "retry", dead.id)
    assert result.exit_code == 0 and "1 of 1" in result.output, result.output


def test_a_negative_limit_is_an_error_in_every_store(app, postreg):
    with pytest.raises(ValueError, match="limit must be 0 or more"):
        app.extensions["postreg"].store.deliveries(limit=-1)
    with pytest.raises(ValueError, match="limit must be 0 or more"):
        MemoryStore().deliveries(limit=-1)


def test_retry_gives_a_dead_delivery_a_fresh_attempt_budget(make_app):
    """POSTREG_MAX_ATTEMPTS (the app's default) makes it dead after 2 attempts;
    ``retry`` gives it 2 more, run by the poller, not 0 (attempts restart)."""
    app, postreg = make_app(POSTREG_MAX_ATTEMPTS=2, POSTREG_POLL_INTERVAL=0.05)
    calls = []
    fourth = threading.Event()

    @postreg.hook(name="flaky")
    def flaky(user, context):
        calls.append(context.attempt)
        if len(calls) == 4:
            fourth.set()
        raise RuntimeError("still down")

    register(app, postreg, "ann@example.com")
    store = app.extensions["postreg"].store
    (dead,) = store.deliveries(status="dead")
    assert (dead.attempts, calls) == (2, [1, 2])
    assert invoke(app, "retry", dead.id).exit_code == 0
    postreg.start(app)  # the poller claims the retried row
    assert fourth.wait(10)
    assert postreg.join(10)
    (again,) = store.deliveries(status="dead")
    assert (again.id, again.attempts, calls) == (dead.id, 2, [1, 2, 1, 2])


def test_commands_that_need_the_database_store(make_app):
    app, postreg = make_app(POSTREG_STORE="memory")
    postreg.hook(lambda u, c: None, name="h")
    for args in (["retry", "--dead"], ["disable", "h"], ["prune"], ["worker"]):
        result = invoke(app, *args)
        assert result.exit_code == 1, (args, result.output)
        assert "database store" in result.output, args
    result = invoke(app, "replay", "--since", "1d")
    assert result.exit_code == 1 and "database store" in result.output


# -- enable / disable --------------------------------------------------------------


def test_disable_and_enable(make_app):
    app, postreg = make_app(POSTREG_POLL_INTERVAL=0.05)
    from .conftest import Recorder

    on, off = Recorder(), Recorder()
    postreg.hook(on, name="on")
    postreg.hook(off, name="off")
    result = invoke(app, "disable", "off")
    assert result.exit_code == 0, result.output
    assert "disabled" in result.output
    state = app.extensions["postreg"]
    assert state.store.hook_settings() == {"off": False}
    # Another process (the same app here) applies it at its next refresh.
    state.settings = {}
    state.refresh_settings()
    register(app, postreg, "ann@example.com")
    assert on.emails == ["ann@example.com"] and off.calls == []
    assert {d.hook for d in state.store.deliveries()} == {"on"}
    hooks = {h["name"]: h for h in json.loads(invoke(app, "hooks", "--json").output)}
    assert hooks["off"]["enabled"] is False
    assert invoke(app, "enable", "off").exit_code == 0
    state.refresh_settings()
    register(app, postreg, "bob@example.com")
    assert off.emails == ["bob@example.com"]
    result = invoke(app, "disable", "nope")
    assert result.exit_code == 1
    assert "unknown hook 'nope'" in result.output and "off, on" in result.output


# -- prune --------------------------------------------------------------------------


def test_prune(app, postreg, recorder, failing):
    register(app, postreg, "ann@example.com")
    result = invoke(app, "prune")
    assert result.exit_code == 0 and "0 succeeded" in result.output
    data = json.loads(invoke(app, "prune", "--older-than", "0", "--json").output)
    assert data == {"pruned": 1, "older_than_days": 0.0}
    store = app.extensions["postreg"].store
    assert [d.status for d in store.deliveries()] == ["dead"]  # dead ones are kept
    assert invoke(app, "prune", "--older-than", "-1").exit_code == 2


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "--older-than", "nan"],
        ["prune", "--older-than", "inf"],
        ["prune", "--older-than", "1e300"],
        ["worker", "--shutdown-timeout", "inf"],
        ["deliveries", "--limit", "99999999999999999999"],
        ["replay", "--since", "1d", "--dry-run", "--batch-size", "9" * 20],
        ["replay", "--since", "1d", "--dry-run", "--run-id", "r" * 65],
        ["replay", "--since", "0001-01-01T00:00+01:00", "--dry-run"],
    ],
)
def test_out_of_range_options_are_usage_errors(app, postreg, args):
    """nan and inf pass a ``min=0`` range check; huge numbers passed to the
    database, the clock or a column that is too narrow: each was a traceback."""
    result = invoke(app, *args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)


def test_a_database_error_is_a_message_not_a_traceback(app, postreg, recorder):
    with app.app_context():
        db.session.execute(sa.text("DROP TABLE postreg_hook_settings"))
        db.session.commit()
    result = invoke(app, "disable", "recorder")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "the database failed: OperationalError" in result.output
    assert "postreg_hook_settings" in result.output  # the driver's own first line


def test_retry_counts_an_id_given_twice_once(app, postreg, recorder, failing):
    register(app, postreg, "ann@example.com")
    store = app.extensions["postreg"].store
    (dead,) = store.deliveries(status="dead")
    result = invoke(app, "retry", dead.id, dead.id)
    assert result.exit_code == 0, result.output
    assert "1 of 1 delivery(ies)" in result.output
    assert store.retry([dead.id, dead.id]) == 1  # pending: retried again, once


def test_test_payload_not_utf8_or_nested_too_deep(app, postreg, recorder, tmp_path):
    for name, body in (("binary", b"\xff\xfe{}"), ("deep", b"[" * 100_000)):
        path = tmp_path / f"{name}.json"
        path.write_bytes(body)
        result = invoke(app, "test", "recorder", "--payload", str(path))
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
        assert "the payload is not valid JSON" in result.output


# -- check ----------------------------------------------------------------------------


def test_check_ok(app, postreg, recorder):
    result = invoke(app, "check")
    assert result.exit_code == 0, result.output
    assert "tables" in result.output and "recorder" in result.output
    data = json.loads(invoke(app, "check", "--json").output)
    assert data["ok"] is True and data["exit"] == 0
    assert {c["kind"] for c in data["checks"]} == {"config", "store", "hooks"}


@pytest.mark.parametrize(
    "db_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
def test_check_hides_a_password_given_in_the_url_query(make_app, db_url, caplog):
    """libpq takes ``?password=`` as well as ``user:password@``: the URL shown by
    ``check`` and in the missing-tables error hides both."""
    sep = "&" if "?" in db_url else "?"
    app, postreg = make_app(url=f"{db_url}{sep}password=S3cretPW")
    postreg.hook(lambda u, c: None, name="h")
    result = invoke(app, "check")
    assert result.exit_code == 0, result.output
    assert "password=***" in result.output
    later, _ = make_app(url=f"{db_url}{sep}password=S3cretPW")
    with later.app_context():  # before its first registration checks the tables
        db.session.execute(sa.text("DROP TABLE postreg_deliveries"))
        db.session.commit()
    with caplog.at_level(logging.ERROR, logger="flask_postreg"), later.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
    assert "postreg_deliveries missing" in caplog.text
    assert "S3cretPW" not in result.output + caplog.text


def test_check_missing_tables_exit_1(app, postreg, recorder):
    with app.app_context():
        db.session.execute(sa.text("DROP TABLE postreg_hook_settings"))
        db.session.commit()
    result = invoke(app, "check")
    assert result.exit_code == 1
    assert "FAIL" in result.output and "postreg_hook_settings" in result.output
    assert "db.create_all()" in result.output


def test_check_tables_of_an_older_layout_exit_1(app, postreg, recorder):
    deliveries = app.extensions["postreg"].store.t.deliveries
    older = sa.Table(  # the same without the error column
        deliveries.name,
        sa.MetaData(),
        *(
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in deliveries.columns
            if c.name != "error"
        ),
    )
    with app.app_context():
        deliveries.drop(db.engine)
        older.create(db.engine)
    result = invoke(app, "check")
    assert result.exit_code == 1
    assert "postreg_deliveries (no column error)" in result.output
    assert "flask db upgrade" in result.output


def test_check_warns_of_an_index_of_an_earlier_layout(app, postreg, recorder):
    """The replay index as an earlier version made it (not unique, one column):
    the tables work, so no failure, but the warning says what to recreate."""
    with app.app_context():
        db.session.execute(sa.text("DROP INDEX ix_postreg_events_run_id"))
        db.session.execute(
            sa.text("CREATE INDEX ix_postreg_events_run_id ON postreg_events (run_id)")
        )
        db.session.commit()
    result = invoke(app, "check")
    assert result.exit_code == 0, result.output
    assert "ix_postreg_events_run_id is not unique (run_id, user_id)" in result.output
    data = json.loads(invoke(app, "check", "--json").output)
    (warned,) = [c for c in data["checks"] if c["name"] == "indexes"]
    assert warned["warning"] is True and "Recreate" in warned["detail"]
    with app.app_context():
        db.session.execute(sa.text("DROP INDEX ix_postreg_events_run_id"))
        db.session.commit()
    assert "ix_postreg_events_run_id is missing" in invoke(app, "check").output


def test_check_warns_of_an_index_that_is_no_longer_partial(app, postreg, recorder):
    """The poller's index as an earlier version made it: the same columns, but
    over every delivery instead of those in flight."""
    with app.app_context():
        db.session.execute(sa.text("DROP INDEX ix_postreg_deliveries_due"))
        db.session.execute(
            sa.text(
                "CREATE INDEX ix_postreg_deliveries_due"
                " ON postreg_deliveries (status, next_attempt_at)"
            )
        )
        db.session.commit()
    result = invoke(app, "check")
    assert result.exit_code == 0, result.output
    assert "ix_postreg_deliveries_due is not partial (WHERE status IN" in result.output


def test_check_ping_exit_2_when_an_endpoint_is_down(make_app):
    port = closed_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        up = listener.getsockname()[1]
        app, _postreg = make_app(
            POSTREG_WEBHOOKS=[
                {"name": "up", "url": f"http://127.0.0.1:{up}/hook", "secret": "whsec_" + "A" * 32},
                {"name": "down", "url": f"http://127.0.0.1:{port}/hook", "secret": "whsec_" + "A" * 32},
            ],
            POSTREG_MAIL_NOTIFY=["ops@example.com"],
            POSTREG_MAIL_SENDER="noreply@example.com",
            POSTREG_MAIL_SERVER="127.0.0.1",
            POSTREG_MAIL_PORT=up,
        )  # fmt: skip
        assert invoke(app, "check").exit_code == 0
        result = invoke(app, "check", "--ping")
        data = json.loads(invoke(app, "check", "--ping", "--json").output)
    assert result.exit_code == 2, result.output
    pings = {c["name"]: c for c in data["checks"] if c["kind"] == "ping"}
    assert pings["webhook:up"]["ok"] and pings["mail"]["ok"]
    assert not pings["webhook:down"]["ok"]
    assert "/hook" not in result.output  # host:port only, never the URL
    assert data["exit"] == 2


def test_check_ping_slack_webhook_and_token_modes(make_app):
    """Slack's host is pinged in both modes, and neither the webhook URL (its
    path is the secret) nor the token is printed."""
    hook_path = "/services/T0000/B0000/XXXXsecretXXXX"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        up = listener.getsockname()[1]
        app, _postreg = make_app(
            POSTREG_SLACK_WEBHOOK_URL=f"http://127.0.0.1:{up}{hook_path}"
        )
        result = invoke(app, "check", "--ping")
    assert result.exit_code == 0, result.output
    assert f"127.0.0.1:{up} reachable" in result.output
    assert "XXXXsecret" not in result.output

    down = closed_port()
    app, _postreg = make_app(
        POSTREG_SLACK_TOKEN="xoxb-not-a-real-token",
        POSTREG_SLACK_CHANNEL="#signups",
        POSTREG_SLACK_BASE_URL=f"http://127.0.0.1:{down}/api/",
    )
    result = invoke(app, "check", "--ping", "--json")
    assert result.exit_code == 2, result.output
    pings = [c for c in json.loads(result.output)["checks"] if c["kind"] == "ping"]
    assert [(c["name"], c["ok"]) for c in pings] == [("slack", False)]
    assert f"127.0.0.1:{down} unreachable" in pings[0]["detail"]
    assert "xoxb" not in result.output


def test_check_warns_of_an_smtp_login_in_clear(make_app):
    mail = {
        "POSTREG_MAIL_NOTIFY": ["ops@example.com"],
        "POSTREG_MAIL_SENDER": "noreply@example.com",
        "POSTREG_MAIL_SERVER": "smtp.example.com",
        "POSTREG_MAIL_USERNAME": "mailer",
        "POSTREG_MAIL_PASSWORD": "pa55-w0rd",
    }
    app, _postreg = make_app(**mail)
    result = invoke(app, "check")
    assert result.exit_code == 0, result.output
    assert "sent unencrypted" in result.output and "MAIL_USE_TLS" in result.output
    assert "pa55-w0rd" not in result.output
    app, _postreg = make_app(**mail, POSTREG_MAIL_USE_TLS=True)
    assert "unencrypted" not in invoke(app, "check").output


# -- replay (errors; the backfill itself is in test_cli_replay.py) -----------------


def test_replay_needs_a_creation_time_column(app, postreg, recorder):
    result = invoke(app, "replay", "--since", "1d")
    assert result.exit_code == 1
    assert "created_at" in result.output and "emit" in result.output
    assert invoke(app, "replay").exit_code == 2  # --since is required
