"""Shared pieces of the benchmarks: apps, a user model, timing, output.

Every figure is a ratio (or a rate beside a ratio) against a baseline measured
in the same process and run, with rounds interleaved A B B A ... so slow drift
(CPU frequency, page cache, the database files growing) hits both sides alike.
Nothing here asserts on absolute times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import itertools
import logging
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import JSON
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_postreg import ConfigError
from flask_postreg import PostReg

# -- run settings ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """How big a run is; ``--quick`` is a smoke run, its figures are noisy."""

    quick: bool
    workdir: str

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


# -- apps --------------------------------------------------------------------

_app_ids = itertools.count(1)
_user_ids = itertools.count(1)


@dataclasses.dataclass
class BenchApp:
    """One Flask app with its own SQLite file, ``db`` object and user model."""

    app: Flask
    db: SQLAlchemy
    User: type
    postreg: PostReg | None
    path: str

    def new_user(self) -> Any:
        """A new, never-seen user (unique username and e-mail)."""
        n = next(_user_ids)
        return self.User(
            username=f"user{n}",
            email=f"user{n}@example.com",
            password_hash="pbkdf2:sha256:600000$bench$" + "0" * 64,
            user_metadata={"plan": "free"},
        )

    @property
    def state(self) -> Any:
        return self.app.extensions["postreg"]


def make_app(
    settings: Settings,
    label: str,
    *,
    postreg: dict[str, Any] | None = None,
    hooks: Sequence[Callable[..., Any]] = (),
    url: str | None = None,
) -> BenchApp:
    """A fresh app on a fresh SQLite file in the run's temp dir (or on ``url``,
    an empty database, e.g. PostgreSQL).

    ``postreg=None`` builds the baseline: the same model and database shape,
    without the extension. Otherwise it is the ``POSTREG_*`` config (short keys)
    and ``hooks`` are registered on a PostReg instance of this app's own.
    Raises :class:`ConfigError` as ``init_app`` does (an unavailable store).
    """

    class Base(DeclarativeBase):
        pass

    db = SQLAlchemy(model_class=Base)

    class User(db.Model):  # type: ignore[name-defined,misc]
        # The example app's model: what a typical app keeps about its users.
        __tablename__ = "users"

        id: Mapped[int] = mapped_column(primary_key=True)
        username: Mapped[str] = mapped_column(unique=True)
        email: Mapped[str] = mapped_column(unique=True)
        password_hash: Mapped[str]
        email_verified: Mapped[bool] = mapped_column(default=False)
        user_metadata: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
        app_metadata: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
        created_at: Mapped[dt.datetime] = mapped_column(
            default=lambda: dt.datetime.now(dt.timezone.utc)
        )

    n = next(_app_ids)
    path = os.path.join(settings.workdir, f"{n:02d}-{label}.sqlite")
    app = Flask(f"bench_{label}_{n}")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url or "sqlite:///" + path,
        SECRET_KEY="bench",
    )
    ext = None
    if postreg is not None:
        app.config.update({"POSTREG_" + k: v for k, v in postreg.items()})
        db.init_app(app)
        ext = PostReg()
        for hook in hooks:
            ext.hook(hook)
        ext.init_app(app, db=db, user_model=User)
    else:
        db.init_app(app)
    with app.app_context():
        db.create_all()
    return BenchApp(app=app, db=db, User=User, postreg=ext, path=path)


def database_store_app(
    settings: Settings, label: str, **kwargs: Any
) -> tuple[BenchApp | None, str]:
    """An app on the durable store, or None and why it is not available.

    ``POSTREG_STORE="database"`` raising :class:`ConfigError` means this build
    has no durable store. A build that accepts the value but still keeps
    outcomes in a non-durable store is reported as unavailable too, so a memory
    figure is never printed under the database label.
    """
    config = {"STORE": "database", **kwargs.pop("postreg", {})}
    try:
        bench = make_app(settings, label, postreg=config, **kwargs)
    except ConfigError as exc:
        return None, f"ConfigError: {exc}"
    if not getattr(bench.state.store, "durable", False):
        reason = (
            f"POSTREG_STORE='database' was accepted but the store is"
            f" {type(bench.state.store).__name__} (not durable)"
        )
        close(bench)
        return None, reason
    return bench, ""


def use_wal(bench: BenchApp) -> BenchApp:
    """Switch the app's SQLite file to write-ahead logging (the mode is kept in
    the file; the engine reconnects)."""
    with contextlib.closing(sqlite3.connect(bench.path)) as conn:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        raise RuntimeError(f"{bench.path}: journal_mode is {mode}, not wal")
    with bench.app.app_context():
        bench.db.engine.dispose()
    return bench


def close(bench: BenchApp, timeout: float = 10.0) -> None:
    """Stop the app's pool (so the process exits promptly) and its engine."""
    if bench.postreg is not None:
        bench.postreg.shutdown(timeout=timeout)
    with bench.app.app_context():
        bench.db.session.remove()
        bench.db.engine.dispose()


def commit_loop(bench: BenchApp, n: int) -> float:
    """``n`` commits of one new user each, in a closed loop; seconds taken."""
    with bench.app.app_context():
        session = bench.db.session
        new_user = bench.new_user
        start = time.perf_counter()
        for _ in range(n):
            session.add(new_user())
            session.commit()
        elapsed = time.perf_counter() - start
        session.remove()
    return elapsed


# -- timing ------------------------------------------------------------------


def interleave(
    variants: dict[str, Callable[[], Any]], rounds: int
) -> dict[str, list[Any]]:
    """Run each variant once per round, alternating the order (ABBA...).

    Returns every variant's results, in round order.
    """
    names = list(variants)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            results[name].append(variants[name]())
    return results


def paired_ratios(candidate: Sequence[float], baseline: Sequence[float]) -> list[float]:
    return [c / b for c, b in zip(candidate, baseline, strict=True)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank on the sorted samples."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def spread(values: Sequence[float]) -> str:
    """``min-max`` of a few ratios, to show how noisy a median is."""
    return f"{min(values):.2f}-{max(values):.2f}"


# -- output ------------------------------------------------------------------


class Report:
    """Collects figure lines; prints each as it comes (one line per figure)."""

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.figures: list[tuple[str, str, str, bool | None]] = []

    def figure(
        self,
        label: str,
        value: str,
        goal: str,
        met: bool | None = None,
        note: str = "",
    ) -> None:
        """``label: value (goal ...)``, then ``ok``/``MISSED`` when it has a bound."""
        mark = "" if met is None else ("  ok" if met else "  MISSED")
        extra = f"  [{note}]" if note else ""
        self.figures.append((label, value, goal, met))
        print(f"{label}: {value} ({goal}){mark}{extra}", file=self.out, flush=True)

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def missed(self) -> list[str]:
        return [label for label, _, _, met in self.figures if met is False]


def ratio_text(value: float) -> str:
    return f"{value:.2f}x"


def rate_text(value: float) -> str:
    return f"{value:,.0f}"


# -- the core's log ----------------------------------------------------------


class LogCounter(logging.Handler):
    """Counts the core's WARNING+ records (drops are expected in the burst).

    Installed on the ``flask_postreg`` logger so those records are counted, not
    printed between the figure lines.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] = self.counts.get(record.levelname, 0) + 1
        if record.levelname not in self.first:
            self.first[record.levelname] = record.getMessage()[:200]


@dataclasses.dataclass
class Run:
    settings: Settings
    report: Report
    log: LogCounter


@contextlib.contextmanager
def workdir() -> Iterator[str]:
    """A temp dir for the run's SQLite files, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="postreg-bench-") as path:
        yield path
