"""DESIGN 4.1 and 4.2: a hook runs only for users committed by the outermost transaction."""

from __future__ import annotations

import json
import logging

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from flask_postreg import PostRegError
from flask_postreg import User
from flask_postreg import capture
from flask_postreg.testing import record_events

from .conftest import BOTH_DATABASES
from .models import Account
from .models import Post
from .models import StaffAccount
from .models import db
from .outbox import assert_rows_match_committed
from .outbox import events

# The whole matrix on a SQLite file and on PostgreSQL (database store, the
# default for both): hooks run, and outbox rows exist, exactly for committed users.
pytestmark = pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True)


def registered(app, postreg, recorder, *, emitted=()):
    assert postreg.join(10)
    emails = sorted(recorder.emails)
    assert_rows_match_committed(app, emails, emitted=emitted)
    return emails


def test_plain_commit_fires_once(app, postreg, recorder):
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
    assert registered(app, postreg, recorder) == ["ann@example.com"]
    user, context = recorder.calls[0]
    assert user.id is not None
    assert context.event_id.startswith("evt_")


def test_rollback_fires_nothing(app, postreg, recorder):
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.flush()
        db.session.rollback()
    assert registered(app, postreg, recorder) == []


def test_integrity_error_on_duplicate_email(app, postreg, recorder):
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
        db.session.add(Account(email="ann@example.com"))
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()
    assert registered(app, postreg, recorder) == ["ann@example.com"]


def test_failing_flush_of_two_objects(app, postreg, recorder):
    with app.app_context():
        db.session.add(Account(email="taken@example.com"))
        db.session.commit()
        db.session.add_all(
            [Account(email="new@example.com"), Account(email="taken@example.com")]
        )
        with pytest.raises(IntegrityError):
            db.session.commit()
        db.session.rollback()
    assert registered(app, postreg, recorder) == ["taken@example.com"]


def _payload_user(app):
    """The user of the (only) outbox event's stored payload."""
    (row,) = events(app)
    return json.loads(row["payload"])["user"]


def test_a_user_updated_after_its_first_flush_fires_as_committed(
    app, postreg, recorder
):
    """``flush()`` for the id, then more fields set before the commit: the hook
    (and the outbox payload a retry reads) get the committed row, with the
    event id of the first capture."""
    with app.app_context():
        account = Account(email="ann@example.com")
        db.session.add(account)
        db.session.flush()
        account.username = f"user{account.id}"
        account.email_verified = True
        db.session.flush()
        account.email = "ann@example.org"  # and once more, flushed by the commit
        db.session.commit()
        username = account.username
    assert registered(app, postreg, recorder) == ["ann@example.org"]
    (user, context), *_ = recorder.calls
    assert (user.username, user.email_verified) == (username, True)
    stored = _payload_user(app)
    assert (stored["username"], stored["email"]) == (username, "ann@example.org")
    assert [e["id"] for e in events(app)] == [context.event_id]


def test_a_field_a_later_flush_leaves_unloaded_keeps_its_first_value(
    app, postreg, recorder
):
    """A field set to a SQL expression (or expired) is not loaded after the
    flush, and a snapshot never loads with SQL: it keeps what the first flush
    saw rather than going empty; the other fields are revised."""
    with app.app_context():
        account = Account(email="ann@example.com", username="ann")
        db.session.add(account)
        db.session.flush()
        account.email = sa.func.lower("ANN@EXAMPLE.ORG")
        account.username = "ann2"
        db.session.commit()
    assert postreg.join(10)
    (user, _), *_ = recorder.calls
    assert (user.username, user.email) == ("ann2", "ann@example.com")
    assert _payload_user(app)["email"] == "ann@example.com"


def test_a_user_updated_after_its_first_flush_fires_as_committed_in_memory(
    make_app,
):
    app, postreg = make_app(POSTREG_STORE="memory")
    seen = []
    postreg.hook(lambda user, context: seen.append(user.username), name="seen")
    with app.app_context():
        account = Account(email="ann@example.com")
        db.session.add(account)
        db.session.flush()
        account.username = f"user{account.id}"
        db.session.commit()
        username = account.username
    assert postreg.join(10)
    assert seen == [username]


