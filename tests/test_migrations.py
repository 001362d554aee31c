"""Flask-Migrate (Alembic autogenerate) creates the outbox as the store expects.

The README promises that ``flask db migrate && flask db upgrade`` is one way to
create the tables: the generated script must carry what ``db.create_all()``
would make (SQLite's WITHOUT ROWID, the partial indexes), and autogenerate must
see nothing left to change afterwards, or every later migration of the app
would carry noise about our tables.
"""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from flask_postreg.store.tables import table_problems

from .conftest import BOTH_DATABASES
from .models import Account
from .models import db
from .outbox import assert_rows_match_committed
from .outbox import store
from .test_cli_process import BIN
from .test_cli_process import ROOT
from .test_cli_process import env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("db_url", BOTH_DATABASES, indirect=True),
]


def flask(url, folder, *args):
    return subprocess.run(
        [str(BIN / "flask"), "--app", "tests.migrate_app", *args],
        cwd=ROOT,
        env=env(MIGRATE_DB=url, MIGRATE_DIR=str(folder)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_flask_migrate_creates_the_outbox_and_then_sees_no_change(
    db_url, tmp_path, make_app
):
    folder = tmp_path / "migrations"
    for args in (("db", "init"), ("db", "migrate", "-m", "users"), ("db", "upgrade")):
        done = flask(db_url, folder, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)

    (script,) = (folder / "versions").glob("*.py")
    text = pathlib.Path(script).read_text()
    for name in ("postreg_events", "postreg_deliveries", "postreg_hook_settings"):
        assert f"op.create_table('{name}'" in text, text
    dialect = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    assert f"{dialect}_where=sa.text(\"status IN ('pending', 'running')\")" in text
    assert f"{dialect}_where=sa.text('run_id IS NOT NULL')" in text
    assert text.count("sqlite_with_rowid=False") == 2

    checked = flask(db_url, folder, "postreg", "check", "--json")
    assert checked.returncode == 0, (checked.stdout, checked.stderr)
    warnings = [c for c in json.loads(checked.stdout)["checks"] if c["warning"]]
    assert not [c for c in warnings if c["kind"] == "store"], warnings

    # The app under test: tables already there (create_all creates nothing).
    app, postreg = make_app(url=db_url)
    s = store(app)
    engine = s.engine
    with engine.connect() as conn:
        assert table_problems(sa.inspect(conn), (s.t.events, s.t.deliveries)) == (
            [],
            [],
        )
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []
        if dialect == "sqlite":
            rows = conn.exec_driver_sql("SELECT name, sql FROM sqlite_master")
            ddl = {name: sql for name, sql in rows}
            assert ddl["postreg_events"].rstrip().endswith("WITHOUT ROWID")
            assert ddl["postreg_deliveries"].rstrip().endswith("WITHOUT ROWID")
            assert (
                "WHERE status IN ('pending', 'running')"
                in (ddl["ix_postreg_deliveries_due"])
            )

    postreg.hook(lambda u, c: None, name="noop")
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
    assert postreg.join(10)
    assert_rows_match_committed(app, ["ann@example.com"])
