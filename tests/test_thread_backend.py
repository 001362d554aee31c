"""The pool itself: hung hooks, the watchdog, claims that take long."""

from __future__ import annotations

import logging
import threading

from flask import Flask

from flask_postreg.backends.thread import STUCK_FACTOR
from flask_postreg.backends.thread import ThreadBackend
from flask_postreg.dispatch import Delivery
from flask_postreg.dispatch import Dispatcher
from flask_postreg.dispatch import Hook
from flask_postreg.dispatch import RetryPolicy
from flask_postreg.events import Context
from flask_postreg.events import Event
from flask_postreg.events import User
from flask_postreg.store import MemoryStore


def event(i: int) -> Event:
    return Event(
        id=f"evt_{i}", user=User(id=str(i)), context=Context(event_id=f"evt_{i}")
    )


def backend(store: MemoryStore | None = None, workers: int = 1) -> ThreadBackend:
    dispatcher = Dispatcher(
        Flask("pool"),
        policy=RetryPolicy([0]),
        secrets={},
        store=store or MemoryStore(100),
    )
    return ThreadBackend(dispatcher, max_workers=workers, max_queue=1000)


def test_pool_recovers_after_more_hangs_than_replacements():
    """Past the cap on replacement threads the pool is short of workers until the
    hung ones return; they must then rejoin, not exit (else the pool is dead)."""
    pool = backend(workers=1)
    gate = threading.Event()
    lock = threading.Lock()
    returned = []
    all_returned = threading.Event()
    hung = STUCK_FACTOR + 1  # 1 worker + STUCK_FACTOR replacements, all hung

    def hang(user, context):
        gate.wait(30)
        with lock:
            returned.append(user.id)
            if len(returned) == hung:
                all_returned.set()

    hook = Hook("hang", hang, max_attempts=1, timeout=0.1)
    for i in range(hung):
        assert pool.submit(Delivery(event(i), hook))
    assert pool.join(10)  # every attempt reported timed out
    statuses = [o.status for o in pool.dispatcher.store.recent(hook="hang")]
    assert statuses == ["dead"] * hung
    gate.set()  # the remote end recovers
    assert all_returned.wait(10)
    ran = threading.Event()
    assert pool.submit(
        Delivery(event(99), Hook("ok", lambda u, c: ran.set(), timeout=5))
    )
    assert pool.join(10) and ran.is_set()
    pool.shutdown(5)


class SlowClaims(MemoryStore):
    """A store whose claim takes longer than the hook's timeout (a busy database)."""

    def __init__(self) -> None:
        super().__init__(100)
        self.release = threading.Event()
        self.claiming = threading.Event()

    def prepare(self, delivery):
        self.claiming.set()
        self.release.wait(30)
        return None if delivery.hook.name == "taken" else delivery


def test_slow_claim_is_not_timed_out_nor_counted_twice():
    store = SlowClaims()
    pool = backend(store, workers=2)
    ran = []
    # Timeouts short enough for the claims to outlast them, long enough that a
    # loaded machine does not time out the hook itself.
    quick = Hook("quick", lambda u, c: ran.append(u.id), max_attempts=1, timeout=0.5)
    taken = Hook("taken", lambda u, c: ran.append("taken"), max_attempts=1, timeout=0.5)
    pool.submit(Delivery(event(1), quick))
    pool.submit(Delivery(event(2), taken))
    assert store.claiming.wait(10)
    assert not pool.join(1.0)  # claims pending past the hooks' timeouts
    store.release.set()
    assert pool.join(10)
    assert pool.pending == 0
    assert ran == ["1"]  # "taken" was claimed elsewhere: skipped, not run
    assert [(o.hook, o.status) for o in store.recent()] == [("quick", "succeeded")]
    pool.shutdown(5)


def test_backlog_queued_while_a_worker_lingers_runs_on_the_whole_pool(monkeypatch):
    """Submits while a worker lingers wake nobody; the worker that takes the
    first job must wake the next, or a backlog of slow hooks runs one at a time."""
    # Long enough that the lingering worker is seen even on a loaded machine.
    monkeypatch.setattr("flask_postreg.backends.thread.LINGER", 2.0)
    pool = backend(workers=4)
    together = threading.Barrier(4, timeout=10)
    passed = []

    def meet(user, context):
        together.wait()  # raises BrokenBarrierError unless all 4 run at once
        passed.append(user.id)

    # A first job of the same hook (a pool that saw a second hook would keep
    # a worker for it: see the fair queue's tests).
    quick = Hook("meet", lambda user, context: None, max_attempts=1)
    assert pool.submit(Delivery(event(0), quick)) and pool.join(10)
    lingering = threading.Event()
    for _ in range(150):  # the worker that ran it now lingers (2 s)
        with pool._cond:
            if pool._lingering:
                lingering.set()
                break
        lingering.wait(0.01)
    assert lingering.is_set()

    hook = Hook("meet", meet, max_attempts=1, timeout=20)
    for i in range(1, 5):  # no worker is woken: the lingerer takes them...
        assert pool.submit(Delivery(event(i), hook))
    assert pool.join(20)  # ...and wakes the others
    assert sorted(passed) == ["1", "2", "3", "4"]
    assert pool.shutdown(5)


