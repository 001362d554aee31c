"""Real servers on 127.0.0.1 for the handler tests: HTTP and SMTP (with STARTTLS).

Each fixture is defined as ``fixture_<name>`` with ``name="<name>"``: import it
into a test module (``from tests.servers import fixture_http_server  # noqa: F401``)
and request it as ``http_server``; ``conftest.py`` stays untouched.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import socket
import ssl
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_postreg import PostReg

# -- HTTP -----------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    """One scripted answer. ``drip`` > 0 sends the body a byte at a time."""

    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    drip: float = 0.0


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class RecordingServer:
    """A threaded HTTP server that records every request and answers from a script.

    ``server.script(Reply(429, headers={"Retry-After": "1"}), Reply(200))`` queues
    answers; when the queue is empty ``server.default`` is used.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.replies: collections.deque[Reply] = collections.deque()
        self.default = Reply()
        self.lock = threading.Lock()
        self.on_request: Callable[[Request], None] | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(
                    self.command,
                    self.path,
                    {k: v for k, v in self.headers.items()},
                    body,
                    time.monotonic(),
                )
                with outer.lock:
                    outer.requests.append(req)
                    reply = outer.replies.popleft() if outer.replies else outer.default
                if outer.on_request is not None:
                    outer.on_request(req)
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.send_header("Connection", "close")
                    self.end_headers()
                    if reply.drip:
                        for i in range(len(reply.body)):
                            self.wfile.write(reply.body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(reply.drip)
                    else:
                        self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a deadline): expected
                self.close_connection = True

            do_POST = _handle
            do_GET = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def script(self, *replies: Reply) -> None:
        with self.lock:
            self.replies.extend(replies)

    def __enter__(self) -> RecordingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(name="http_server")
def fixture_http_server() -> Iterator[RecordingServer]:
    with RecordingServer() as server:
        yield server


# -- SMTP -----------------------------------------------------------------------


class RecordingSMTPHandler:
    """An aiosmtpd handler recording envelopes; replies can be scripted.

    ``rcpt_replies`` / ``data_replies``: answers used (popped) before accepting.
    """

    def __init__(self) -> None:
        self.envelopes: list[Any] = []
        self.rcpt_replies: collections.deque[str] = collections.deque()
        self.data_replies: collections.deque[str] = collections.deque()
        self.tls_seen: list[bool] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.rcpt_replies:
            return self.rcpt_replies.popleft()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_replies:
            return self.data_replies.popleft()
        self.tls_seen.append(session.ssl is not None)
        self.envelopes.append(envelope)
        return "250 Message accepted"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclasses.dataclass
class SMTPServer:
    handler: RecordingSMTPHandler
    port: int
    controller: Any


@contextlib.contextmanager
def run_smtp(
    tls_context: ssl.SSLContext | None = None, require_starttls: bool = False
) -> Iterator[SMTPServer]:
    from aiosmtpd.controller import Controller

    handler = RecordingSMTPHandler()
    port = free_port()
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=port,
        tls_context=tls_context,
        require_starttls=require_starttls,
    )
    controller.start()
    try:
        yield SMTPServer(handler, port, controller)
    finally:
        controller.stop()


@pytest.fixture(name="smtp_server")
def fixture_smtp_server() -> Iterator[SMTPServer]:
    with run_smtp() as server:
        yield server


@dataclasses.dataclass
class TLS:
    ca: trustme.CA
    ca_file: Path
    server_context: ssl.SSLContext

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture(name="tls")
def fixture_tls(tmp_path: Path) -> TLS:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TLS(ca, ca_file, server_context)


@pytest.fixture(name="starttls_server")
def fixture_starttls_server(tls: TLS) -> Iterator[SMTPServer]:
    with run_smtp(tls.server_context, require_starttls=True) as server:
        yield server


@pytest.fixture(name="silent_server")
def fixture_silent_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


# -- an app with the real extension ----------------------------------------------


@dataclasses.dataclass
class App:
    app: Flask
    db: SQLAlchemy
    postreg: PostReg
    model: type

    def register(self, **fields: Any) -> Any:
        with self.app.app_context():
            user = self.model(**fields)
            self.db.session.add(user)
            self.db.session.commit()
            return user.id

    def outcomes(self) -> list[Any]:
        return list(self.app.extensions["postreg"].store.recent())

    def hooks(self) -> dict[str, Any]:
        return dict(self.app.extensions["postreg"].handler_hooks)


def make_app(tmp_path: Path, **config: Any) -> App:
    """A Flask + Flask-SQLAlchemy app (file SQLite) with PostReg and ``config``."""

    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)

    class Account(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "accounts"
        id: Mapped[int] = mapped_column(primary_key=True)
        username: Mapped[str]
        email: Mapped[str]
        name: Mapped[str | None]
        password_hash: Mapped[str] = mapped_column(default="pbkdf2:secret-hash")

    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/app.db",
        POSTREG_RETRY_SCHEDULE=[0, 0, 0],
        POSTREG_STORE="memory",
        **config,
    )
    db.init_app(app)
    postreg = PostReg(app, db=db, user_model=Account)
    with app.app_context():
        db.create_all()
    return App(app, db, postreg, Account)


@pytest.fixture(name="app_factory")
def fixture_app_factory(tmp_path: Path) -> Iterator[Callable[..., App]]:
    made: list[App] = []

    def factory(**config: Any) -> App:
        made.append(make_app(tmp_path, **config))
        return made[-1]

    yield factory
    for item in made:
        item.postreg.shutdown(5)
        with item.app.app_context():
            item.db.engine.dispose()
