"""The Slack handler against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any

import pytest

from flask_postreg import ConfigError
from flask_postreg import Context
from flask_postreg import RetryLater
from flask_postreg import User
from flask_postreg.handlers import slack
from flask_postreg.handlers import slack_message
from flask_postreg.handlers import slack_ratelimit
from flask_postreg.handlers._http import DeadlineExceeded
from tests.servers import RecordingServer
from tests.servers import Reply
from tests.servers import fixture_app_factory  # noqa: F401
from tests.servers import fixture_http_server  # noqa: F401

SECRET_PATH = "/services/T0000/B0000/sEcReTtOkEn123"
HOSTILE = ["<!channel>", "<https://evil.test|click>", "Tom & Jerry <tj@evil.test>"]


def slack_app(app_factory: Any, server: RecordingServer, **config: Any) -> Any:
    settings = {
        "POSTREG_SLACK_WEBHOOK_URL": server.url(SECRET_PATH),
        "POSTREG_SLACK_SUPPRESS": False,
        "POSTREG_SLACK_MIN_INTERVAL": 0,
        **config,
    }
    return app_factory(**settings)


def mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    texts = [message["text"]]
    for block in message["blocks"]:
        text = block.get("text")
        if text and text["type"] == "mrkdwn":
            texts.append(text["text"])
    return texts


# -- the message ------------------------------------------------------------------


def test_default_message_is_the_reference_example() -> None:
    user = User(id="7", name="Ada Lovelace", email="ada@example.com", username="ada")
    message = slack_message.build_message(user, Context(event_id="evt_1"))
    assert message["text"] == "New User: Ada Lovelace (ada@example.com)"
    section, context = message["blocks"]
    assert section == {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "New User: Ada Lovelace (ada@example.com)"},
    }
    assert context["elements"][0]["type"] == "plain_text"
    assert "ada" in context["elements"][0]["text"]


def test_without_a_name_the_email_is_shown() -> None:
    message = slack_message.build_message(User(email="bob@example.com"), Context())
    assert message["text"] == "New User: bob@example.com (bob@example.com)"


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_escaped_in_mrkdwn(name: str) -> None:
    user = User(name=name, username=name, email="eve@example.com")
    message = slack_message.build_message(user, Context())
    escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    assert message["text"] == f"New User: {escaped} (eve@example.com)"
    for text in mrkdwn_texts(message):
        assert "<" not in text and ">" not in text
        assert "&amp;lt;" not in text  # escaped once, in the right order
    plain = message["blocks"][1]["elements"][0]
    assert plain["type"] == "plain_text"
    assert name in plain["text"]  # plain_text is never parsed: shown as typed


def test_escape_order() -> None:
    assert slack_message.escape("<&>") == "&lt;&amp;&gt;"


def test_template_string_and_callable() -> None:
    user = User(name="<b>", email="b@example.com", username="bee")
    text = slack_message.build_message(user, Context(), "Hello {name} / {username}")[
        "text"
    ]
    assert text == "Hello &lt;b&gt; / bee"

    blocks = [{"type": "section", "text": {"type": "plain_text", "text": "hi"}}]
    message = slack_message.build_message(user, Context(), lambda u, c: blocks)
    assert message["blocks"] == blocks
    assert message["text"].startswith("New User: &lt;b&gt;")
    message = slack_message.build_message(
        user, Context(), lambda u, c: f"*{u.username}*"
    )
    assert message["text"] == "*bee*"


def test_long_values_are_cut_to_slack_limits() -> None:
    user = User(name="&" * 100_000, username="u" * 1000, email="e@example.com")
    message = slack_message.build_message(user, Context(), "{name}" * 200)
    assert len(message["text"]) <= slack_message.TEXT_LIMIT
    assert len(message["blocks"][0]["text"]["text"]) <= slack_message.SECTION_LIMIT
    assert (
        len(message["blocks"][1]["elements"][0]["text"])
        <= slack_message.PLAIN_TEXT_LIMIT
    )
    assert not message["text"].rstrip("…").endswith(("&", "&a", "&am", "&amp"))


def test_bad_template_fails_at_init_app(app_factory: Any) -> None:
    with pytest.raises(ConfigError, match="POSTREG_SLACK_TEMPLATE"):
        app_factory(
            POSTREG_SLACK_WEBHOOK_URL="https://hooks.slack.com/services/X",
            POSTREG_SLACK_TEMPLATE="{nope}",
        )


# -- delivery ---------------------------------------------------------------------


def test_webhook_delivery(app_factory: Any, http_server: RecordingServer) -> None:
    a = slack_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com", name="<!channel>")
    assert a.postreg.join(10)
    [req] = http_server.requests
    assert req.method == "POST" and req.path == SECRET_PATH
    body = json.loads(req.body)
    assert body["text"] == "New User: &lt;!channel&gt; (ada@example.com)"
    assert body["blocks"][0]["text"]["text"] == body["text"]
    [outcome] = a.outcomes()
    assert outcome.hook == "slack" and outcome.status == "succeeded"


def test_404_no_service_is_dead_at_once(
    app_factory: Any, http_server: RecordingServer
) -> None:
    http_server.default = Reply(404, b"no_service")
    a = slack_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    assert len(http_server.requests) == 1
    [outcome] = a.outcomes()
    assert outcome.status == "dead" and outcome.attempt == 1
    assert outcome.error_class == "PermanentError"
    assert "404" in outcome.error and "no_service" in outcome.error
    assert SECRET_PATH not in outcome.error


@pytest.mark.parametrize(
    "first", [Reply(429, b"rate_limited", {"Retry-After": "1"}), Reply(500, b"oops")]
)
def test_429_and_500_are_retried(
    app_factory: Any, http_server: RecordingServer, first: Reply
) -> None:
    http_server.script(first)
    a = slack_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    assert len(http_server.requests) == 2
    outcomes = sorted(a.outcomes(), key=lambda o: o.attempt)
    assert [o.status for o in outcomes] == ["pending", "succeeded"]
    assert outcomes[0].error_class == "RetryLater"
    assert str(first.status) in outcomes[0].error


def test_retry_after_is_read_without_sleeping(http_server: RecordingServer) -> None:
    http_server.script(Reply(429, b"rate_limited", {"Retry-After": "30"}))
    notifier = slack.SlackNotifier(http_server.url(SECRET_PATH), min_interval=0)
    start = time.monotonic()
    with pytest.raises(RetryLater) as info:
        notifier(User(email="a@example.com"), Context())
    assert info.value.retry_after == 30
    # slack-sdk's own 429 handler would have slept the 30 s first.
    assert time.monotonic() - start < 25


def test_redirect_is_not_followed(
    app_factory: Any, http_server: RecordingServer
) -> None:
    http_server.script(Reply(302, b"", {"Location": http_server.url("/elsewhere")}))
    a = slack_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    assert [r.path for r in http_server.requests] == [SECRET_PATH]
    [outcome] = a.outcomes()
    assert outcome.status == "dead"
    assert "redirects are not followed" in outcome.error


def test_slow_server_hits_the_deadline(http_server: RecordingServer) -> None:
    # One byte every 0.2s for 100 bytes: no single read ever times out.
    http_server.script(Reply(200, b"x" * 100, drip=0.2))
    notifier = slack.SlackNotifier(
        http_server.url(SECRET_PATH), timeout=1.0, min_interval=0
    )
    # Without the deadline the whole body (20 s of drip) would arrive: no error.
    with pytest.raises(DeadlineExceeded, match="deadline"):
        notifier(User(email="a@example.com"), Context())


def test_slow_server_attempt_is_retried(
    app_factory: Any, http_server: RecordingServer
) -> None:
    http_server.script(Reply(200, b"x" * 100, drip=0.2))
    a = slack_app(app_factory, http_server, POSTREG_SLACK_TIMEOUT=1.0)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(15)
    outcomes = sorted(a.outcomes(), key=lambda o: o.attempt)
    assert [o.status for o in outcomes] == ["pending", "succeeded"]
    assert outcomes[0].error_class == "DeadlineExceeded"


def test_secrets_never_logged_nor_stored(
    app_factory: Any, http_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http_server.script(Reply(500, b"oops"), Reply(404, b"no_service"))
    a = slack_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com", name="Ada Privateperson")
    assert a.postreg.join(10)
    assert "Sending a request" in caplog.text  # slack-sdk's DEBUG line did run
    for record in caplog.records:
        assert "sEcReTtOkEn123" not in record.getMessage()
    assert "sEcReTtOkEn123" not in caplog.text
    assert "ada@example.com" not in caplog.text
    assert "Privateperson" not in caplog.text  # the message body is left out
    for outcome in a.outcomes():
        assert "sEcReTtOkEn123" not in (outcome.error or "")
    assert "sEcReTtOkEn123" not in repr(a.hooks())


# -- token mode -------------------------------------------------------------------


def token_app(app_factory: Any, server: RecordingServer) -> Any:
    return app_factory(
        POSTREG_SLACK_TOKEN="xoxb-0000-sEcReT",
        POSTREG_SLACK_CHANNEL="#signups",
        POSTREG_SLACK_BASE_URL=server.url("/api/"),
        POSTREG_SLACK_SUPPRESS=False,
        POSTREG_SLACK_MIN_INTERVAL=0,
    )


def test_token_mode_posts_to_chat_post_message(
    app_factory: Any, http_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http_server.default = Reply(
        200, b'{"ok": true}', {"Content-Type": "application/json"}
    )
    a = token_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com", name="Ada")
    assert a.postreg.join(10)
    [req] = http_server.requests
    assert req.path == "/api/chat.postMessage"
    assert req.headers["Authorization"] == "Bearer xoxb-0000-sEcReT"
    body = json.loads(req.body)
    assert body["channel"] == "#signups"
    assert body["text"] == "New User: Ada (ada@example.com)"
    assert a.outcomes()[0].status == "succeeded"
    assert "xoxb-0000-sEcReT" not in caplog.text
    assert "Sending a request" in caplog.text and "Ada" not in caplog.text


@pytest.mark.parametrize(
    ("reply", "status", "error_class"),
    [
        (Reply(200, b'{"ok": false, "error": "channel_not_found"}'), "dead", "PermanentError"),
        (Reply(429, b'{"ok": false, "error": "ratelimited"}', {"Retry-After": "1"}), "pending", "RetryLater"),
        (Reply(500, b"oops"), "pending", "RetryLater"),
    ],
)  # fmt: skip
def test_token_mode_errors(
    app_factory: Any,
    http_server: RecordingServer,
    reply: Reply,
    status: str,
    error_class: str,
) -> None:
    http_server.script(reply)
    http_server.default = Reply(
        200, b'{"ok": true}', {"Content-Type": "application/json"}
    )
    a = token_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    first = min(a.outcomes(), key=lambda o: o.attempt)
    assert (first.status, first.error_class) == (status, error_class)
    assert "sEcReT" not in (first.error or "")


# -- suppress and the rate limit --------------------------------------------------


def test_suppressed_when_testing(
    app_factory: Any, http_server: RecordingServer
) -> None:
    a = app_factory(
        TESTING=True, POSTREG_SLACK_WEBHOOK_URL=http_server.url(SECRET_PATH)
    )
    with slack.record_messages() as outbox:
        a.register(username="ada", email="ada@example.com", name="Ada")
        assert a.postreg.join(10)
    assert http_server.requests == []
    assert [m["text"] for m in outbox] == ["New User: Ada (ada@example.com)"]
    assert a.hooks()["slack"].func.sent == outbox


def test_rate_limiter_spaces_a_burst_with_an_injected_clock() -> None:
    now = [100.0]
    slept: list[float] = []
    limiter = slack_ratelimit.RateLimiter(
        1.0, max_wait=2.5, clock=lambda: now[0], sleep=slept.append
    )
    # Three callers arrive at once (the clock does not move between them).
    assert [limiter.acquire() for _ in range(3)] == [0.0, 1.0, 2.0]
    assert slept == [1.0, 2.0]
    with pytest.raises(RetryLater) as info:
        limiter.acquire()  # the 4th slot is 3s away: past max_wait
    assert info.value.retry_after == pytest.approx(3.0)
    now[0] += 10
    assert limiter.acquire() == 0.0
    limiter.defer(4.0)  # a 429 holds every sender back
    with pytest.raises(RetryLater):
        limiter.acquire()


def test_a_429_pause_within_max_wait_is_waited_then_retried_past_it() -> None:
    """A short pause a 429 asked for is waited out in the worker (bounded by
    max_wait); a longer one goes through a retry, never a long sleep."""
    now = [100.0]
    slept: list[float] = []
    limiter = slack_ratelimit.RateLimiter(
        1.0, max_wait=5.0, clock=lambda: now[0], sleep=slept.append
    )
    assert limiter.acquire() == 0.0
    limiter.defer(3.0)
    assert limiter.acquire() == pytest.approx(3.0)
    assert slept == [pytest.approx(3.0)]
    limiter.defer(30.0)
    with pytest.raises(RetryLater) as info:
        limiter.acquire()
    assert info.value.retry_after == pytest.approx(30.0)
    assert len(slept) == 1


def test_apps_sharing_a_destination_get_the_longest_interval() -> None:
    url = "https://hooks.slack.com/services/T0/B0/shared-by-two-apps"
    first = slack.SlackNotifier(url, min_interval=0.0, max_wait=5.0)
    second = slack.SlackNotifier(url, min_interval=1.0, max_wait=2.0)
    assert first.limiter is second.limiter
    # The stricter of each: the destination's pace, and the wait in a worker
    # that each app's hook timeout was sized for.
    assert (first.limiter.interval, first.limiter.max_wait) == (1.0, 2.0)


def test_rate_limit_spaces_real_messages(
    app_factory: Any, http_server: RecordingServer
) -> None:
    a = slack_app(app_factory, http_server, POSTREG_SLACK_MIN_INTERVAL=0.3)
    for i in range(3):
        a.register(username=f"u{i}", email=f"u{i}@example.com")
    assert a.postreg.join(15)
    times = sorted(r.at for r in http_server.requests)
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0.3 - 0.1 for gap in gaps), gaps
    assert all(o.status == "succeeded" for o in a.outcomes())


def test_repr_and_errors_name_no_secret() -> None:
    with pytest.raises(ValueError, match="either webhook_url"):
        slack.SlackNotifier()
    notifier = slack.SlackNotifier("https://hooks.slack.com/services/T/B/sEcReT")
    assert "sEcReT" not in repr(notifier)
