"""Where the database store's registration overhead goes (SQLite file).

Three loops beside the bare ORM commit loop of ``overhead`` (same model, one
no-op hook, rounds interleaved, median of per-round ratios):

- *write path only*: ``POSTREG_RUN_IN_WEB = False`` and no polling during the
  run, so each registration writes its outbox rows and nothing runs in this
  process: the snapshot, the two INSERTs and the bigger commit, without the
  pool and the outcome writer.
- *ideal write path*: the bare ORM loop plus the same event and delivery
  rows, inserted on the driver's cursor in ``after_flush`` with no other Python
  of ours (the payload a template, nothing run after the commit): what any
  extension writing this outbox pays at least. ``1.25`` minus this ratio is
  what the budget leaves for the snapshot, the payload's JSON, the hand-over,
  the hook's run and the outcome.
- *raw sqlite3 floor*: plain ``sqlite3`` (no SQLAlchemy, no Python of ours)
  committing the user row alone, then the user row plus the same event and
  delivery rows on a file with the same tables. The difference is what SQLite
  itself needs for those rows on this disk; it is printed as a share of the ORM
  baseline's commit, the part of the ratio no code of ours can remove.
- *WAL*: the whole database store (hooks run) against the bare loop, both on
  files in ``journal_mode=WAL``. A commit there writes each page once, so the
  outbox rows cost little disk time, and the baseline commit is faster: what is
  left is mostly our Python, weighed against a smaller commit.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from flask_postreg.events import Context
from flask_postreg.events import Event
from flask_postreg.events import User
from flask_postreg.events import new_event_id
from flask_postreg.store.tables import tables_for

from .common import BenchApp
from .common import Run
from .common import close
from .common import commit_loop
from .common import database_store_app
from .common import interleave
from .common import make_app
from .common import median
from .common import paired_ratios
from .common import ratio_text
from .common import spread
from .common import use_wal

NAME = "breakdown"

_ids = itertools.count(1)

USER_SQL = (
    "INSERT INTO users (username, email, password_hash, email_verified,"
    " user_metadata, app_metadata, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
EVENT_SQL = (
    "INSERT INTO postreg_events (id, user_id, payload, created_at, run_id)"
    " VALUES (?, ?, ?, ?, ?)"
)
DELIVERY_SQL = (
    "INSERT INTO postreg_deliveries (event_id, hook, status, attempts, claim,"
    " locked_until, next_attempt_at, created_at, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def noop_hook(user: Any, context: Any) -> None:
    """The no-op hook of the budget."""


def _raw_loop(path: str, n: int, *, outbox: bool) -> float:
    """``n`` commits through plain sqlite3; with ``outbox`` also the event and
    delivery rows a registration writes. Seconds taken."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        start = time.perf_counter()
        for _ in range(n):
            i = next(_ids)
            now = time.time()
            conn.execute("BEGIN")
            cursor = conn.execute(
                USER_SQL,
                (
                    f"raw{i}",
                    f"raw{i}@example.com",
                    "pbkdf2:sha256:600000$bench$" + "0" * 64,
                    0,
                    '{"plan": "free"}',
                    "{}",
                    "2026-01-01 00:00:00.000000",
                ),
            )
            if outbox:
                event_id = new_event_id()
                user = User(
                    id=str(cursor.lastrowid),
                    username=f"raw{i}",
                    email=f"raw{i}@example.com",
                    user_metadata={"plan": "free"},
                )
                context = Context(event_id=event_id, tenant="bench")
                payload = Event(id=event_id, user=user, context=context).stored_json()
                conn.execute(EVENT_SQL, (event_id, user.id, payload, now, None))
                lease = now + 80.0
                conn.execute(
                    DELIVERY_SQL,
                    (event_id, "bench:noop", "running", 1, 1, lease, lease, now, now),
                )
            conn.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        conn.close()


#: The stored payload of a bench user (the size ours has), by user id.
PAYLOAD = (
    '{"user":{"id":"%s","tenant":"bench","username":"user1","email":'
    '"user1@example.com","emailVerified":false,"phoneNumber":null,'
    '"phoneNumberVerified":false,"user_metadata":{"plan":"free"},"app_metadata":{}},'
    '"context":{"requestLanguage":null,"connection":{"id":"con_users","name":'
    '"Username-Password-Authentication","tenant":"bench"},"tenant":"bench",'
    '"request":null}}'
)


