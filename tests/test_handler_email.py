"""The e-mail handlers against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from flask import Flask

from flask_postreg import ConfigError
from flask_postreg import Context
from flask_postreg import PermanentError
from flask_postreg import RetryLater
from flask_postreg import User
from flask_postreg.handlers import blueprint
from flask_postreg.handlers.email import MailNotifier
from flask_postreg.handlers.email import SMTPSettings
from flask_postreg.handlers.email import WelcomeMailer
from tests.servers import TLS
from tests.servers import RecordingSMTPHandler
from tests.servers import SMTPServer
from tests.servers import fixture_app_factory  # noqa: F401
from tests.servers import fixture_silent_server  # noqa: F401
from tests.servers import fixture_smtp_server  # noqa: F401
from tests.servers import fixture_starttls_server  # noqa: F401
from tests.servers import fixture_tls  # noqa: F401
from tests.servers import free_port

HOSTILE = [
    "Eve, x@evil.test",
    "Eve\r\nBcc: x@evil.test",
    "Eve\nX-Injected: yes",
    '"Eve" <x@evil.test>',
]


@pytest.fixture
def flask_app() -> Any:
    app = Flask(__name__)
    app.register_blueprint(blueprint)
    with app.app_context():
        yield app


class TLSRecordingHandler(RecordingSMTPHandler):
    """Also records whether each message came over a TLS transport: aiosmtpd
    sets ``session.ssl`` only after STARTTLS, not for implicit TLS."""

    def __init__(self) -> None:
        super().__init__()
        self.transport_tls: list[bool] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        ssl_object = server.transport.get_extra_info("ssl_object")
        self.transport_tls.append(ssl_object is not None)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def ssl_server(tls: TLS) -> Iterator[SMTPServer]:
    """aiosmtpd speaking TLS from the first byte (port-465 style), nothing else."""
    from aiosmtpd.controller import Controller

    handler = TLSRecordingHandler()
    port = free_port()
    controller = Controller(
        handler, hostname="127.0.0.1", port=port, ssl_context=tls.server_context
    )
    controller.start()
    try:
        yield SMTPServer(handler, port, controller)
    finally:
        controller.stop()


@pytest.fixture
def dripping_server() -> Iterator[int]:
    """A port whose greeting never ends: a ``220-`` continuation line every 0.1 s.

    Each read gets data long before a per-read timeout; only a deadline on the
    whole exchange stops the client. It gives up after ~15 s (well past the
    test's bound) so a missing deadline fails the test instead of hanging it.
    """
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:  # accept timed out: look at ``stop`` again
                continue
            with conn:
                for _ in range(150):
                    try:
                        conn.sendall(b"220-still greeting you\r\n")
                    except OSError:  # the client hung up: its deadline fired
                        break
                    if stop.wait(0.1):
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert not thread.is_alive()


def settings(port: int, **kw: Any) -> SMTPSettings:
    return SMTPSettings(
        sender="Signups <noreply@example.com>",
        server="127.0.0.1",
        port=port,
        timeout=kw.pop("timeout", 5.0),
        **kw,
    )


def parse(envelope: Any) -> Any:
    return email.message_from_bytes(
        envelope.original_content, policy=email.policy.default
    )


def mail_app(app_factory: Any, server: SMTPServer, **config: Any) -> Any:
    return app_factory(
        POSTREG_MAIL_NOTIFY=["ops@example.com", "Sales Team <sales@example.com>"],
        POSTREG_MAIL_SENDER="Signups <noreply@example.com>",
        POSTREG_MAIL_SERVER="127.0.0.1",
        POSTREG_MAIL_PORT=server.port,
        POSTREG_MAIL_TIMEOUT=5.0,
        **config,
    )


def test_notify_and_welcome_through_the_extension(
    app_factory: Any, smtp_server: SMTPServer
) -> None:
    a = mail_app(app_factory, smtp_server, POSTREG_MAIL_WELCOME=True)
    a.register(username="ada", email="ada@example.com", name="Ada Lovelace")
    assert a.postreg.join(10)
    assert {o.hook: o.status for o in a.outcomes()} == {
        "mail:notify": "succeeded",
        "mail:welcome": "succeeded",
    }
    by_rcpt = {tuple(e.rcpt_tos): e for e in smtp_server.handler.envelopes}
    assert set(by_rcpt) == {
        ("ops@example.com", "sales@example.com"),
        ("ada@example.com",),
    }
    notify = parse(by_rcpt[("ops@example.com", "sales@example.com")])
    assert notify["From"] == "Signups <noreply@example.com>"
    assert "Ada Lovelace" in notify["Subject"]
    assert notify.get_body(("plain",)).get_content().count("ada@example.com") == 1
    assert notify.get_body(("html",)) is not None
    welcome = parse(by_rcpt[("ada@example.com",)])
    assert welcome["To"] == "Ada Lovelace <ada@example.com>"
    assert welcome["Subject"].startswith("Welcome")
    assert by_rcpt[("ada@example.com",)].mail_from == "noreply@example.com"


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_add_no_recipient_and_no_header(
    flask_app: Flask, smtp_server: SMTPServer, name: str
) -> None:
    user = User(id="1", name=name, email="eve@example.com", username=name)
    for handler in (
        WelcomeMailer(settings(smtp_server.port)),
        MailNotifier(settings(smtp_server.port), ["ops@example.com"]),
    ):
        handler(user, Context(event_id="evt_1", tenant="acme"))
    welcome, notify = smtp_server.handler.envelopes
    assert welcome.rcpt_tos == ["eve@example.com"]
    assert notify.rcpt_tos == ["ops@example.com"]
    for envelope in (welcome, notify):
        msg = parse(envelope)
        assert msg["Bcc"] is None and msg["X-Injected"] is None
        assert len(msg.get_all("To")) == 1
        assert [a.addr_spec for a in msg["To"].addresses] == envelope.rcpt_tos
        assert "\r" not in msg["Subject"] and "\n" not in msg["Subject"]


def test_non_ascii_name(flask_app: Flask, smtp_server: SMTPServer) -> None:
    user = User(id="1", name="Zoë Ñandú 山田", email="zoe@example.com")
    WelcomeMailer(settings(smtp_server.port))(user, Context(tenant="Café"))
    [envelope] = smtp_server.handler.envelopes
    msg = parse(envelope)
    assert msg["To"].addresses[0].display_name == "Zoë Ñandú 山田"
    assert msg["Subject"] == "Welcome to Café"
    assert "Zoë Ñandú 山田" in msg.get_body(("plain",)).get_content()


def test_user_email_with_two_addresses_is_permanent(
    flask_app: Flask, smtp_server: SMTPServer
) -> None:
    user = User(email="eve@example.com, x@evil.test")
    with pytest.raises(PermanentError):
        WelcomeMailer(settings(smtp_server.port))(user, Context())
    assert smtp_server.handler.envelopes == []


def test_starttls_with_a_trusted_certificate(
    flask_app: Flask, starttls_server: SMTPServer, tls: TLS
) -> None:
    mailer = WelcomeMailer(
        settings(starttls_server.port, use_tls=True, ca_file=str(tls.ca_file))
    )
    mailer(User(email="ada@example.com"), Context())
    assert starttls_server.handler.tls_seen == [True]


def test_starttls_with_an_untrusted_certificate_is_refused(
    flask_app: Flask, starttls_server: SMTPServer, tmp_path: Path
) -> None:
    other = trustme.CA()
    ca_file = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(ca_file))
    mailer = WelcomeMailer(
        settings(starttls_server.port, use_tls=True, ca_file=str(ca_file))
    )
    with pytest.raises(ssl.SSLCertVerificationError, match="not trusted"):
        mailer(User(email="ada@example.com"), Context())
    assert starttls_server.handler.envelopes == []


def test_starttls_through_the_extension_uses_mail_ca_file(
    app_factory: Any, starttls_server: SMTPServer, tls: TLS
) -> None:
    a = mail_app(
        app_factory,
        starttls_server,
        POSTREG_MAIL_USE_TLS=True,
        POSTREG_MAIL_CA_FILE=str(tls.ca_file),
        POSTREG_MAIL_USERNAME="signups",
        POSTREG_MAIL_PASSWORD="pA55w0rd-sEcReT",
    )
    # aiosmtpd offers no AUTH without an authenticator: getting as far as the
    # login proves STARTTLS with the configured CA worked; the refusal is final.
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    [outcome] = a.outcomes()
    assert outcome.status == "dead", outcome
    assert "535" in outcome.error  # authentication refused, after STARTTLS
    assert "pA55w0rd" not in outcome.error


def test_550_is_permanent(app_factory: Any, smtp_server: SMTPServer) -> None:
    smtp_server.handler.rcpt_replies.extend(["550 5.1.1 No such user"] * 2)
    a = mail_app(app_factory, smtp_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    [outcome] = a.outcomes()
    assert (outcome.status, outcome.attempt) == ("dead", 1)
    assert outcome.error_class == "PermanentError"
    assert "550" in outcome.error


def test_451_is_retried(app_factory: Any, smtp_server: SMTPServer) -> None:
    smtp_server.handler.data_replies.append("451 4.3.0 Try again later")
    a = mail_app(app_factory, smtp_server)
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    outcomes = sorted(a.outcomes(), key=lambda o: o.attempt)
    assert [o.status for o in outcomes] == ["pending", "succeeded"]
    assert outcomes[0].error_class == "RetryLater" and "451" in outcomes[0].error
    assert len(smtp_server.handler.envelopes) == 1


def test_4xx_recipient_refusal_is_retryable(
    flask_app: Flask, smtp_server: SMTPServer
) -> None:
    smtp_server.handler.rcpt_replies.append("450 4.2.1 Mailbox busy")
    with pytest.raises(RetryLater):
        WelcomeMailer(settings(smtp_server.port))(
            User(email="a@example.com"), Context()
        )


def test_silent_server_times_out(flask_app: Flask, silent_server: int) -> None:
    mailer = WelcomeMailer(settings(silent_server, timeout=0.5))
    with pytest.raises(TimeoutError):
        mailer(User(email="ada@example.com"), Context())


def test_endless_greeting_hits_the_whole_exchange_deadline(
    flask_app: Flask, dripping_server: int
) -> None:
    """README: MAIL_TIMEOUT bounds each read, "the whole exchange gets twice
    that": a server answering a line at a time never trips the per-read timeout."""
    mailer = WelcomeMailer(settings(dripping_server, timeout=0.5))
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"exceeded its deadline of 1s"):
        mailer(User(email="ada@example.com"), Context())
    elapsed = time.monotonic() - start
    assert 0.5 <= elapsed < 10  # outlived a per-read timeout; generous bound


