"""Signed webhooks against a real HTTP receiver that verifies every request."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import socket
import threading
import time
from typing import Any

import pytest
from standardwebhooks import Webhook

from flask_postreg import ConfigError
from flask_postreg import Context
from flask_postreg import User
from flask_postreg.handlers import _http
from flask_postreg.handlers._http import DeadlineExceeded
from flask_postreg.handlers.webhook import WebhookSender
from tests.servers import RecordingServer
from tests.servers import Reply
from tests.servers import fixture_app_factory  # noqa: F401
from tests.servers import fixture_http_server  # noqa: F401

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def verified(server: RecordingServer) -> list[dict[str, Any]]:
    """Verify every recorded request as a receiver would; return the bodies."""
    wh = Webhook(SECRET)
    return [wh.verify(r.body, r.headers) for r in server.requests]


def hook_app(app_factory: Any, server: RecordingServer, **config: Any) -> Any:
    return app_factory(
        POSTREG_WEBHOOKS=[
            {
                "name": "crm",
                "url": server.url("/hooks/crm?token=t0k3n"),
                "secret": SECRET,
            }
        ],
        **config,
    )


def test_signed_auth0_shaped_body(
    app_factory: Any, http_server: RecordingServer
) -> None:
    a = hook_app(app_factory, http_server, POSTREG_SECRETS={"API_KEY": "do-not-send"})
    a.register(username="ada", email="ada@example.com", name="Zoë")
    assert a.postreg.join(10)
    [body] = verified(http_server)
    [req] = http_server.requests
    assert req.method == "POST" and req.path == "/hooks/crm?token=t0k3n"
    assert req.headers["Content-Type"] == "application/json"
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["name"] == "Zoë"
    assert body["context"]["connection"]["name"] == "Username-Password-Authentication"
    assert body["context"]["eventId"] == req.headers["webhook-id"]
    raw = req.body.decode()
    assert (
        "do-not-send" not in raw and "password" not in raw and "secret-hash" not in raw
    )
    [outcome] = a.outcomes()
    assert (outcome.hook, outcome.status) == ("webhook:crm", "succeeded")


def test_retries_keep_the_id_and_sign_afresh(
    app_factory: Any, http_server: RecordingServer
) -> None:
    http_server.script(
        Reply(500, b"busy"), Reply(429, b"slow down", {"Retry-After": "0"})
    )
    a = hook_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    bodies = verified(http_server)  # each attempt verifies on its own bytes
    assert len(bodies) == 3
    ids = {r.headers["webhook-id"] for r in http_server.requests}
    assert len(ids) == 1
    signatures = [r.headers["webhook-signature"] for r in http_server.requests]
    assert len(set(signatures)) == 3  # the body (attempt) differs: fresh signatures
    assert [b["context"]["attempt"] for b in bodies] == [1, 2, 3]
    assert [o.status for o in sorted(a.outcomes(), key=lambda o: o.attempt)] == [
        "pending",
        "pending",
        "succeeded",
    ]


def test_timestamp_and_signature_new_on_every_attempt(
    http_server: RecordingServer,
) -> None:
    now = [1_700_000_000.0]
    sender = WebhookSender(http_server.url("/hooks/x"), SECRET, clock=lambda: now[0])
    user, context = User(id="1", email="a@example.com"), Context(event_id="evt_same")
    sender(user, context)
    now[0] += 7
    sender(user, context)
    first, second = http_server.requests
    assert first.body == second.body  # same attempt number: same bytes
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == "evt_same"
    assert (
        int(second.headers["webhook-timestamp"])
        - int(first.headers["webhook-timestamp"])
        == 7
    )
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    for req in (first, second):
        ts = int(req.headers["webhook-timestamp"])
        when = dt.datetime.fromtimestamp(ts, tz=dt.timezone.utc)
        expected = Webhook(SECRET).sign("evt_same", when, req.body.decode())
        assert req.headers["webhook-signature"] == expected


def test_redirect_is_not_followed(
    app_factory: Any, http_server: RecordingServer
) -> None:
    http_server.default = Reply(302, b"", {"Location": http_server.url("/elsewhere")})
    a = hook_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    assert [r.method for r in http_server.requests] == ["POST"]
    [outcome] = a.outcomes()
    assert (outcome.status, outcome.error_class) == ("dead", "PermanentError")
    assert "redirects are not followed: update the URL" in outcome.error


@pytest.mark.parametrize(
    ("status", "final"),
    [(410, "dead"), (404, "dead"), (400, "dead"), (408, "succeeded")],
)
def test_status_classification(
    app_factory: Any, http_server: RecordingServer, status: int, final: str
) -> None:
    http_server.script(Reply(status, b"nope"))
    a = hook_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    last = max(a.outcomes(), key=lambda o: o.attempt)
    assert last.status == final
    if final == "dead":
        assert last.attempt == 1 and str(status) in last.error


def test_total_deadline(http_server: RecordingServer) -> None:
    http_server.script(Reply(200, b"x" * 100, drip=0.2))
    sender = WebhookSender(http_server.url("/hooks/x"), SECRET, timeout=1.0)
    # Without the deadline the whole body (20 s of drip) would arrive: no error.
    with pytest.raises(DeadlineExceeded):
        sender(User(email="a@example.com"), Context(event_id="evt_1"))


def test_total_deadline_counts_a_slow_name_lookup(monkeypatch: Any) -> None:
    """The deadline passed while the name was still being looked up (no socket
    to cut yet); the server then drips its status line a byte at a time. The
    socket the late connect made is cut as soon as it exists."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                if stop.is_set():
                    return
                try:
                    conn.send(bytes([byte]))
                except OSError:
                    return
                stop.wait(0.1)

    server = threading.Thread(target=drip, daemon=True)
    server.start()
    real = socket.getaddrinfo

    def slow_lookup(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.6)  # a slow resolver: longer than the whole deadline
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_lookup)
    port = listener.getsockname()[1]
    raised: list[BaseException] = []

    def post() -> None:
        try:
            _http.post(f"http://localhost:{port}/x", b"{}", {}, timeout=1, deadline=0.3)
        except BaseException as exc:
            raised.append(exc)

    client = threading.Thread(target=post, daemon=True)
    client.start()
    client.join(10)
    stop.set()
    listener.close()
    assert not client.is_alive(), "the attempt outlived its deadline"
    assert [type(e) for e in raised] == [DeadlineExceeded]


