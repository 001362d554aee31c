"""The pytest plugin: ``record_events()`` and the ``postreg_*`` fixtures."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from flask_postreg import Event
from flask_postreg import User
from flask_postreg.testing import record_events

from .models import Account
from .models import db

pytest_plugins = ["pytester"]


def rows(app):
    store = app.extensions["postreg"].store
    with store.engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count()).select_from(store.t.deliveries)
        ).scalar_one()


def test_records_committed_users_without_running_hooks(app, postreg, recorder):
    with record_events(app) as events, app.app_context():
        db.session.add(Account(email="ann@example.com", username="ann"))
        db.session.commit()
        db.session.add(Account(email="rolled@example.com"))
        db.session.flush()
        db.session.rollback()
    assert postreg.join(5)
    assert [e.user.email for e in events] == ["ann@example.com"]
    assert events[0].user.username == "ann"
    assert recorder.calls == []
    assert rows(app) == 0
    # Closed: hooks run again, nothing more is recorded.
    with app.app_context():
        db.session.add(Account(email="bob@example.com"))
        db.session.commit()
    assert postreg.join(5)
    assert recorder.emails == ["bob@example.com"]
    assert len(events) == 1


def test_record_events_works_without_pytest_installed(tmp_path):
    """The README: record_events works in any test runner. Run it in a process
    where importing pytest fails, with unittest-style code."""
    script = tmp_path / "no_pytest.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.modules["pytest"] = None  # import pytest now raises ImportError
            from flask import Flask
            from flask_postreg import PostReg
            from flask_postreg.testing import record_events
            from tests.models import Account, db

            app = Flask("no_pytest")
            app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///{tmp_path}/np.db"
            db.init_app(app)
            postreg = PostReg(app, db=db, user_model=Account)
            with app.app_context():
                db.create_all()
                with record_events(app) as events:
                    db.session.add(Account(email="ann@example.com"))
                    db.session.commit()
            assert [e.user.email for e in events] == ["ann@example.com"], events
            assert "pytest" not in [m for m in sys.modules if sys.modules[m]]
            print("ok")
            """
        )
    )
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_run_hooks_true_records_and_runs(app, postreg, recorder):
    with record_events(app, run_hooks=True) as events, app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
        postreg.emit(User(id="x1", email="bulk@example.com"))
    assert postreg.join(5)
    assert [e.user.email for e in events] == ["ann@example.com", "bulk@example.com"]
    assert sorted(recorder.emails) == ["ann@example.com", "bulk@example.com"]
    assert rows(app) == 2


def test_emit_is_recorded_and_not_run(app, postreg, recorder):
    with record_events(app) as events:
        event = postreg.emit(User(id="x1", email="bulk@example.com"), app=app)
    assert events == [event]
    assert postreg.join(5) and recorder.calls == []


def test_an_app_without_postreg_is_an_error(make_app):
    app, _ = make_app(extension=False)
    with pytest.raises(RuntimeError, match="init_app"), record_events(app):
        pass


def test_postreg_events_fixture(app, postreg, recorder, postreg_events):
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
    assert [e.user.email for e in postreg_events] == ["ann@example.com"]
    assert recorder.calls == []


def test_sample_body_fixture(postreg_sample_body):
    event = Event.from_dict(postreg_sample_body)
    assert event.user.email == "user1@foo.com"
    postreg_sample_body["user"]["email"] = "changed"  # a fresh copy each time


def test_sample_body_fixture_is_fresh(postreg_sample_body):
    assert postreg_sample_body["user"]["email"] == "user1@foo.com"


def test_plugin_is_registered_and_needs_an_app_fixture(pytester):
    pytester.makepyfile(
        """
        def test_body(postreg_sample_body):
            assert postreg_sample_body["user"]["username"] == "user1"

        def test_events_without_app(postreg_events):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*postreg_events fixture needs an 'app' fixture*"])


def test_readme_example_in_a_user_suite(pytester, tmp_path):
    pytester.makeconftest(
        f"""
        import pytest
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy
        from flask_postreg import PostReg

        db = SQLAlchemy()
        postreg = PostReg()

        class Account(db.Model):
            id = db.Column(db.Integer, primary_key=True)
            email = db.Column(db.String, unique=True, nullable=False)

        @postreg.hook
        def welcome(user, context):
            raise AssertionError("hooks do not run under postreg_events")

        @pytest.fixture
        def app():
            app = Flask("suite")
            app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///{tmp_path}/suite.db"
            db.init_app(app)
            postreg.init_app(app, db=db, user_model=Account)
            with app.app_context():
                db.create_all()
            yield app
            postreg.shutdown(5)
        """
    )
    pytester.makepyfile(
        """
        from conftest import Account, db

        def test_signup_emits_one_event(app, postreg_events):
            with app.app_context():
                db.session.add(Account(email="ann@example.com"))
                db.session.commit()
            assert [e.user.email for e in postreg_events] == ["ann@example.com"]
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