@pytest.mark.parametrize(
    ("config", "port"),
    [
        ({}, 25),
        ({"POSTREG_MAIL_USE_TLS": True}, 587),
        ({"POSTREG_MAIL_USE_SSL": True}, 465),
        ({"POSTREG_MAIL_USE_SSL": True, "POSTREG_MAIL_PORT": 2465}, 2465),
    ],
)
def test_default_port_follows_the_tls_mode(
    app_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    config: dict[str, Any],
    port: int,
) -> None:
    """README: MAIL_PORT defaults to 465 with USE_SSL, 587 with USE_TLS, else
    25; checked on the port the configured hook really dials, not just a property."""
    dialed: list[tuple[str, int]] = []

    def connect(self: smtplib.SMTP, host: str, port: int, **kw: Any) -> Any:
        dialed.append((host, port))
        raise ConnectionRefusedError("no SMTP server in this test")

    monkeypatch.setattr(smtplib.SMTP, "connect", connect)  # SMTP_SSL's too
    a = app_factory(
        POSTREG_MAIL_WELCOME=True,
        POSTREG_MAIL_SENDER="noreply@example.com",
        **config,
    )
    mailer = a.hooks()["mail:welcome"].func
    assert mailer.settings.effective_port == port
    with a.app.app_context(), pytest.raises(ConnectionRefusedError):
        mailer(User(email="ada@example.com"), Context())
    assert dialed == [("localhost", port)]