def test_a_slow_hook_leaves_a_worker_to_the_other_hooks():
    """DESIGN: a slow hook affects no other hook. With two workers and a
    backlog of both, the slow one holds at most one; the fast one's jobs all
    run while every slow job is still blocked."""
    pool = backend(workers=2)
    release = threading.Event()
    fast_done = threading.Event()
    lock = threading.Lock()
    ran = []

    def slow(user, context):
        release.wait(30)

    def fast(user, context):
        with lock:
            ran.append(user.id)
            if len(ran) == 6:
                fast_done.set()

    slow_hook = Hook("slow", slow, max_attempts=1, timeout=60)
    fast_hook = Hook("fast", fast, max_attempts=1, timeout=60)
    # The pool knows both hooks (a first registration ran them); from then on
    # the slow one never holds the last worker, even between fast jobs.
    release.set()
    for hook in (slow_hook, fast_hook):
        assert pool.submit(Delivery(event(99), hook))
    assert pool.join(10)
    release.clear()
    ran.clear()
    try:
        for i in range(6):
            assert pool.submit(Delivery(event(i), slow_hook))
            assert pool.submit(Delivery(event(i), fast_hook))
        assert fast_done.wait(10), f"fast jobs run behind slow ones: {ran}"
    finally:
        release.set()
    assert pool.join(30)
    statuses = [o.status for o in pool.dispatcher.store.recent()]
    assert statuses == ["succeeded"] * 14
    pool.shutdown(5)


def test_a_hook_alone_in_the_queue_uses_every_worker():
    """A pool that only ever saw one hook runs it on every worker (here two at
    once: each waits for the other)."""
    pool = backend(workers=2)
    both = threading.Barrier(2, timeout=10)
    hook = Hook("pair", lambda user, context: both.wait(), max_attempts=1, timeout=30)
    for i in range(2):
        assert pool.submit(Delivery(event(i), hook))
    assert pool.join(30)
    statuses = [o.status for o in pool.dispatcher.store.recent(hook="pair")]
    assert statuses == ["succeeded", "succeeded"]
    pool.shutdown(5)


def test_hooks_at_their_limit_with_hung_attempts_still_get_idle_workers():
    """A hung attempt keeps counting for its hook until it returns; with every
    waiting hook at its limit a worker must still take a job, not sleep while
    the queue is full (join() never returned)."""
    pool = backend(workers=2)
    release = threading.Event()
    ran = []

    def make(name):
        def hook(user, context):
            if user.id == "0":
                release.wait(30)  # the first attempt of each hook hangs
            ran.append((name, user.id))

        return Hook(name, hook, max_attempts=1, timeout=0.2)

    hooks = [make("a"), make("b")]
    try:
        for hook in hooks:
            assert pool.submit(Delivery(event(0), hook))
        for i in range(1, 4):
            for hook in hooks:
                assert pool.submit(Delivery(event(i), hook))
        assert pool.join(10), f"jobs left waiting with idle workers: ran {ran}"
    finally:
        release.set()
    done = {job for job in list(ran) if job[1] != "0"}
    assert done == {(name, str(i)) for name in "ab" for i in range(1, 4)}
    pool.shutdown(5)


def test_many_running_pools_warn_once_what_to_do(monkeypatch, caplog):
    """Pools hold their app through their threads: a test suite's app factory
    that never shuts them down piles up threads and connections. Past
    ``MANY_POOLS`` running in the process, one WARNING says what to do."""
    from flask_postreg.backends import thread

    monkeypatch.setattr(thread, "MANY_POOLS", 3)
    monkeypatch.setattr(thread, "_warned_many", False)
    pools = [backend() for _ in range(4)]
    try:
        with caplog.at_level(logging.WARNING, logger="flask_postreg"):
            for pool in pools:
                assert pool.start()
        warnings = [
            r.getMessage() for r in caplog.records if "apps in this" in r.message
        ]
        assert len(warnings) == 1
        assert "postreg.shutdown(app=app) in the fixture's teardown" in warnings[0]
    finally:
        for pool in pools:
            pool.shutdown(timeout=5)