@pytest.mark.savepoints
@pytest.mark.parametrize("savepoint", ["rolled back", "released"])
def test_an_update_in_a_savepoint_counts_only_if_the_savepoint_does(
    app, postreg, recorder, savepoint
):
    with app.app_context():
        account = Account(email="ann@example.com", username="ann")
        db.session.add(account)
        db.session.flush()
        nested = db.session.begin_nested()
        account.username = "changed"
        db.session.flush()
        if savepoint == "released":
            nested.commit()
        else:
            nested.rollback()
        db.session.commit()
        committed = db.session.scalar(sa.select(Account.username))
    assert committed == ("changed" if savepoint == "released" else "ann")
    assert registered(app, postreg, recorder) == ["ann@example.com"]
    assert recorder.calls[0][0].username == committed
    assert _payload_user(app)["username"] == committed


@pytest.mark.savepoints
def test_savepoint_rolled_back_outer_committed(app, postreg, recorder):
    with app.app_context():
        db.session.add(Account(email="outer@example.com"))
        savepoint = db.session.begin_nested()
        db.session.add(Account(email="inner@example.com"))
        db.session.flush()
        savepoint.rollback()
        db.session.commit()
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Account)) == 1
    assert registered(app, postreg, recorder) == ["outer@example.com"]


@pytest.mark.savepoints
def test_savepoint_released_outer_rolled_back(app, postreg, recorder):
    with app.app_context():
        with db.session.begin_nested():
            db.session.add(Account(email="inner@example.com"))
        db.session.rollback()
    assert registered(app, postreg, recorder) == []


@pytest.mark.savepoints
def test_nested_and_sibling_savepoints(app, postreg, recorder):
    with app.app_context():
        db.session.add(Account(email="root@example.com"))
        with db.session.begin_nested():  # released
            db.session.add(Account(email="a@example.com"))
            inner = db.session.begin_nested()
            db.session.add(Account(email="a-inner-rolled-back@example.com"))
            db.session.flush()
            inner.rollback()
            with db.session.begin_nested():  # released, inside a released one
                db.session.add(Account(email="a-inner-kept@example.com"))
        sibling = db.session.begin_nested()  # rolled back sibling
        db.session.add(Account(email="b-rolled-back@example.com"))
        db.session.flush()
        sibling.rollback()
        with db.session.begin_nested():  # released sibling
            db.session.add(Account(email="c@example.com"))
        db.session.commit()
    assert registered(app, postreg, recorder) == [
        "a-inner-kept@example.com",
        "a@example.com",
        "c@example.com",
        "root@example.com",
    ]


def test_two_commits_in_one_session(app, postreg, recorder):
    with app.app_context():
        db.session.add(Account(email="first@example.com"))
        db.session.commit()
        db.session.add(Account(email="second@example.com"))
        db.session.commit()
    assert registered(app, postreg, recorder) == [
        "first@example.com",
        "second@example.com",
    ]
    ids = {ctx.event_id for _, ctx in recorder.calls}
    assert len(ids) == 2


def test_session_removed_without_commit(app, postreg, recorder):
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.flush()
        db.session.remove()
    assert registered(app, postreg, recorder) == []


def test_request_without_commit_fires_nothing(app, postreg, recorder):
    @app.post("/half")
    def half():
        db.session.add(Account(email="half@example.com"))
        db.session.flush()
        return "flushed"  # teardown removes the session: rollback

    assert app.test_client().post("/half").status_code == 200
    assert registered(app, postreg, recorder) == []


def test_subclass_fires_other_model_does_not(app, postreg, recorder):
    with app.app_context():
        db.session.add(StaffAccount(email="staff@example.com"))
        db.session.add(Post(title="hello"))
        db.session.commit()
        # Updating an existing user is not a registration.
        account = db.session.scalar(sa.select(Account))
        account.username = "renamed"
        db.session.commit()
    assert registered(app, postreg, recorder) == ["staff@example.com"]


def test_five_apps_each_hook_called_once(make_app, new_db_url):
    from flask import current_app

    from flask_postreg import PostReg

    shared = PostReg()
    seen = []
    shared.hook(
        lambda user, ctx: seen.append((current_app.name, user.email)), name="seen"
    )
    apps = [
        make_app(shared, name=f"tenant{i}", url=new_db_url(f"t{i}"))[0]
        for i in range(5)
    ]
    for app in apps:
        with app.app_context():
            db.session.add(Account(email=f"{app.name}@example.com"))
            db.session.commit()
    assert shared.join(10)
    assert sorted(seen) == sorted((a.name, f"{a.name}@example.com") for a in apps)
    tenants = {name for name, _ in seen}
    assert len(tenants) == 5
    for app in apps:
        assert_rows_match_committed(app, [f"{app.name}@example.com"])


