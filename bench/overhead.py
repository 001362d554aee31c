"""Registration overhead: the commit loop with the extension vs without it.

A closed loop of ``N`` commits of one new user each (``session.add(User(...));
session.commit()``) on a SQLite file, with one no-op hook, against the same
loop in a separate app without the extension (separate SQLite file, same model
shape). Rounds alternate baseline/candidate; the figure is the median of the
per-round ratios.

Two figures per store:

- *commit loop only*: the loop's time; hooks run on the pool meanwhile, the
  tail still queued at the end is drained outside the timed loop (``join``).
- *including drain*: the loop plus that ``join()``, i.e. until every hook of
  the round has run.

The baseline runs in the same process after the extension installed its
(process-wide) Session listeners; for an app without the extension they return
at the first check, so the baseline pays three no-op calls per commit.
"""

from __future__ import annotations

import time
from typing import Any

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

NAME = "overhead"

GOALS = {"memory": 1.05, "database": 1.25}


def noop_hook(user: Any, context: Any) -> None:
    """The no-op hook of the budget."""


def _candidate(bench: BenchApp, n: int) -> tuple[float, float]:
    """(loop seconds, loop + drain seconds) for one round."""
    assert bench.postreg is not None
    loop = commit_loop(bench, n)
    start = time.perf_counter()
    if not bench.postreg.join(timeout=120):
        raise RuntimeError("the pool did not drain within 120 s")
    return loop, loop + (time.perf_counter() - start)


def measure(run: Run, store: str, candidate: BenchApp) -> None:
    settings, report = run.settings, run.report
    n = settings.pick(2000, 300)
    rounds = settings.pick(7, 3)
    baseline = make_app(settings, f"overhead-{store}-baseline")
    try:
        # Warm up both: engines, pool threads, the first pages of each file.
        commit_loop(baseline, 50)
        _candidate(candidate, 50)
        results = interleave(
            {
                "baseline": lambda: commit_loop(baseline, n),
                "candidate": lambda: _candidate(candidate, n),
            },
            rounds,
        )
    finally:
        close(baseline)
    base = results["baseline"]
    loop = paired_ratios([c[0] for c in results["candidate"]], base)
    drained = paired_ratios([c[1] for c in results["candidate"]], base)
    goal = GOALS[store]
    note = (
        f"{n} commits x {rounds} rounds, baseline"
        f" {median(base) / n * 1e3:.2f} ms/commit, spread {spread(loop)}"
    )
    report.figure(
        f"registration overhead, {store} store, commit loop only",
        ratio_text(median(loop)),
        f"goal <= {goal:.2f}x",
        median(loop) <= goal,
        note,
    )
    report.figure(
        f"registration overhead, {store} store, including drain",
        ratio_text(median(drained)),
        f"goal <= {goal:.2f}x",
        median(drained) <= goal,
        f"spread {spread(drained)}",
    )
    dropped = candidate.state.dropped
    if dropped:
        report.line(f"  warning: {dropped} deliveries dropped by backpressure")


def run(run: Run) -> None:
    settings = run.settings
    config = {"STORE": "memory", "MAX_QUEUE": 100_000}
    memory = make_app(settings, "overhead-memory", postreg=config, hooks=[noop_hook])
    try:
        measure(run, "memory", memory)
    finally:
        close(memory)

    database, why = database_store_app(
        settings,
        "overhead-database",
        postreg={"MAX_QUEUE": 100_000},
        hooks=[noop_hook],
    )
    if database is None:
        run.report.line(f"database store: not available in this build ({why})")
        return
    try:
        measure(run, "database", database)
    finally:
        close(database)
