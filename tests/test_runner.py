"""The Runner: ``postreg.run_test()`` runs hooks once, now, and records nothing."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading

import pytest
import sqlalchemy as sa

from flask_postreg import PostRegError
from flask_postreg.events import sample_body

log = logging.getLogger("tests.runner")


def counts(app):
    state = app.extensions["postreg"]
    with state.store.engine.connect() as conn:
        return tuple(
            conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in (state.store.t.events, state.store.t.deliveries)
        )


def test_runs_each_hook_with_the_sample_body_and_writes_nothing(app, postreg):
    seen = []

    @postreg.hook(name="good")
    def good(user, context):
        seen.append((user, context))
        log.info("hello %s", user.username)

    @postreg.hook(name="bad")
    def bad(user, context):
        log.warning("about to fail")
        raise ValueError("boom")

    results = postreg.run_test(app=app)
    assert [r.hook for r in results] == ["good", "bad"]
    ok, failed = results
    assert ok.ok and ok.error is None and ok.duration >= 0
    assert ok.logs == ("INFO tests.runner: hello user1",)
    assert not failed.ok
    assert failed.error_class == "ValueError" and failed.error == "boom"
    assert "Traceback" in failed.traceback and "raise ValueError" in failed.traceback
    assert failed.logs == ("WARNING tests.runner: about to fail",)
    ((user, context),) = seen
    body = sample_body()
    assert user.email == body["user"]["email"]
    assert user.user_metadata == {"hobby": "surfing"}
    assert context.request_language == "en-us"
    assert context.connection.name == "Username-Password-Authentication"
    assert counts(app) == (0, 0)
    assert app.extensions["postreg"].store.recent() == []
    json.dumps([r.to_dict() for r in results])  # JSON-safe


def test_chosen_hooks_and_payloads(app, postreg, recorder):
    postreg.hook(lambda u, c: None, name="other")
    body = {"user": {"email": "ann@example.com", "username": "ann"}, "context": {}}
    results = postreg.run_test(json.dumps(body), ["recorder"], app=app)
    assert [r.hook for r in results] == ["recorder"]
    assert recorder.emails == ["ann@example.com"]
    postreg.run_test(body, hooks=["recorder"], app=app)
    assert recorder.emails == ["ann@example.com"] * 2


def test_unknown_hook_lists_the_valid_names(app, postreg, recorder):
    with pytest.raises(PostRegError, match=r"unknown hook\(s\): nope.*recorder"):
        postreg.run_test(hooks=["nope"], app=app)


@pytest.mark.parametrize(
    "payload, message",
    [("{not json", "not valid JSON"), ("[1]", "JSON object"), ({"x": 1}, "Runner")],
)
def test_bad_payloads_say_what_is_expected(app, postreg, recorder, payload, message):
    with pytest.raises(PostRegError, match=message):
        postreg.run_test(payload, app=app)
    assert recorder.calls == []


def test_a_hanging_hook_times_out(app, postreg):
    release = threading.Event()

    @postreg.hook(name="slow", timeout=0.2)
    def slow(user, context):
        release.wait(10)

    try:
        (result,) = postreg.run_test(app=app)
    finally:
        release.set()
    assert not result.ok and result.error_class == "HookTimeout"


def test_secrets_are_hidden_in_errors_and_logs(make_app):
    app, postreg = make_app(POSTREG_SECRETS={"TOKEN": "s3cr3t-value"})

    @postreg.hook(name="leaky")
    def leaky(user, context):
        log.warning("token %s", context.secrets["TOKEN"])
        raise RuntimeError("bad token " + context.secrets["TOKEN"])

    (result,) = postreg.run_test(app=app)
    assert "s3cr3t-value" not in result.error + result.traceback + "".join(result.logs)


def test_outside_an_app_context_says_what_to_do(postreg):
    with pytest.raises(RuntimeError, match="app_context"):
        postreg.run_test()


def test_one_hook_name_as_text_and_an_unprintable_error(app, postreg, recorder):
    """hooks="recorder" is one name (not r, e, c, ...); a hook error whose
    message cannot be read is reported, not a crash of the Runner."""

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no text")

    def broken(user, context):
        raise Unprintable()

    postreg.hook(broken, name="broken")
    (result,) = postreg.run_test(hooks="recorder", app=app)
    assert result.hook == "recorder" and result.ok
    (failed,) = postreg.run_test(hooks=["broken"], app=app)
    assert not failed.ok and "could not be read" in failed.error


def test_overlapping_runs_capture_their_own_prints_and_give_the_streams_back(
    app, postreg, capsys
):
    """Two Runner calls at once on two threads (a web app's admin page, say):
    each keeps its own hook's print(); another thread's print is not taken;
    and once both ended, stdout is the stream it was, whichever ended first."""
    both_running = threading.Barrier(3, timeout=10)
    ordinary_printed = threading.Event()

    def printing(label):
        def hook(user, context):
            both_running.wait()
            print(f"from {label}")
            assert ordinary_printed.wait(10)

        return hook

    postreg.hook(printing("a"), name="a")
    postreg.hook(printing("b"), name="b")
    before = sys.stdout
    results = {}

    def run(name):
        (results[name],) = postreg.run_test(hooks=[name], app=app)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    both_running.wait()
    print("ordinary line")  # this thread is not a hook's
    ordinary_printed.set()
    for thread in threads:
        thread.join(10)
    assert results["a"].logs == ("from a",) and results["b"].logs == ("from b",)
    assert sys.stdout is before
    done = threading.Thread(target=print, args=("after both",))
    done.start()
    done.join(10)
    assert capsys.readouterr().out == "ordinary line\nafter both\n"


def test_a_hook_printing_past_its_timeout_does_not_break_test_json(app, postreg):
    """The late line goes to stderr; stdout holds the JSON alone."""
    late = threading.Event()
    printed = threading.Event()

    @postreg.hook(name="slow", timeout=0.3)
    def slow(user, context):
        late.wait(10)  # past its timeout: set by the next hook
        print("a late line")
        printed.set()

    @postreg.hook(name="next")
    def next_hook(user, context):
        late.set()
        assert printed.wait(10)

    result = app.test_cli_runner().invoke(args=["postreg", "test", "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert [(r["hook"], r["error_class"]) for r in data["results"]] == [
        ("slow", "HookTimeout"),
        ("next", None),
    ]
    assert "a late line" in result.stderr


def test_many_overlapping_runs_each_keep_exactly_their_own_lines(app, postreg, capsys):
    """Hook threads end and new ones reuse their idents while other runs still
    clean up: a run must not drop another run's route, nor log its lines."""

    @postreg.hook(name="chatty")
    def chatty(user, context):
        for i in range(3):
            print(f"{context.event_id} line {i}")
            log.warning("%s logged", context.event_id)

    failures = []

    def worker():
        for _ in range(40):
            (result,) = postreg.run_test(hooks=["chatty"], app=app)
            ids = {re.search(r"evt_\w+", line).group() for line in result.logs}
            if len(result.logs) != 6 or len(ids) != 1:
                failures.append(result.logs)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert capsys.readouterr().out == ""


def test_a_hung_hooks_secrets_are_hidden_in_what_it_logged(make_app):
    """The hook never returns its Attempt: the texts of a callable
    POSTREG_SECRETS are known from before it ran."""
    app, postreg = make_app(POSTREG_SECRETS=lambda: {"CRM_TOKEN": "tok-vault-7788"})
    release = threading.Event()

    @postreg.hook(name="hangs", timeout=0.3)
    def hangs(user, context):
        log.warning("calling CRM with %s", context.secrets["CRM_TOKEN"])
        print("token", context.secrets["CRM_TOKEN"])
        release.wait(10)

    try:
        (result,) = postreg.run_test(app=app)
    finally:
        release.set()
    assert result.error_class == "HookTimeout"
    assert result.logs == (
        "WARNING tests.runner: calling CRM with [secret]",
        "token [secret]",
    )