def test_secret_and_url_stay_out_of_logs_and_errors(
    app_factory: Any, http_server: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    http_server.default = Reply(500, b"down")
    a = hook_app(app_factory, http_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    assert all(o.status != "succeeded" for o in a.outcomes())
    secret_part = SECRET.removeprefix("whsec_")
    for text in [caplog.text, *(o.error or "" for o in a.outcomes())]:
        assert "t0k3n" not in text and secret_part not in text
    assert "t0k3n" not in repr(a.hooks())


def test_bad_webhook_config_names_no_secret(app_factory: Any) -> None:
    with pytest.raises(ConfigError) as info:
        app_factory(
            POSTREG_WEBHOOKS=[
                {"name": "crm", "url": "https://x.test/h", "secret": "whsec_!!"}
            ]
        )
    assert "whsec_!!" not in str(info.value)
    with pytest.raises(ConfigError, match="needs 'name', 'url' and 'secret'"):
        app_factory(
            POSTREG_WEBHOOKS=[{"name": "crm", "url": "https://x.test/h?k=s3cr3t"}]
        )
    with pytest.raises(ConfigError, match="unknown key"):
        app_factory(
            POSTREG_WEBHOOKS=[
                {"name": "crm", "url": "u", "secret": SECRET, "verify": False}
            ]
        )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"url": "https://x.test/a b?token=s3cr3t"}, "no spaces"),
        ({"url": "ftp://x.test/h"}, "http:// or https://"),
        ({"max_attempts": "3"}, "whole number >= 1"),
        ({"max_attempts": 0}, "whole number >= 1"),
        ({"timeout": "abc"}, "seconds > 0"),
        ({"timeout": -5}, "seconds > 0"),
        ({"timeout": float("nan")}, "seconds > 0"),
        ({"headers": "X-Api-Key: k3y"}, "dict of header names"),
        ({"headers": {"X-Api-Key": "k3y-from-a-file\n"}}, "without line breaks"),
    ],
)
def test_each_webhook_option_is_checked_at_start(
    app_factory: Any, option: dict[str, Any], message: str
) -> None:
    """Refused by init_app with the option named, instead of failing every
    attempt later (a str max_attempts made finish() raise; a header with a
    newline was refused by http.client, quoting the key in the stored error)."""
    item = {"name": "crm", "url": "https://x.test/h", "secret": SECRET, **option}
    with pytest.raises(ConfigError, match=message) as info:
        app_factory(POSTREG_WEBHOOKS=[item])
    assert "WEBHOOKS[0]" in str(info.value)
    for secret in ("s3cr3t", "k3y", SECRET):
        assert secret not in str(info.value)


