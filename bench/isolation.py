"""Isolation: a slow hook must not slow the registration request down.

Three apps serve the same ``POST /register`` view (one new user, one commit),
each with its own SQLite file, through the Flask test client:

- *baseline*: no extension, no hook;
- *candidate*: the extension with a hook that sleeps 200 ms (thread backend);
- *anchor*: no extension; the view sends a blinker signal synchronously and its
  receiver sleeps 200 ms, which is what Flask-Security's ``user_registered``
  does. It should cost about +200 ms per request: the figure shows the bench
  can see a slow hook when there is one.

Rounds alternate baseline/candidate (and anchor); latencies are pooled per
variant and p99 is taken over all of them. After each candidate round the pool
is drained outside the timed requests (``join``) so a backlog of sleeping hooks
never overlaps the baseline's round. The candidate runs 32 workers: a round's
200 registrations x 200 ms / 4 workers would be 10 s of drain, / 32 about
1.3 s. 1,200 requests per variant: a p99 of 300 moved by 0.15x from run to run
on a shared machine. The anchor runs fewer requests (each sleeps 200 ms by
design).

The view stores a fixed password hash: a real ``generate_password_hash`` costs
tens of ms of CPU and would hide the extension's own cost in the ratio.
"""

from __future__ import annotations

import time
from typing import Any

import blinker
from flask import request

from .common import BenchApp
from .common import Run
from .common import close
from .common import interleave
from .common import make_app
from .common import percentile

NAME = "isolation"

HOOK_SLEEP = 0.2
GOAL = 1.10


def slow_hook(user: Any, context: Any) -> None:
    time.sleep(HOOK_SLEEP)


def _add_view(bench: BenchApp, signal: blinker.NamedSignal | None = None) -> None:
    db, app = bench.db, bench.app

    @app.post("/register")
    def register() -> tuple[str, int]:
        user = bench.User(
            username=request.form["username"],
            email=request.form["email"].lower(),
            password_hash="pbkdf2:sha256:600000$bench$" + "0" * 64,
            user_metadata={},
            app_metadata={"plan": "free"},
        )
        db.session.add(user)
        db.session.commit()
        if signal is not None:
            signal.send(app, user=user)
        return "created", 201


_seq = iter(range(1, 10**9))


def _requests(bench: BenchApp, count: int) -> list[float]:
    """``count`` registrations through the test client; seconds for each."""
    client = bench.app.test_client()
    times = []
    for _ in range(count):
        n = next(_seq)
        form = {"username": f"iso{n}", "email": f"iso{n}@example.com"}
        headers = {"Accept-Language": "en-US,en;q=0.9", "User-Agent": "bench"}
        start = time.perf_counter()
        response = client.post("/register", data=form, headers=headers)
        times.append(time.perf_counter() - start)
        if response.status_code != 201:
            raise RuntimeError(f"register returned {response.status_code}")
    return times


def run(run: Run) -> None:
    settings, report = run.settings, run.report
    total = settings.pick(1200, 60)
    rounds = settings.pick(6, 2)
    per_round = total // rounds
    anchor_total = settings.pick(30, 4)
    anchor_per_round = max(1, anchor_total // rounds)

    baseline = make_app(settings, "isolation-baseline")
    _add_view(baseline)
    candidate = make_app(
        settings,
        "isolation-candidate",
        postreg={"STORE": "memory", "MAX_WORKERS": 32, "MAX_QUEUE": 100_000},
        hooks=[slow_hook],
    )
    _add_view(candidate)
    registered = blinker.Namespace().signal("user_registered")

    def on_registered(sender: Any, **extra: Any) -> None:
        time.sleep(HOOK_SLEEP)

    registered.connect(on_registered)
    anchor = make_app(settings, "isolation-anchor")
    _add_view(anchor, registered)
    assert candidate.postreg is not None
    postreg = candidate.postreg

    def candidate_round() -> list[float]:
        times = _requests(candidate, per_round)
        if not postreg.join(timeout=60):
            raise RuntimeError("the slow hooks did not drain within 60 s")
        return times

    try:
        for bench in (baseline, candidate):  # warm up
            _requests(bench, 10)
        postreg.join(timeout=30)
        results = interleave(
            {
                "baseline": lambda: _requests(baseline, per_round),
                "candidate": candidate_round,
                "anchor": lambda: _requests(anchor, anchor_per_round),
            },
            rounds,
        )
        ran = candidate.state.store.counts()
    finally:
        for bench in (baseline, candidate, anchor):
            close(bench, timeout=30)

    base = [t for r in results["baseline"] for t in r]
    cand = [t for r in results["candidate"] for t in r]
    anch = [t for r in results["anchor"] for t in r]
    base99, cand99, anch99 = (percentile(x, 99) for x in (base, cand, anch))
    ratio = cand99 / base99
    report.figure(
        "isolation p99, 200 ms hook vs no hook",
        f"{ratio:.2f}x",
        f"goal <= {GOAL:.2f}x",
        ratio <= GOAL,
        f"{len(cand)} requests each, p99 {base99 * 1e3:.1f} -> {cand99 * 1e3:.1f} ms,"
        f" p50 {percentile(base, 50) * 1e3:.1f} -> {percentile(cand, 50) * 1e3:.1f}"
        f" ms; 32 workers; hooks run: {sum(ran.values())}",
    )
    report.figure(
        "isolation anchor, sync blinker receiver sleeping 200 ms",
        f"+{(anch99 - base99) * 1e3:.0f} ms ({anch99 / base99:.0f}x)",
        "expect ~+200 ms",
        None,
        f"{len(anch)} requests, p99 {anch99 * 1e3:.1f} ms",
    )