def test_app_without_extension_never_fires(
    make_app, new_db_url, postreg, recorder, app
):
    other, _ = make_app(extension=False, url=new_db_url("other"))
    with other.app_context():
        db.session.add(Account(email="elsewhere@example.com"))
        db.session.commit()
    assert "postreg" not in other.extensions
    assert registered(app, postreg, recorder) == []
    with other.app_context():  # the tables exist there (create_all), but empty
        assert db.session.scalar(sa.text("SELECT count(*) FROM postreg_events")) == 0


def test_listeners_installed_once_across_apps(make_app, new_db_url):
    from sqlalchemy.orm import Session

    from flask_postreg import capture

    for i in range(3):
        make_app(url=new_db_url(f"l{i}"))
    for name, fn in capture._LISTENERS:
        assert sa.event.contains(Session, name, fn)
    make_app(url=new_db_url("l9"))
    ours = [fn for fn in Session().dispatch.after_commit if fn is capture.after_commit]
    assert len(ours) == 1


def test_an_app_cli_command_that_creates_a_user_fires(app, postreg, recorder):
    """DESIGN: any ORM path fires; a CLI command has an app context but no
    request (its context has no IP or language from a request)."""

    @app.cli.command("create-user")
    def create_user():
        db.session.add(Account(email="cli@example.com"))
        db.session.commit()

    result = app.test_cli_runner().invoke(args=["create-user"])
    assert result.exit_code == 0, result.output
    assert registered(app, postreg, recorder) == ["cli@example.com"]
    _user, context = recorder.calls[0]
    assert context.request is None


def test_core_insert_fires_nothing_but_emit_does(app, postreg, recorder):
    with app.app_context():
        db.session.execute(sa.insert(Account), [{"email": "bulk@example.com"}])
        db.session.commit()
        assert postreg.join(10)
        assert recorder.emails == []
        account = db.session.scalar(
            sa.select(Account).filter_by(email="bulk@example.com")
        )
        event = postreg.emit(account)
        postreg.emit(User(id="u-9", email="plain@example.com"))
    assert registered(app, postreg, recorder, emitted=["plain@example.com"]) == [
        "bulk@example.com",
        "plain@example.com",
    ]
    assert event.user.email == "bulk@example.com"
    assert event.id in {row["id"] for row in events(app)}


def test_emit_right_after_the_commit_sends_the_whole_user(app, postreg, recorder):
    """The README's bulk recipe: save, commit, then emit. The commit expired the
    instance's attributes; emit loads them (one SELECT) instead of sending an
    empty user."""
    with app.app_context():
        account = Account(email="saved@example.com", username="saved")
        with record_events(app):  # as bulk_save_objects would: no hooks
            db.session.add(account)
            db.session.commit()
        event = postreg.emit(account)
    assert (event.user.email, event.user.username) == ("saved@example.com", "saved")
    assert event.user.id is not None
    assert registered(app, postreg, recorder) == ["saved@example.com"]


def test_emit_after_the_commit_with_a_pool_of_one_connection(make_app, recorder):
    """Loading what the commit expired must not keep the pool's only connection
    in the app's session while emit() needs one for the outbox rows: it used
    to wait for the pool's timeout and fail. A session already closed works
    too (database store): the row is read on emit()'s own connection."""

    def posts(account):  # a field read with SQL, as through a relationship
        session = sa.orm.object_session(account)
        query = sa.select(sa.func.count(Post.id)).where(Post.author_id == account.id)
        return f"{session.scalar(query)} posts"

    app, postreg = make_app(
        SQLALCHEMY_ENGINE_OPTIONS={
            "pool_size": 1,
            "max_overflow": 0,
            "pool_timeout": 1,
        },
        POSTREG_USER_FIELDS={"name": posts},
    )
    postreg.hook(recorder, name="recorder")
    with app.app_context():
        for email in ("one@example.com", "two@example.com"):
            with record_events(app):  # as a bulk path would: no hooks
                db.session.add(Account(email=email, username=email[:3]))
                db.session.commit()
        one, two = db.session.scalars(sa.select(Account).order_by(Account.id)).all()
        db.session.commit()  # expires both
        event = postreg.emit(one)
        db.session.close()  # two is now detached, its attributes expired
        detached = postreg.emit(two)
        db.session.execute(sa.delete(Account).filter_by(email="one@example.com"))
        db.session.commit()
        with pytest.raises(PostRegError, match="no longer in the database"):
            postreg.emit(one)
    assert (event.user.email, event.user.username) == ("one@example.com", "one")
    assert (event.user.name, detached.user.name) == ("0 posts", "0 posts")
    (two_id,) = sa.inspect(two).identity
    assert (detached.user.email, detached.user.id) == ("two@example.com", str(two_id))
    # one's row is gone since: its event stays, like an emitted User's.
    assert registered(app, postreg, recorder, emitted=["one@example.com"]) == [
        "one@example.com",
        "two@example.com",
    ]


