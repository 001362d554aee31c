"""Burst memory: 100,000 registrations at once must not grow memory without bound.

The events path is driven directly: ``postreg.emit(flask_postreg.User(...))``
dispatches exactly as a commit does, without the database (100,000 SQLite
commits would take minutes). The hook sleeps 2 ms on 4 workers (about 2,000
deliveries/s) while the burst arrives much faster, so the bounded queue
(``POSTREG_MAX_QUEUE=2000`` here, smaller than the default 10,000 so the drain
at the end stays short) fills up and backpressure drops the rest, counted in
``app.extensions["postreg"].dropped``.

The figure: the tracemalloc peak over the whole burst against the peak after
its first 10% (both above the memory in use before it), in the same process.
Bounded memory gives about 1x; memory growing with the burst would give about
10x. RSS (sampled every 1,000 events) is printed beside it.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from typing import Any

from flask_postreg import User

from .common import Run
from .common import close
from .common import make_app

NAME = "burst"

GOAL = 1.5
HOOK_SLEEP = 0.002
QUEUE = 2000
WORKERS = 4


def slowish_hook(user: Any, context: Any) -> None:
    time.sleep(HOOK_SLEEP)


def rss() -> int:
    """Resident set size now, in bytes (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run(run: Run) -> None:
    settings, report = run.settings, run.report
    total = settings.pick(100_000, 20_000)
    first = total // 10
    bench = make_app(
        settings,
        "burst",
        postreg={"STORE": "memory", "MAX_QUEUE": QUEUE, "MAX_WORKERS": WORKERS},
        hooks=[slowish_hook],
    )
    assert bench.postreg is not None
    postreg, app = bench.postreg, bench.app
    postreg.emit(User(id="warm", username="warm"), app=app)  # start the pool
    postreg.join(timeout=10)
    warm_dropped = bench.state.dropped

    rss_start = rss_peak = rss()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        peaks = {}
        start = time.perf_counter()
        for i in range(total):
            postreg.emit(
                User(id=str(i), username=f"burst{i}", email=f"burst{i}@example.com"),
                app=app,
            )
            if i % 1000 == 999:
                rss_peak = max(rss_peak, rss())
            if i + 1 == first:
                peaks["first"] = tracemalloc.get_traced_memory()[1] - before
                rss_first = rss_peak
        elapsed = time.perf_counter() - start
        peaks["all"] = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    queued_at_end = bench.state.backend.queued()
    dropped = bench.state.dropped - warm_dropped
    drained = postreg.join(timeout=60)
    ran = sum(bench.state.store.counts().values()) - 1
    close(bench)

    ratio = peaks["all"] / peaks["first"]
    report.figure(
        f"burst memory, {total:,} emits vs first {first:,}",
        f"{ratio:.2f}x",
        f"goal <= {GOAL:.1f}x, i.e. bounded",
        ratio <= GOAL,
        f"tracemalloc peak {peaks['first'] / 2**20:.1f} -> {peaks['all'] / 2**20:.1f}"
        f" MiB, RSS +{(rss_first - rss_start) / 2**20:.0f} -> +"
        f"{(rss_peak - rss_start) / 2**20:.0f} MiB; queue {QUEUE}, {WORKERS}"
        f" workers, {HOOK_SLEEP * 1e3:.0f} ms hook, {total / elapsed:,.0f} emits/s",
    )
    report.figure(
        "burst dropped by backpressure",
        f"{dropped:,} of {total:,}",
        "goal: counted, the rest run",
        drained and ran + dropped == total,
        f"ran {ran:,}, {queued_at_end:,} still queued when the burst ended",
    )
