"""Fixtures: a Flask app with a real SQLite file database (or PostgreSQL), and PostReg."""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.globals import _cv_app

from flask_postreg import PostReg

from . import postgres
from .models import Account
from .models import db

#: ``pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)``
#: runs a module's tests on a SQLite file and on PostgreSQL, with no copied code.
BOTH_DATABASES = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]


def sqlite_savepoint_recipe(engine: sa.Engine) -> None:
    """SQLAlchemy's documented pysqlite recipe: without it SAVEPOINTs misbehave."""

    @sa.event.listens_for(engine, "connect")
    def do_connect(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def do_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")


class Recorder:
    """A hook that records what it received, thread-safely."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, user: Any, context: Any) -> None:
        with self.lock:
            self.calls.append((user, context))

    @property
    def emails(self) -> list[str]:
        with self.lock:
            return [u.email for u, _ in self.calls]


class FailsFirst:
    """A hook whose first ``failures`` calls raise ``error`` (a ConnectionError
    by default); it records each attempt's number."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionError("try again")
        self.attempts: list[int] = []

    def __call__(self, user: Any, context: Any) -> None:
        self.attempts.append(context.attempt)
        if len(self.attempts) <= self.failures:
            raise self.error


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.PostgresServer]:
    """A throwaway PostgreSQL server for the session (initdb + pg_ctl).

    Skips without the binaries, unless ``POSTREG_TEST_REQUIRE_POSTGRES=1``.
    """
    try:
        server = postgres.PostgresServer()
    except postgres.Unavailable as exc:
        if postgres.required():
            pytest.fail(f"{postgres.REQUIRE_ENV} is set but {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    try:
        server.start()
    except postgres.Unavailable as exc:
        server.stop()
        if postgres.required():
            pytest.fail(f"{postgres.REQUIRE_ENV} is set but {exc}")
        pytest.skip(f"PostgreSQL not available: {exc}")
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def new_db_url(
    request: pytest.FixtureRequest, tmp_path: Any
) -> Iterator[Callable[[str], str]]:
    """``new_db_url(name)``: the URL of another empty database of the test's kind.

    The kind is the ``db_url`` parameter (``"sqlite"`` unless a module
    parametrizes it): a SQLite file in ``tmp_path``, or a fresh PostgreSQL
    database dropped after the test.
    """
    kind = _db_kind(request)
    created: list[str] = []
    server: postgres.PostgresServer | None = None

    def factory(name: str) -> str:
        nonlocal server
        if kind == "sqlite":
            return f"sqlite:///{tmp_path}/{name}.db"
        if server is None:
            server = request.getfixturevalue("pg_server")
        url = server.create_database()
        created.append(url)
        return url

    yield factory
    for url in created:
        assert server is not None
        server.drop_database(url)


def _db_kind(request: pytest.FixtureRequest) -> str:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and "db_url" in callspec.params:
        return str(callspec.params["db_url"])
    return "sqlite"


@pytest.fixture
def db_url(new_db_url: Callable[[str], str]) -> str:
    """The test's database: a SQLite file, or PostgreSQL when parametrized so."""
    return new_db_url("app")


@pytest.fixture
def make_app(
    request: pytest.FixtureRequest, tmp_path: Any, db_url: str
) -> Iterator[Callable[..., tuple[Flask, PostReg]]]:
    """Build apps sharing the test's database; each gets its own PostReg unless given.

    Tests marked ``savepoints`` get SQLAlchemy's pysqlite SAVEPOINT recipe. Only
    they do: the recipe also makes a SELECT open the transaction, so a later write
    in it fails at once ("database is locked") whenever another connection writes,
    instead of waiting as default pysqlite does.
    """
    made: list[tuple[Flask, PostReg]] = []
    savepoints = request.node.get_closest_marker("savepoints") is not None

    def factory(
        postreg: PostReg | None = None,
        *,
        name: str | None = None,
        url: str | None = None,
        extension: bool = True,
        **config: Any,
    ) -> tuple[Flask, PostReg]:
        app = Flask(name or f"app{len(made)}")
        app.config.update(
            TESTING=True,
            SQLALCHEMY_DATABASE_URI=url or db_url,
            POSTREG_RETRY_SCHEDULE=[0, 0, 0],
            POSTREG_HOOK_TIMEOUT=10.0,
        )
        app.config.update(
            {k if k.isupper() else k.upper(): v for k, v in config.items()}
        )
        db.init_app(app)
        postreg = postreg or PostReg()
        if extension:
            postreg.init_app(app, db=db, user_model=Account)
        with app.app_context():
            if savepoints and db.engine.dialect.name == "sqlite":
                sqlite_savepoint_recipe(db.engine)
            db.create_all()
        made.append((app, postreg))
        return app, postreg

    yield factory
    for app, postreg in made:
        postreg.shutdown(timeout=5)
        with app.app_context():
            db.drop_all()
            for engine in db.engines.values():
                engine.dispose()


@pytest.fixture
def app_and_postreg(
    make_app: Callable[..., tuple[Flask, PostReg]],
) -> tuple[Flask, PostReg]:
    return make_app()


@pytest.fixture
def app(app_and_postreg: tuple[Flask, PostReg]) -> Flask:
    return app_and_postreg[0]


@pytest.fixture
def postreg(app_and_postreg: tuple[Flask, PostReg]) -> PostReg:
    return app_and_postreg[1]


@pytest.fixture
def recorder(postreg: PostReg) -> Recorder:
    rec = Recorder()
    postreg.hook(rec, name="recorder")
    return rec


@pytest.fixture(autouse=True)
def leak_detector() -> Iterator[None]:
    """No test may leave an app context pushed (pallets/flask's own check)."""
    yield
    leaked = []
    while _cv_app.get(None) is not None:
        ctx = _cv_app.get()
        leaked.append(ctx)
        ctx.pop()
    assert not leaked, f"app contexts leaked: {leaked}"