def test_emit_rejects_other_objects(app, postreg):
    with app.app_context(), pytest.raises(TypeError, match="Account instance"):
        postreg.emit(Post(title="x"))


def test_hook_can_register_a_user_itself(app, postreg, recorder):
    """A hook inserting a user (a referral bonus account) fires hooks for it too."""

    def refer(user, context):
        if user.email == "ann@example.com":
            db.session.add(Account(email="ann-referral@example.com"))
            db.session.commit()

    postreg.hook(refer, name="refer")
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
    assert postreg.join(10)
    assert registered(app, postreg, recorder) == [
        "ann-referral@example.com",
        "ann@example.com",
    ]


@pytest.mark.savepoints
@pytest.mark.parametrize("outer", ["commit", "rollback"])
def test_session_joined_to_an_outer_transaction_waits_for_it(
    app, postreg, recorder, outer
):
    """SQLAlchemy's test-suite pattern: session.commit() releases a SAVEPOINT; only
    the outer connection's commit makes the row (and the hook) real."""
    from sqlalchemy.orm import Session

    with app.app_context(), db.engine.connect() as conn:
        trans = conn.begin()
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        session.add(Account(email="joined@example.com"))
        session.commit()
        session.close()
        assert postreg.join(10)
        assert recorder.emails == []  # nothing before the outer transaction ends
        trans.commit() if outer == "commit" else trans.rollback()
    expected = ["joined@example.com"] if outer == "commit" else []
    assert registered(app, postreg, recorder) == expected


@pytest.mark.savepoints
@pytest.mark.parametrize("savepoint", ["release", "rollback"])
def test_a_savepoint_of_the_outer_transaction_decides_for_what_it_holds(
    app, postreg, recorder, savepoint
):
    """A session joined to an outer transaction registers one user before the
    outer code's SAVEPOINT and one inside it; rolling the savepoint back drops
    the second only, releasing it keeps both (the outer commit decides)."""
    from sqlalchemy.orm import Session

    def register(conn, email):
        session = Session(bind=conn, join_transaction_mode="create_savepoint")
        session.add(Account(email=email))
        session.commit()
        session.close()

    with app.app_context(), db.engine.connect() as conn:
        trans = conn.begin()
        register(conn, "before@example.com")
        inner = conn.begin_nested()
        register(conn, "inside@example.com")
        inner.commit() if savepoint == "release" else inner.rollback()
        trans.commit()
    expected = ["before@example.com"]
    if savepoint == "release":
        expected.append("inside@example.com")
    assert registered(app, postreg, recorder) == sorted(expected)


@pytest.mark.parametrize("after", ["close", "begin"])
def test_hooks_of_an_outer_transaction_run_after_its_commit(make_app, after):
    """SQLAlchemy's ``commit`` event comes before the database's COMMIT: handing
    over there ran a (sync) hook that could not see its user, and its outcome
    write waited on the uncommitted rows. They run once the COMMIT is done: when
    the connection goes back to the pool, or begins its next transaction."""
    from sqlalchemy.orm import Session

    app, postreg = make_app(POSTREG_BACKEND="sync")
    seen = []

    @postreg.hook(name="sees", max_attempts=1)
    def sees(user, context):
        seen.append(db.session.scalar(sa.select(sa.func.count(Account.id))))

    with app.app_context(), db.engine.connect() as conn:
        trans = conn.begin()
        session = Session(bind=conn)
        session.add(Account(email="joined@example.com"))
        session.commit()
        session.close()
        trans.commit()
        if after == "begin":
            with conn.begin():
                assert seen == [1]
    assert seen == [1]
    outcomes = app.extensions["postreg"].store.deliveries(hook="sees")
    assert [(o.status, o.attempts) for o in outcomes] == [("succeeded", 1)]


