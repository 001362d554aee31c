"""Drain throughput: how fast the pool gets through no-op hook deliveries.

Two figures per store, each a rate beside a ratio to a baseline run in the
same process, rounds interleaved, median of the rounds:

- *registrations*: register ``N`` users (one commit each), time from the
  first commit until ``join()`` returns: events/s. Baseline: the same loop in
  an app without the extension (its rate is the ceiling the commit sets).
- *registrations on PostgreSQL* (database store): the same, on a throwaway
  PostgreSQL server started with ``tests/postgres.py`` (the test fixture's
  module) when the binaries are there; the baseline is the bare commit loop on
  another database of that server.
- *emit, no database*: ``postreg.emit(flask_postreg.User(...))`` ``N`` times,
  then ``join()``: the dispatch path alone (snapshot, queue, worker, app
  context, signal, record). Baseline: a bare ``ThreadPoolExecutor`` with the
  same number of workers running the same no-op function, so the ratio is
  the price of everything the extension does per delivery.
"""

from __future__ import annotations

import concurrent.futures
import time

from flask_postreg import User

from .common import BenchApp
from .common import Run
from .common import close
from .common import commit_loop
from .common import database_store_app
from .common import interleave
from .common import make_app
from .common import median
from .common import paired_ratios
from .common import rate_text
from .overhead import noop_hook

NAME = "drain"

WORKERS = 4  # POSTREG_MAX_WORKERS' default


def _registrations(bench: BenchApp, n: int) -> float:
    """Seconds from the first commit to the last hook done."""
    assert bench.postreg is not None
    start = time.perf_counter()
    commit_loop(bench, n)
    if not bench.postreg.join(timeout=120):
        raise RuntimeError("the pool did not drain within 120 s")
    return time.perf_counter() - start


def _emits(bench: BenchApp, users: list[User]) -> float:
    assert bench.postreg is not None
    postreg, app = bench.postreg, bench.app
    start = time.perf_counter()
    for user in users:
        postreg.emit(user, app=app)
    if not postreg.join(timeout=120):
        raise RuntimeError("the pool did not drain within 120 s")
    return time.perf_counter() - start


def _executor(pool: concurrent.futures.ThreadPoolExecutor, users: list[User]) -> float:
    start = time.perf_counter()
    futures = [pool.submit(noop_hook, user, None) for user in users]
    concurrent.futures.wait(futures)
    return time.perf_counter() - start


def measure(
    run: Run,
    store: str,
    candidate: BenchApp,
    *,
    baseline_url: str | None = None,
    emits: bool = True,
    on: str = "",
) -> None:
    """The figures for ``store``; ``on`` names the database when not SQLite."""
    settings, report = run.settings, run.report
    n = settings.pick(2000, 300)
    rounds = settings.pick(5, 2)

    where = f"-{on.lower()}" if on else ""
    baseline = make_app(settings, f"drain-{store}{where}-baseline", url=baseline_url)
    try:
        commit_loop(baseline, 50)
        _registrations(candidate, 50)
        results = interleave(
            {
                "baseline": lambda: commit_loop(baseline, n),
                "candidate": lambda: _registrations(candidate, n),
            },
            rounds,
        )
    finally:
        close(baseline)
    rate = n / median(results["candidate"])
    base_rate = n / median(results["baseline"])
    ratio = median(paired_ratios(results["baseline"], results["candidate"]))
    report.figure(
        f"drain throughput, {store} store{' on ' + on if on else ''}, registrations",
        f"{rate_text(rate)} events/s",
        f"{ratio:.2f}x the bare commit loop's {rate_text(base_rate)}"
        " commits/s; goal: report",
        None,
        f"{n} registrations x {rounds} rounds, first commit to join()",
    )
    if emits:
        _measure_emits(run, store, candidate)


def _measure_emits(run: Run, store: str, candidate: BenchApp) -> None:
    settings, report = run.settings, run.report
    rounds = settings.pick(5, 2)
    m = settings.pick(20_000, 2_000)
    users = [
        User(id=str(i), username=f"emit{i}", email=f"emit{i}@example.com")
        for i in range(m)
    ]
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        _executor(pool, users[:100])
        _emits(candidate, users[:100])
        results = interleave(
            {
                "baseline": lambda: _executor(pool, users),
                "candidate": lambda: _emits(candidate, users),
            },
            rounds,
        )
    rate = m / median(results["candidate"])
    base_rate = m / median(results["baseline"])
    ratio = median(paired_ratios(results["baseline"], results["candidate"]))
    report.figure(
        f"drain throughput, {store} store, emit (no database)",
        f"{rate_text(rate)} events/s",
        f"{ratio:.2f}x a bare ThreadPoolExecutor({WORKERS})'s"
        f" {rate_text(base_rate)} calls/s; goal: report",
        None,
        f"{m} events x {rounds} rounds, first emit to join()",
    )
    if candidate.state.dropped:
        report.line(f"  warning: {candidate.state.dropped} deliveries dropped")


def run(run: Run) -> None:
    settings = run.settings
    config = {"STORE": "memory", "MAX_QUEUE": 100_000, "MAX_WORKERS": WORKERS}
    memory = make_app(settings, "drain-memory", postreg=config, hooks=[noop_hook])
    try:
        measure(run, "memory", memory)
    finally:
        close(memory)

    database, why = database_store_app(
        settings,
        "drain-database",
        postreg={"MAX_QUEUE": 100_000, "MAX_WORKERS": WORKERS},
        hooks=[noop_hook],
    )
    if database is None:
        run.report.line(f"database store: not available in this build ({why})")
        return
    try:
        measure(run, "database", database)
    finally:
        close(database)
    postgresql(run)


def postgresql(run: Run) -> None:
    """Registrations drained on the database store on PostgreSQL, if a throwaway
    server can be started here (the test suite's own helper, not a copy)."""
    try:
        from tests import postgres
    except ImportError as exc:
        run.report.line(f"database store on PostgreSQL: not measured ({exc})")
        return
    try:
        server = postgres.PostgresServer()
        server.start()
    except Exception as exc:
        run.report.line(f"database store on PostgreSQL: not measured ({exc})")
        return
    try:
        database, why = database_store_app(
            run.settings,
            "drain-postgresql",
            postreg={"MAX_QUEUE": 100_000, "MAX_WORKERS": WORKERS},
            hooks=[noop_hook],
            url=server.create_database("bench"),
        )
        if database is None:
            run.report.line(f"database store on PostgreSQL: not available ({why})")
            return
        try:
            measure(
                run,
                "database",
                database,
                on="PostgreSQL",
                baseline_url=server.create_database("bench"),
                emits=False,
            )
        finally:
            close(database)
    finally:
        server.stop()
