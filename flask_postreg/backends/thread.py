"""The default backend: a small pool of worker threads in this process.

- Created lazily, per process id: a gunicorn ``--preload`` fork gets its own.
- A bounded queue: past ``POSTREG_MAX_QUEUE`` a job is refused (the caller counts
  and logs it; the database store leaves it to the poller).
- Fair: one FIFO per hook, taken in turn; once the pool has seen more than
  one hook, no hook holds the last worker (:class:`FairQueue`).
- A scheduler thread runs due retries and is the watchdog: an attempt past its
  timeout is reported failed, its thread is written off (threads cannot be
  killed) and a fresh worker takes its place, so a hanging hook never starves
  the others. A late result from a written-off thread is ignored.
- A worker that just ran a job lingers (``LINGER``, 5 ms) for the next one
  instead of being woken by every submit: fewer GIL hand-offs on the request
  thread's path, at most that much delay before a job starts.
- At interpreter exit the pool drains for at most ``POSTREG_SHUTDOWN_TIMEOUT``.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import heapq
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .. import forksafe
from ..errors import HookTimeout
from .fair_queue import FairQueue

if TYPE_CHECKING:
    from ..dispatch import Delivery
    from ..dispatch import Dispatcher
    from ..dispatch import Outcome

logger = logging.getLogger("flask_postreg")

#: Written-off (hung) threads allowed per worker slot before no more are replaced.
STUCK_FACTOR = 4

#: Pools running at once in a process past which it warns (once): their threads
#: hold their app, so an app factory per test that never calls
#: ``postreg.shutdown(app=app)`` piles up threads and open database connections.
MANY_POOLS = 32
_warned_many = False

#: Seconds a worker that just ran a job keeps looking for the next one on its
#: own before it waits to be woken. While one lingers, a submit wakes nobody:
#: under a stream of registrations the worker picks jobs up in small batches on
#: its own time instead of being woken into a GIL hand-off after every commit
#: (measured: 1.12x -> 1.08x commit-loop overhead with the memory store). A job
#: then waits at most this long before it starts; a worker that takes a job
#: and sees more queued wakes the next, so a backlog still uses the whole pool.
LINGER = 0.005


@dataclasses.dataclass
class _Running:
    delivery: Delivery
    deadline: float
    timeout: float
    abandoned: bool = False


class ThreadBackend:
    """Runs deliveries on worker threads; see the module docstring."""

    name = "thread"

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        max_workers: int = 4,
        max_queue: int = 10000,
        shutdown_timeout: float = 10.0,
        background: Callable[[ThreadBackend], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.dispatcher = dispatcher
        self.max_workers = max_workers
        self.max_queue = max_queue
        self.shutdown_timeout = shutdown_timeout
        self.background = background
        self.clock = clock
        self._reset()
        _POOLS.add(self)
        forksafe.register(self)

    def _reset(self) -> None:
        # One lock, three conditions: a submit wakes one worker, not every
        # thread; the scheduler is woken only for an earlier deadline; join()
        # waiters only when the pool goes idle.
        self._cond = threading.Lock()
        self._work_ready = threading.Condition(self._cond)
        self._sched = threading.Condition(self._cond)
        self._idle = threading.Condition(self._cond)
        self._sched_wake_at = 0.0
        self._tick = 1.0  # idle watchdog period: half the shortest timeout, <= 1 s
        self._pid: int | None = None
        self._queue = FairQueue()
        self._timers: list[tuple[float, int, Delivery]] = []
        self._running: dict[int, _Running] = {}
        self._seq = itertools.count()
        self._pending = 0
        self._workers = 0
        self._lingering = 0  # workers looking for work on a timer (not woken)
        self._stuck = 0
        self._stopping = False
        self._poller: threading.Thread | None = None
        self.started_threads = 0
        self._threads: list[threading.Thread] = []
        #: Deliveries the last shutdown that ran out of time left pending.
        self.handed_back = 0

    # -- public ------------------------------------------------------------

    def submit(self, delivery: Delivery) -> bool:
        """Queue one delivery; False if refused (queue full, shutting down)."""
        with self._cond:
            if not self._ensure_started() or len(self._queue) >= self.max_queue:
                return False
            self._queue.append(delivery)
            self._pending += 1
            if not self._lingering:  # a lingering worker finds it within LINGER
                self._work_ready.notify()
        return True

    def schedule(self, delivery: Delivery, delay: float) -> bool:
        """Run ``delivery`` after ``delay`` seconds (an in-process retry)."""
        with self._cond:
            if not self._ensure_started():
                return False
            self._push_timer(delivery, delay)
            self._pending += 1
        return True

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Counts as one pending job meanwhile: the poller claims rows inside it,
        so ``join()`` cannot return between a claim and its submit."""
        with self._cond:
            self._pending += 1
        try:
            yield
        finally:
            with self._cond:
                self._finished_one()

    def start(self) -> bool:
        """Start the threads now (they otherwise start with the first job)."""
        with self._cond:
            return self._ensure_started()

    def wait_stop(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` unless the pool stops; True once it is stopping."""
        with self._cond:
            if not self._stopping:
                self._idle.wait_for(lambda: self._stopping, timeout)
            return self._stopping or self._pid != os.getpid()

    def capacity(self) -> int:
        """Jobs the queue can still take."""
        with self._cond:
            return max(self.max_queue - len(self._queue), 0)

    @property
    def pending(self) -> int:
        """Deliveries queued, running or waiting for an in-process retry."""
        with self._cond:
            return self._pending if self._pid == os.getpid() else 0

    def threads(self) -> list[threading.Thread]:
        """The threads this pool started in this process and that still run."""
        with self._cond:
            self._threads = [t for t in self._threads if t.is_alive()]
            return list(self._threads)

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def withdraw(self, *, running: bool = True) -> list[Delivery]:
        """Deliveries queued (and, with ``running``, running) now, for a stopping
        pool to hand back; the queued ones are taken out of the queue so that no
        thread starts them after they were handed back (another process may run
        them)."""
        with self._cond:
            queued = list(self._queue)
            self._queue.clear()
            self._pending -= len(queued)
            if self._pending <= 0:
                self._wake_all()
            if not running:
                return queued
            ongoing = [r.delivery for r in self._running.values() if not r.abandoned]
            return [*queued, *ongoing]

    def join(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued, running or due for retry; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if self._pid != os.getpid():
                return True
            while self._pending > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def shutdown(self, timeout: float | None = None, *, exiting: bool = False) -> bool:
        """Stop taking work, let queued and running jobs finish within ``timeout``.

        Past it, with the database store, what is still queued goes back pending
        for another process; so do the running attempts when the process is
        ``exiting`` (they are cut off with it; in a process that goes on they
        finish, and record their outcome, here)."""
        timeout = self.shutdown_timeout if timeout is None else timeout
        dropped_retries = 0
        with self._cond:
            if self._pid != os.getpid():
                self._stopping = True
                drain = False
            elif self._stopping:
                # Stopped before (postreg.shutdown()), and now the process exits:
                # what that stop left running gets this drain, then is cut off.
                drain = exiting and any(not r.abandoned for r in self._running.values())
            else:
                drain = True
                self._stopping = True
                dropped_retries = len(self._timers)
                self._pending -= dropped_retries
                self._timers.clear()
                self._wake_all()
        if not drain:  # nothing runs here, but outcomes may wait in the store
            self._write_last(max(timeout, 1.0))
            return True
        if dropped_retries and not self.dispatcher.store.durable:
            logger.warning(
                "flask-postreg shut down with %d retries still scheduled; in memory"
                " mode they are not run (use the database store to keep them)",
                dropped_retries,
            )
        started = time.monotonic()
        done = self.join(timeout)
        poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join(max(timeout - (time.monotonic() - started), 0.1))
        # The database work left gets what remains of the timeout (a second at
        # least): a database that does not answer must not hold the stop up.
        budget = max(started + timeout - time.monotonic(), 1.0)
        self._write_last(budget)
        if not done:
            unfinished = self.pending
            budget = max(started + timeout - time.monotonic(), 1.0)
            handed = self._within(
                budget, lambda: self._hand_back(running=exiting), "handing back"
            )
            self.handed_back = handed or 0
            left = ""
            if self.dispatcher.store.durable:
                left = f"; {self.handed_back} left pending for the next process"
                if not exiting and unfinished > self.handed_back:
                    left += f", {unfinished - self.handed_back} still running here"
            logger.warning(
                "flask-postreg shut down with %d deliveries unfinished after %.1fs%s",
                unfinished,
                timeout,
                left,
            )
        return done

    def _write_last(self, seconds: float) -> None:
        """Write the outcomes still batched, within ``seconds`` (only a durable
        store batches: for the others there is nothing to wait for)."""
        if self.dispatcher.store.durable:
            self._within(seconds, self._flush_store, "writing outcomes")

    def _within(
        self, seconds: float, work: Callable[[], int | None], what: str
    ) -> int | None:
        """``work()`` (a stopping pool's database work) if it ends within
        ``seconds``; otherwise None, and it goes on in a daemon thread the
        process does not wait for (what it did not write is left to leases)."""
        result: list[int | None] = []
        helper = threading.Thread(
            target=lambda: result.append(work()), name="postreg-stop", daemon=True
        )
        try:
            helper.start()
        except RuntimeError:  # at interpreter exit (3.12+): no new threads
            return work()
        helper.join(seconds)
        if not result:
            logger.warning(
                "flask-postreg: the database did not answer within %.1fs while %s"
                " at shutdown; the leases of what was left will expire and the"
                " poller will run it again",
                seconds,
                what,
            )
            return None
        return result[0]

    def _hand_back(self, *, running: bool) -> int:
        """After a drain that ran out of time, with the database store: the
        deliveries still queued (and ``running``, those cut off with the
        process) go back to pending, due now and their attempt not counted, so
        another process's poller runs them at once instead of after their lease,
        and nothing is charged for the stop. Returns how many rows changed."""
        store = self.dispatcher.store
        hand_back = getattr(store, "hand_back", None)
        if not store.durable or hand_back is None:
            return 0
        withdrawn = self.withdraw(running=running)
        unfinished = [d for d in withdrawn if d.row_id is not None]
        # An attempt that ended since the drain gave up has its outcome batched:
        # written first, it is not handed back (its claim no longer holds).
        self._flush_store()
        try:
            return int(hand_back(unfinished))
        except Exception:
            logger.exception(
                "flask-postreg could not hand back %d unfinished deliveries; their"
                " leases will expire and the poller will run them again",
                len(unfinished),
            )
            return 0

    # -- internals ---------------------------------------------------------

    def _flush_store(self) -> None:
        try:
            self.dispatcher.store.flush()
        except Exception:
            logger.exception("flask-postreg could not write the last outcomes")

    def _ensure_started(self) -> bool:
        """Start threads once per process; called with the lock held."""
        if self._stopping:
            return False
        if self._pid == os.getpid():
            return True
        self._pid = os.getpid()
        _warn_if_many(self._pid)
        try:
            for _ in range(self.max_workers):
                self._start(self._work, "worker")
            self._start(self._schedule_loop, "scheduler")
            if self.background is not None:
                background = self.background
                self._poller = self._start(lambda: background(self), "poller")
        except RuntimeError:  # "can't create new thread at interpreter shutdown"
            self._stopping = True
            logger.warning(
                "flask-postreg cannot start threads: the interpreter is exiting"
            )
            return False
        return True

    def _start(self, target: Callable[[], None], role: str) -> threading.Thread:
        thread = threading.Thread(
            target=target,
            name=f"postreg-{role}-{self.started_threads}",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        self.started_threads += 1
        if role == "worker":
            self._workers += 1
        return thread

    def _wake_all(self) -> None:
        self._work_ready.notify_all()
        self._sched.notify_all()
        self._idle.notify_all()

    def _kick_scheduler(self, when: float) -> None:
        """Wake the scheduler if it sleeps past ``when`` (lock held)."""
        if when < self._sched_wake_at:
            self._sched.notify()

    def _watch(self, running: _Running) -> None:
        """Make sure the watchdog will see ``running``'s deadline (lock held).

        No wake-up per job: the scheduler never sleeps longer than its tick,
        half the shortest timeout seen (1 s at most), so a deadline is noticed
        at most a tick late. Only a shorter timeout than any before wakes it.
        (Waking it for every job cost more CPU than the job: it woke to find the
        job already done.)
        """
        if running.timeout / 2 < self._tick:
            self._tick = running.timeout / 2
            self._sched.notify()

    @property
    def _per_hook(self) -> int:
        """Workers one hook may hold once the pool has seen others: all but one."""
        return max(self.max_workers - 1, 1)

    def _job_over(self, delivery: Delivery) -> None:
        """A taken job's attempt returned (lock held): its hook may take a
        worker again, so wake one for a job that waited on that."""
        self._queue.done(delivery)
        if self._queue and not self._lingering:
            self._work_ready.notify()

    def _finished_one(self) -> None:
        """One delivery left the pool (lock held)."""
        self._pending -= 1
        if self._pending <= 0:
            self._idle.notify_all()
            if self._stopping:
                self._wake_all()

    def _push_timer(self, delivery: Delivery, delay: float) -> None:
        due = self.clock() + delay
        heapq.heappush(self._timers, (due, next(self._seq), delivery))
        self._kick_scheduler(due)

    def _work(self) -> None:
        pid = os.getpid()
        busy = False  # ran a job since it last waited: linger before sleeping
        while True:
            with self._cond:
                while True:
                    if self._pid != pid:
                        return
                    delivery = self._queue.take(self._per_hook)
                    if delivery is not None or (self._stopping and self._pending <= 0):
                        break
                    if busy and not self._lingering and not self._stopping:
                        self._lingering += 1
                        self._work_ready.wait(LINGER)
                        self._lingering -= 1
                    else:
                        self._work_ready.wait()
                    busy = False
                busy = True
                if delivery is None:
                    self._workers -= 1
                    return
                if self._queue and not self._lingering:
                    # Submits a lingerer let pass woke no one: wake the next
                    # worker, so a backlog still runs on the whole pool.
                    self._work_ready.notify()
            # Claiming may wait on the database: not part of the hook's timeout.
            prepared = self.dispatcher.prepare(delivery)
            if prepared is None:  # another worker or process holds it
                with self._cond:
                    self._job_over(delivery)
                    self._finished_one()
                continue
            with self._cond:
                token = next(self._seq)
                timeout = prepared.hook.timeout or 20.0
                running = _Running(prepared, self.clock() + timeout, timeout)
                self._running[token] = running
                self._watch(running)
            attempt = self.dispatcher.call(prepared)
            with self._cond:
                self._running.pop(token, None)
                if not running.abandoned:
                    self._job_over(delivery)
                else:  # the watchdog reported it and ended its count
                    self._stuck -= 1
                    if self._workers >= self.max_workers:
                        return  # a replacement took this thread's place
                    self._workers += 1  # replacements were capped: rejoin the pool
                    continue
            self._finish(prepared, *attempt)

    def _finish(
        self,
        delivery: Delivery,
        error: BaseException | None,
        duration: float,
        secrets: frozenset[str] = frozenset(),
    ) -> None:
        """Record an attempt and plan what follows. ``finish()`` never raises;
        if it did, the calling worker or watchdog thread must survive it."""
        try:
            outcome = self.dispatcher.finish(delivery, error, duration, secrets)
        except Exception:
            logger.exception("flask-postreg could not finish an attempt")
            with self._cond:
                self._finished_one()
            return
        self._done(delivery, outcome)

    def _done(self, delivery: Delivery, outcome: Outcome) -> None:
        """After an attempt: plan its retry or count it finished."""
        retried = False
        if outcome.retry_in is not None:
            with self._cond:
                if not self._stopping:
                    self._push_timer(delivery.next(), outcome.retry_in)
                    retried = True
        if not retried:
            with self._cond:
                self._finished_one()

    def _schedule_loop(self) -> None:
        pid = os.getpid()
        while True:
            expired: list[_Running] = []
            with self._cond:
                if self._pid != pid or (self._stopping and self._pending <= 0):
                    return
                now = self.clock()
                while self._timers and self._timers[0][0] <= now:
                    _, _, delivery = heapq.heappop(self._timers)
                    self._queue.append(delivery)
                    self._work_ready.notify()
                for running in self._running.values():
                    if not running.abandoned and running.deadline <= now:
                        running.abandoned = True
                        expired.append(running)
                        # Its thread is replaced: its hook's share is free.
                        self._job_over(running.delivery)
                for _ in expired:
                    self._stuck += 1
                    self._workers -= 1  # its thread is hung: no longer a worker
                    if self._stuck <= self.max_workers * STUCK_FACTOR:
                        with contextlib.suppress(RuntimeError):  # exiting
                            self._start(self._work, "worker")
                    else:
                        logger.error(
                            "flask-postreg: %d hook attempts are stuck past their"
                            " timeout; no more threads are started for them. Give"
                            " every network call in your hooks a timeout.",
                            self._stuck,
                        )
                if not expired:
                    wake = [t[0] for t in self._timers[:1]]
                    wake += [
                        r.deadline for r in self._running.values() if not r.abandoned
                    ]
                    wait = min(min(wake) - now, self._tick) if wake else self._tick
                    self._sched_wake_at = now + wait
                    self._sched.wait(max(wait, 0.001))
                    self._sched_wake_at = 0.0  # awake: no kick needed
            for running in expired:
                error = HookTimeout(
                    f"attempt exceeded the hook's timeout of {running.timeout:g}s"
                )
                self._finish(running.delivery, error, running.timeout)

    def _after_fork(self) -> None:
        self._reset()


_POOLS: weakref.WeakSet[ThreadBackend] = weakref.WeakSet()


def _child_warns_anew() -> None:
    global _warned_many
    _warned_many = False


os.register_at_fork(after_in_child=_child_warns_anew)


def _warn_if_many(pid: int) -> None:
    """Warn once if this process runs ``MANY_POOLS`` pools (one just started)."""
    global _warned_many
    if _warned_many:
        return
    running = sum(1 for p in list(_POOLS) if p._pid == pid and not p._stopping)
    if running >= MANY_POOLS:
        _warned_many = True
        logger.warning(
            "flask-postreg: %d apps in this process run their own pool of threads"
            " (and poller); the threads hold their app, so an app dropped without"
            " postreg.shutdown(app=app) keeps them and its database connections."
            " An app factory per test: call postreg.shutdown(app=app) in the"
            " fixture's teardown.",
            running,
        )


def _shutdown_all() -> None:
    for pool in list(_POOLS):
        try:
            pool.shutdown(exiting=True)
        except Exception:
            logger.exception("flask-postreg: error while shutting the pool down")


atexit.register(_shutdown_all)