def test_use_ssl_delivers_over_implicit_tls(
    app_factory: Any, ssl_server: SMTPServer, tls: TLS
) -> None:
    """README: MAIL_USE_SSL is implicit TLS from the first byte, and the private
    CA comes from MAIL_CA_FILE (the server speaks nothing but TLS)."""
    a = mail_app(
        app_factory,
        ssl_server,
        POSTREG_MAIL_USE_SSL=True,
        POSTREG_MAIL_CA_FILE=str(tls.ca_file),
    )
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    assert [o.status for o in a.outcomes()] == ["succeeded"]
    [envelope] = ssl_server.handler.envelopes
    assert envelope.rcpt_tos == ["ops@example.com", "sales@example.com"]
    assert isinstance(ssl_server.handler, TLSRecordingHandler)
    assert ssl_server.handler.transport_tls == [True]


def test_use_ssl_against_a_plain_text_server_fails(
    flask_app: Flask, smtp_server: SMTPServer, tls: TLS
) -> None:
    """USE_SSL never falls back to plain text: a server greeting in clear text
    is a failed handshake, and nothing is sent."""
    mailer = WelcomeMailer(
        settings(smtp_server.port, use_ssl=True, ca_file=str(tls.ca_file))
    )
    with pytest.raises(ssl.SSLError):
        mailer(User(email="ada@example.com"), Context())
    assert smtp_server.handler.envelopes == []


def test_app_templates_override_the_defaults(
    flask_app: Flask, smtp_server: SMTPServer, tmp_path: Path
) -> None:
    folder = tmp_path / "templates" / "postreg"
    folder.mkdir(parents=True)
    (folder / "welcome_subject.txt").write_text("Hi {{ user.username }}\n")
    app = Flask(__name__, template_folder=str(tmp_path / "templates"))
    app.register_blueprint(blueprint)
    with app.app_context():
        WelcomeMailer(settings(smtp_server.port))(
            User(email="a@example.com", username="ada"), Context()
        )
    msg = parse(smtp_server.handler.envelopes[0])
    assert msg["Subject"] == "Hi ada"
    assert "welcome" in msg.get_body(("plain",)).get_content()  # default body kept


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"POSTREG_MAIL_NOTIFY": ["ops@example.com"]}, "MAIL_SENDER is required"),
        (
            {"POSTREG_MAIL_NOTIFY": ["a@example.com, b@evil.test"], "POSTREG_MAIL_SENDER": "n@example.com"},
            "one e-mail address",
        ),
        (
            {"POSTREG_MAIL_WELCOME": True, "POSTREG_MAIL_SENDER": "n@example.com", "POSTREG_MAIL_USE_TLS": True, "POSTREG_MAIL_USE_SSL": True},
            "exclude each other",
        ),
    ],
)  # fmt: skip
def test_bad_mail_config_fails_at_init_app(
    app_factory: Any, config: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        app_factory(**config)