@pytest.mark.parametrize("after", ["close", "begin"])
def test_an_outer_transaction_whose_commit_fails_runs_no_hooks(
    app, postreg, recorder, db_url, after, caplog
):
    """The COMMIT itself fails (a constraint deferred to it; likewise a
    serialization failure or a lost connection) after SQLAlchemy's ``commit``
    event: nothing was committed, so no hook runs, whatever the connection
    does next."""
    from sqlalchemy.orm import Session

    with app.app_context():
        with db.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE guard (ref INTEGER REFERENCES accounts (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
        try:
            with db.engine.connect() as conn:
                if db_url.startswith("sqlite"):  # off by default; set outside BEGIN
                    conn.exec_driver_sql("PRAGMA foreign_keys = ON")
                    conn.commit()
                trans = conn.begin()
                session = Session(bind=conn)
                session.add(Account(email="joined@example.com"))
                session.commit()
                session.close()
                conn.exec_driver_sql("INSERT INTO guard VALUES (999999)")  # no id
                with (
                    caplog.at_level(logging.WARNING, logger="flask_postreg"),
                    pytest.raises(IntegrityError),
                ):
                    trans.commit()
                if after == "begin":
                    trans.rollback()
                    conn.begin()  # an app's next transaction on this connection
            # pysqlite keeps SQLite's transaction open after a failed COMMIT, even
            # in the pool: closing the connection ends it.
            db.engine.dispose()
            committed = db.session.scalars(sa.select(Account.email)).all()
            db.session.remove()
        finally:
            with db.engine.begin() as conn:
                conn.exec_driver_sql("DROP TABLE guard")
    assert postreg.join(10)
    assert committed == []
    assert recorder.emails == []
    assert_rows_match_committed(app, [])
    assert "its 1 registration(s) run no hooks" in caplog.text
    # The listener that saw it ignores statement errors: the outbox INSERTs
    # of this engine's registrations keep the driver's path.
    from flask_postreg.store.statements import watched

    with app.app_context(), db.engine.connect() as conn:
        assert db.engine.dialect.dispatch.handle_error
        assert not watched(conn)


@pytest.mark.parametrize("savepoint", ["none", "before", "after"])
def test_an_outer_transaction_rolled_back_after_its_connection_is_lost(
    app, postreg, recorder, savepoint
):
    """The joined transaction's connection is lost (invalidated); the app rolls
    back (a SAVEPOINT begun before or after the registration first): no
    rollback may fail on our listeners, and nothing runs."""
    from sqlalchemy.orm import Session

    with app.app_context(), db.engine.connect() as conn:
        trans = conn.begin()
        nested = conn.begin_nested() if savepoint == "before" else None
        session = Session(bind=conn)
        session.add(Account(email="joined@example.com"))
        session.commit()
        session.close()
        if savepoint == "after":
            nested = conn.begin_nested()
        conn.invalidate()
        if nested is not None:
            nested.rollback()
        trans.rollback()
    assert registered(app, postreg, recorder) == []


@pytest.mark.parametrize("outer", ["commit", "rollback"])
def test_session_with_the_model_bound_to_an_outer_transaction_waits_for_it(
    app, postreg, recorder, outer
):
    """``Session(binds={User: conn})``: ``session.bind`` is None, the model's bind
    is the connection, in a transaction the session did not begin."""
    from sqlalchemy.orm import Session

    with app.app_context(), db.engine.connect() as conn:
        trans = conn.begin()
        session = Session(binds={Account: conn})
        session.add(Account(email="bound@example.com"))
        session.commit()
        session.close()
        assert postreg.join(10)
        assert recorder.emails == []
        trans.commit() if outer == "commit" else trans.rollback()
    expected = ["bound@example.com"] if outer == "commit" else []
    assert registered(app, postreg, recorder) == expected


def test_user_deleted_before_the_commit_fires_nothing(app, postreg, recorder):
    """Added, flushed (captured, outbox rows written), deleted, committed: the
    user never existed outside the transaction; its rows go with it. Another
    user of the same transaction still fires."""
    with app.app_context():
        gone = Account(email="gone@example.com")
        db.session.add_all([gone, Account(email="kept@example.com")])
        db.session.flush()
        db.session.delete(gone)
        db.session.commit()
    assert registered(app, postreg, recorder) == ["kept@example.com"]
    assert [e["email"] for e in events(app)] == ["kept@example.com"]


def test_user_deleted_by_a_delete_statement_before_the_commit_fires_nothing(
    app, postreg, recorder
):
    """The same with ``session.execute(delete(...))``: no flush sees the user
    go, but the statement marks the instance deleted."""
    with app.app_context():
        db.session.add_all(
            [Account(email="ghost@example.com"), Account(email="kept@example.com")]
        )
        db.session.flush()
        db.session.execute(sa.delete(Account).filter_by(email="ghost@example.com"))
        db.session.commit()
    assert registered(app, postreg, recorder) == ["kept@example.com"]
    assert [e["email"] for e in events(app)] == ["kept@example.com"]


@pytest.mark.savepoints
def test_root_commit_with_a_savepoint_open_still_checks_delete_statements(
    app, postreg, recorder
):
    """Committing the root transaction while a ``begin_nested()`` is open
    commits both at once; ``session.commit()`` too."""
    with app.app_context():
        db.session.add_all(
            [Account(email="ghost@example.com"), Account(email="kept@example.com")]
        )
        db.session.flush()
        root = db.session().get_transaction()
        db.session.begin_nested()
        db.session.execute(sa.delete(Account).filter_by(email="ghost@example.com"))
        root.commit()
        db.session.add(Account(email="later@example.com"))
        db.session.flush()
        db.session.begin_nested()
        db.session.execute(sa.delete(Account).filter_by(email="later@example.com"))
        db.session.commit()
    assert registered(app, postreg, recorder) == ["kept@example.com"]


def test_a_failed_delete_check_does_not_lose_the_registration(
    app, postreg, recorder, monkeypatch, caplog
):
    """The check's SELECT fails (a statement timeout, a cancel): on PostgreSQL
    that aborted the registration's transaction, whose COMMIT then rolled back
    without a word while hooks ran. In its SAVEPOINT, the commit stands and the
    hooks run, as they did before the check existed."""

    def failing_check(connection, captured):
        connection.execute(sa.text("SELECT * FROM no_such_table"))

    monkeypatch.setattr(capture, "_rows_gone", failing_check)
    with app.app_context(), caplog.at_level(logging.ERROR, logger="flask_postreg"):
        db.session.add_all(
            [Account(email="ghost@example.com"), Account(email="kept@example.com")]
        )
        db.session.flush()
        db.session.execute(sa.delete(Account).filter_by(email="nobody@example.com"))
        db.session.commit()
    assert "could not check for captured users a DELETE removed" in caplog.text
    assert registered(app, postreg, recorder) == [
        "ghost@example.com",
        "kept@example.com",
    ]


@pytest.mark.savepoints
def test_delete_statements_undone_or_kept_by_savepoints(app, postreg, recorder):
    """A DELETE statement in a SAVEPOINT rolled back undoes nothing for the
    user: it fires. One in a released SAVEPOINT stands (here the legacy
    ``Query.delete()``): it does not."""
    with app.app_context():
        db.session.add_all(
            [Account(email="undone@example.com"), Account(email="gone@example.com")]
        )
        db.session.flush()
        savepoint = db.session.begin_nested()
        db.session.execute(sa.delete(Account).filter_by(email="undone@example.com"))
        savepoint.rollback()
        with db.session.begin_nested():
            db.session.query(Account).filter_by(email="gone@example.com").delete()
        db.session.commit()
    assert registered(app, postreg, recorder) == ["undone@example.com"]


@pytest.mark.savepoints
def test_delete_undone_by_a_savepoint_rollback_still_fires(app, postreg, recorder):
    """The delete's flush dropped the user's deliveries; rolling its SAVEPOINT
    back brings the user (and, in database mode, its outbox rows) back: its hooks
    run. A delete in a released savepoint stands, unless an outer one is rolled
    back."""
    with app.app_context():
        undone = Account(email="undone@example.com")
        released = Account(email="released@example.com")
        outer = Account(email="outer@example.com")
        db.session.add_all([undone, released, outer])
        db.session.flush()
        savepoint = db.session.begin_nested()
        db.session.delete(undone)
        db.session.flush()
        savepoint.rollback()
        with db.session.begin_nested():
            db.session.delete(released)
        savepoint = db.session.begin_nested()
        with db.session.begin_nested():
            db.session.delete(outer)
        savepoint.rollback()
        db.session.commit()
    assert registered(app, postreg, recorder) == [
        "outer@example.com",
        "undone@example.com",
    ]


def test_flush_of_some_objects_captures_only_those(app, postreg, recorder):
    import warnings

    with app.app_context():
        a, b = Account(email="a@example.com"), Account(email="b@example.com")
        db.session.add_all([a, b])
        with warnings.catch_warnings():  # flush(objects=) is deprecated, still used
            warnings.simplefilter("ignore")
            db.session.flush([a])
        db.session.commit()
    assert registered(app, postreg, recorder) == ["a@example.com", "b@example.com"]
    assert all(user.id is not None for user, _ in recorder.calls)