def test_header_values_and_the_url_query_are_scrubbed(
    app_factory: Any, http_server: RecordingServer, caplog: Any
) -> None:
    """A hook error quoting a custom header value (an API key) or the URL's
    token: neither reaches the log nor the stored error."""
    http_server.script(Reply(500, b"rejected key k3y-123456 for token=t0k3n"))
    app = app_factory(
        POSTREG_WEBHOOKS=[
            {
                "name": "crm",
                "url": http_server.url("/hooks/crm?token=t0k3n"),
                "secret": SECRET,
                "headers": {"X-Api-Key": "k3y-123456"},
                "max_attempts": 1,
            }
        ]
    )
    with caplog.at_level(logging.WARNING, logger="flask_postreg"):
        app.register(username="ann", email="ann@example.com")
        assert app.postreg.join(10)
    (outcome,) = app.outcomes()
    assert outcome.status == "dead"
    for secret in ("k3y-123456", "t0k3n"):
        assert secret not in (outcome.error or "")
        assert secret not in caplog.text


def test_receiver_recipe_rejects_tampering(http_server: RecordingServer) -> None:
    WebhookSender(http_server.url("/hooks/x"), SECRET)(
        User(id="1"), Context(event_id="e")
    )
    [req] = http_server.requests
    body = json.loads(req.body)
    body["user"]["id"] = "2"
    tampered = json.dumps(body, separators=(",", ":"), sort_keys=True)
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify(tampered, req.headers)


def test_app_wide_webhook_timeout_bounds_each_attempt(
    app_factory: Any, http_server: RecordingServer
) -> None:
    """POSTREG_WEBHOOK_TIMEOUT is the total deadline of one attempt: a receiver
    dripping 20 s of body (each byte well inside the per-read timeout) is cut
    at 0.5 s, and the failure is retried like any other, then dead."""
    http_server.default = Reply(200, b"x" * 100, drip=0.2)
    a = hook_app(
        app_factory, http_server, POSTREG_WEBHOOK_TIMEOUT=0.5, POSTREG_MAX_ATTEMPTS=2
    )
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10), "an attempt outlived POSTREG_WEBHOOK_TIMEOUT"
    assert len(http_server.requests) == 2
    outcomes = sorted(a.outcomes(), key=lambda o: o.attempt)
    assert [(o.attempt, o.status) for o in outcomes] == [(1, "pending"), (2, "dead")]
    for outcome in outcomes:
        assert outcome.error_class == DeadlineExceeded.__name__
        assert "deadline of 0.5s" in (outcome.error or "")


def test_webhook_timeout_defaults_to_ten_seconds(
    app_factory: Any, http_server: RecordingServer
) -> None:
    """The README's default for POSTREG_WEBHOOK_TIMEOUT."""
    a = hook_app(app_factory, http_server)
    assert a.hooks()["webhook:crm"].func.timeout == 10.0


def test_item_timeout_overrides_the_app_wide_one(
    app_factory: Any, http_server: RecordingServer
) -> None:
    """An item's ``timeout`` wins over POSTREG_WEBHOOK_TIMEOUT: with the app's
    30 s the drip (20 s) would complete and succeed; the item's 0.5 s cuts it."""
    http_server.default = Reply(200, b"x" * 100, drip=0.2)
    a = app_factory(
        POSTREG_WEBHOOK_TIMEOUT=30,
        POSTREG_WEBHOOKS=[
            {
                "name": "crm",
                "url": http_server.url("/hooks/crm"),
                "secret": SECRET,
                "timeout": 0.5,
                "max_attempts": 1,
            }
        ],
    )
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10), "the item's timeout did not bound the attempt"
    [outcome] = a.outcomes()
    assert (outcome.status, outcome.error_class) == ("dead", DeadlineExceeded.__name__)
    assert "deadline of 0.5s" in (outcome.error or "")
    assert len(http_server.requests) == 1


def test_item_max_attempts_overrides_the_app_default(
    app_factory: Any, http_server: RecordingServer
) -> None:
    """An item's ``max_attempts`` ends its deliveries early, while an item
    without one keeps POSTREG_MAX_ATTEMPTS; counted on the receiver."""
    http_server.default = Reply(500, b"down")
    a = app_factory(
        POSTREG_MAX_ATTEMPTS=5,
        POSTREG_WEBHOOKS=[
            {
                "name": "crm",
                "url": http_server.url("/hooks/crm"),
                "secret": SECRET,
                "max_attempts": 2,
            },
            {"name": "erp", "url": http_server.url("/hooks/erp"), "secret": SECRET},
        ],
    )
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    paths = [r.path for r in http_server.requests]
    assert (paths.count("/hooks/crm"), paths.count("/hooks/erp")) == (2, 5)
    for hook, attempts in (("webhook:crm", 2), ("webhook:erp", 5)):
        mine = sorted(
            (o for o in a.outcomes() if o.hook == hook), key=lambda o: o.attempt
        )
        assert [o.status for o in mine] == ["pending"] * (attempts - 1) + ["dead"]
        assert {o.error_class for o in mine} == {"RetryLater"}
