"""init_app: defaults, validation, errors that say what to do."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_postreg import ConfigError
from flask_postreg import PostReg
from flask_postreg import PostRegError
from flask_postreg import config
from flask_postreg.snapshot import FieldMap

from .models import Account
from .models import db


@pytest.fixture
def bare_app(tmp_path):
    app = Flask("bare")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/bare.db"
    db.init_app(app)
    return app


def test_defaults_are_applied(bare_app):
    postreg = PostReg(bare_app, db=db, user_model=Account)
    assert bare_app.config["POSTREG_MAX_WORKERS"] == 4
    assert bare_app.config["POSTREG_HOOK_TIMEOUT"] == 20.0
    state = bare_app.extensions["postreg"]
    assert state.tenant == "bare"
    assert state.connection.id == "con_accounts"
    assert state.connection.name == "Username-Password-Authentication"
    postreg.shutdown()


def test_unknown_key_names_the_closest(bare_app):
    bare_app.config["POSTREG_MAX_WORKER"] = 3
    with pytest.raises(ConfigError, match="Did you mean 'POSTREG_MAX_WORKERS'"):
        PostReg(bare_app, db=db, user_model=Account)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("POSTREG_MAX_WORKERS", 0, "whole number >= 1"),
        ("POSTREG_HOOK_TIMEOUT", "fast", "seconds > 0"),
        # nan passed "<= 0" and then broke every registration's outbox write.
        ("POSTREG_HOOK_TIMEOUT", float("nan"), "seconds > 0"),
        ("POSTREG_WEBHOOK_TIMEOUT", float("inf"), "seconds > 0"),
        ("POSTREG_MAIL_TIMEOUT", float("nan"), "seconds > 0"),
        ("POSTREG_SLACK_MIN_INTERVAL", float("inf"), "finite number of seconds"),
        ("POSTREG_SLACK_MIN_INTERVAL", float("nan"), "finite number of seconds"),
        ("POSTREG_BACKEND", "rq", "must be one of"),
        ("POSTREG_RETRY_SCHEDULE", [], "non-empty list"),
        ("POSTREG_RETRY_SCHEDULE", [float("nan")], "non-empty list"),
        ("POSTREG_RETRY_SCHEDULE", "300", "non-empty list"),  # was (3, 0, 0)
        ("POSTREG_SECRETS", "abc", "dict or a callable"),
        ("POSTREG_USER_FIELDS", {"shoe_size": "x"}, "unknown field"),
        ("POSTREG_USER_FIELDS", {"email": "password_hash"}, "credential"),
        ("POSTREG_USER_FIELDS", {"name": "api_key"}, "credential"),
        ("POSTREG_USER_FIELDS", {"name": "pwd"}, "credential"),
        ("POSTREG_USER_FIELDS", {"email": "nope"}, "no such attribute"),
    ],
)
def test_bad_values_are_clear_errors(bare_app, key, value, message):
    bare_app.config[key] = value
    with pytest.raises(ConfigError, match=message):
        PostReg(bare_app, db=db, user_model=Account)


def test_missing_db_or_model_says_what_to_pass(bare_app):
    with pytest.raises(PostRegError, match="db=db"):
        PostReg(bare_app, user_model=Account)
    with pytest.raises(PostRegError, match="user_model=User"):
        PostReg(bare_app, db=db)


def test_second_registration_raises(bare_app):
    postreg = PostReg(bare_app, db=db, user_model=Account)
    with pytest.raises(RuntimeError, match="Import and use that instance instead"):
        PostReg(bare_app, db=db, user_model=Account)
    postreg.shutdown()


def test_using_an_app_without_init_app(bare_app):
    postreg = PostReg()
    with bare_app.app_context(), pytest.raises(RuntimeError, match="init_app"):
        postreg.emit(Account(email="a@b.c"))


def test_every_key_is_documented_in_the_readme():
    import pathlib

    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    for name in config.KEYS:
        assert f"`POSTREG_{name}`" in readme, f"POSTREG_{name} is not in the README"


def test_field_auto_detection(bare_app):
    postreg = PostReg(bare_app, db=db, user_model=Account)
    fields = bare_app.extensions["postreg"].field_map(Account)
    assert fields.fields == {
        "id",
        "username",
        "email",
        "email_verified",
        "phone_number",
        "user_metadata",
        "app_metadata",
    }
    postreg.shutdown()


def test_extension_before_db_says_what_to_do(tmp_path):
    app = Flask("early")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/early.db"
    with pytest.raises(
        PostRegError, match=r"db.init_app\(app\) before postreg.init_app"
    ):
        PostReg(app, db=db, user_model=Account)


@pytest.mark.parametrize(
    ("url", "asked", "expected"),
    [
        ("sqlite:////tmp/x.db", None, "database"),
        ("sqlite://", None, "memory"),
        ("sqlite:///file:x?mode=memory&uri=true", None, "memory"),
        ("postgresql+psycopg://u@h/db", None, "database"),
        ("sqlite:////tmp/x.db", "memory", "memory"),
        ("mysql+pymysql://u@h/db", None, "memory"),
        ("mysql+pymysql://u@h/db", "memory", "memory"),
    ],
)
def test_store_choice(url, asked, expected, caplog):
    from sqlalchemy.engine import make_url

    from flask_postreg.state import choose_store

    with caplog.at_level("WARNING", logger="flask_postreg"):
        assert choose_store(make_url(url), asked) == expected
    assert ("not durable" in caplog.text) == (url.startswith("mysql") and asked is None)


def test_database_store_on_an_unsupported_database_is_refused():
    """MySQL has no UPDATE ... RETURNING: asking for the durable store is an error."""
    from sqlalchemy.engine import make_url

    from flask_postreg.state import choose_store

    with pytest.raises(ConfigError, match="Use POSTREG_STORE='memory'"):
        choose_store(make_url("mysql+pymysql://u@h/db"), "database")


def test_mutable_defaults_are_not_shared_between_apps(tmp_path):
    apps = []
    for name in ("a", "b"):
        app = Flask(name)
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/{name}.db"
        db.init_app(app)
        PostReg(app, db=db, user_model=Account)
        apps.append(app)
    a, b = apps
    a.config["POSTREG_SECRETS"]["SLACK_TOKEN"] = "xoxb-app-a-only"
    assert "SLACK_TOKEN" not in b.config["POSTREG_SECRETS"]
    assert b.extensions["postreg"].dispatcher.secrets() == {}
    for app in apps:
        app.extensions["postreg"].ext.shutdown()


def test_unknown_key_without_a_close_match_lists_the_valid_keys(bare_app):
    bare_app.config["POSTREG_ZZZZZZZZ"] = 1
    with pytest.raises(ConfigError, match="Valid keys: POSTREG_TENANT"):
        PostReg(bare_app, db=db, user_model=Account)


def test_hook_options_are_checked_when_registered(postreg):
    def f(user, context):
        pass

    for options, message in (
        ({"max_attempts": "3"}, "whole number >= 1"),
        ({"max_attempts": 2.5}, "whole number >= 1"),
        ({"timeout": float("nan")}, "seconds > 0"),
        ({"timeout": float("inf")}, "seconds > 0"),
        ({"name": "h" * 256}, "1 to 255 characters"),
    ):
        with pytest.raises(ValueError, match=message):
            postreg.hook(f, **options)


def test_auto_detection_skips_methods():
    """A model method named like a field (def confirmed(self)) is not a value:
    it gave email_verified=True for every user."""

    class Base(DeclarativeBase):
        pass

    class Member(Base):
        __tablename__ = "members"
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str]

        def confirmed(self):
            return False

        def login(self, password):
            return False

    fields = FieldMap(Member, None)
    assert "email_verified" not in fields.fields
    assert "username" not in fields.fields
    assert fields.read(Member(id=1, email="a@example.com"))["email"] == "a@example.com"