def _ideal(bench: BenchApp) -> Any:
    """An ``after_flush`` listener writing the outbox rows of ``bench``'s new
    users on the flush's driver cursor, and nothing else (see the docstring).
    The tables are created on ``bench``'s database first."""
    tables_for(bench.db.metadata)
    with bench.app.app_context():
        bench.db.create_all()
    model = bench.User

    def after_flush(session: Session, flush_context: Any) -> None:
        for obj in session.new:
            if type(obj) is model:
                cursor = session.connection().connection.cursor()
                now, event_id = time.time(), new_event_id()
                cursor.execute(
                    EVENT_SQL, (event_id, str(obj.id), PAYLOAD % obj.id, now, None)
                )
                lease = now + 80.0
                cursor.execute(
                    DELIVERY_SQL,
                    (event_id, "bench:noop", "running", 1, 1, lease, lease, now, now),
                )
                cursor.close()

    return after_flush


def run(run: Run) -> None:
    settings, report = run.settings, run.report
    n = settings.pick(2000, 300)
    rounds = settings.pick(5, 3)
    baseline = make_app(settings, "breakdown-baseline")
    written, why = database_store_app(
        settings,
        "breakdown-write-only",
        postreg={"RUN_IN_WEB": False, "POLL_INTERVAL": 3600.0},
        hooks=[noop_hook],
    )
    if written is None:
        close(baseline)
        report.line(f"database store: not available in this build ({why})")
        return
    ideal = make_app(settings, "breakdown-ideal")
    ideal_listener = _ideal(ideal)
    sa.event.listen(Session, "after_flush", ideal_listener)
    raw_user = make_app(settings, "breakdown-raw-user")
    raw_outbox, _ = database_store_app(settings, "breakdown-raw-outbox")
    assert raw_outbox is not None
    wal_baseline = use_wal(make_app(settings, "breakdown-wal-baseline"))
    wal, _ = database_store_app(
        settings,
        "breakdown-wal-database",
        postreg={"MAX_QUEUE": 100_000},
        hooks=[noop_hook],
    )
    assert wal is not None and wal.postreg is not None
    use_wal(wal)
    wal_postreg = wal.postreg

    def wal_loop() -> float:
        seconds = commit_loop(wal, n)
        wal_postreg.join(timeout=120)  # untimed, as in ``overhead``
        return seconds

    try:
        commit_loop(baseline, 50)
        commit_loop(written, 50)
        commit_loop(ideal, 50)
        _raw_loop(raw_user.path, 50, outbox=False)
        _raw_loop(raw_outbox.path, 50, outbox=True)
        commit_loop(wal_baseline, 50)
        commit_loop(wal, 50)
        results = interleave(
            {
                "baseline": lambda: commit_loop(baseline, n),
                "written": lambda: commit_loop(written, n),
                "ideal": lambda: commit_loop(ideal, n),
                "raw user": lambda: _raw_loop(raw_user.path, n, outbox=False),
                "raw outbox": lambda: _raw_loop(raw_outbox.path, n, outbox=True),
                "wal baseline": lambda: commit_loop(wal_baseline, n),
                "wal": wal_loop,
            },
            rounds,
        )
    finally:
        sa.event.remove(Session, "after_flush", ideal_listener)
        for bench in (
            baseline,
            written,
            ideal,
            raw_user,
            raw_outbox,
            wal_baseline,
            wal,
        ):
            close(bench)
    base = results["baseline"]
    write_only = paired_ratios(results["written"], base)
    report.figure(
        "database store, write path only (nothing run in this process)",
        ratio_text(median(write_only)),
        "breakdown",
        None,
        f"{n} commits x {rounds} rounds, spread {spread(write_only)}",
    )
    floor = median(paired_ratios(results["ideal"], base))
    ideal_spread = spread(paired_ratios(results["ideal"], base))
    report.figure(
        "ideal write path: the ORM loop plus the outbox rows on the driver's"
        " cursor, nothing else",
        ratio_text(floor),
        "breakdown",
        None,
        f"leaves {max(1.25 - floor, 0):.2f}x of the 1.25x budget for all the rest,"
        f" spread {ideal_spread}",
    )
    added = [
        (outbox - user) / orm
        for outbox, user, orm in zip(
            results["raw outbox"], results["raw user"], base, strict=True
        )
    ]
    raw_ms = median(results["raw user"]) / n * 1e3
    outbox_ms = median(results["raw outbox"]) / n * 1e3
    report.figure(
        "raw sqlite3 floor: the same outbox rows, as a share of the ORM commit",
        f"+{median(added):.2f}x",
        "breakdown",
        None,
        f"raw commit {raw_ms:.2f} -> {outbox_ms:.2f} ms, ORM baseline"
        f" {median(base) / n * 1e3:.2f} ms, spread {spread(added)}",
    )
    wal_ratio = paired_ratios(results["wal"], results["wal baseline"])
    report.figure(
        "database store on WAL-mode files (journal_mode=WAL), commit loop only",
        ratio_text(median(wal_ratio)),
        "breakdown",
        None,
        f"baseline {median(results['wal baseline']) / n * 1e3:.2f} ms/commit,"
        f" spread {spread(wal_ratio)}",
    )
