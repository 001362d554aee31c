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

from .models import Account
from .models import db


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


@pytest.fixture
def db_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/app.db"


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
