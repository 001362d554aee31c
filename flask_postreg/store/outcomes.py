"""Outcomes of attempts, written to ``postreg_deliveries`` in batches (group
commit).

Outcomes finishing together share one transaction: on SQLite one disk sync and
one short hold of the write lock instead of one per outcome. Each UPDATE is
guarded by the claim token the attempt ran under, so a stale worker cannot
overwrite a newer state. If the process dies before a batch is written, the
lease expires and the poller runs the delivery again: at least once, as promised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import TYPE_CHECKING

import sqlalchemy as sa

from .. import forksafe
from .statements import StatementCache

if TYPE_CHECKING:
    from ..dispatch import Outcome

logger = logging.getLogger("flask_postreg")


def _about_a_row(error: BaseException) -> bool:
    """Could ``error`` be one row's, the others writable alone: a value the
    database or its driver refuses, a constraint or trigger? Not a database out
    of reach, locked or a pool exhausted: each row alone would wait its own
    timeout."""
    return isinstance(
        error,
        (sa.exc.DataError, sa.exc.IntegrityError, UnicodeError, ValueError, TypeError),
    )


class OutcomeWriter:
    """Buffers outcomes and writes them in one transaction per batch.

    With ``batch_delay`` 0 the caller of :meth:`add` waits for its row (outcomes
    finishing meanwhile still share its transaction). Otherwise a writer thread
    commits whatever gathered every ``batch_delay`` seconds.
    """

    def __init__(
        self,
        begin: Callable[[], contextlib.AbstractContextManager[sa.Connection]],
        deliveries: sa.Table,
        statements: StatementCache,
        *,
        batch_delay: float = 0.0,
    ) -> None:
        self.begin = begin  # a transaction of the store's (see DatabaseStore.connect)
        self.deliveries = deliveries
        self.statements = statements
        self.batch_delay = batch_delay
        #: Outcomes that could not be written, in all (their leases will expire
        #: and the poller run them again). Kept in a forked child, as the count
        #: join() compares it with is.
        self.lost = 0
        self._after_fork()
        forksafe.register(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._writer_pid = 0
        self._flush_lock = threading.Lock()
        self._buffer: list[tuple[int, Outcome]] = []
        self._ticket = 0
        self._flushed = 0

    def add(self, outcome: Outcome) -> None:
        """Queue ``outcome``'s row update (written now when there is no delay)."""
        with self._lock:
            self._ticket += 1
            ticket = self._ticket
            self._buffer.append((ticket, outcome))
            if self.batch_delay > 0:
                self._ensure_thread()
                self._wake.notify()
                return
        self._drain(ticket)

    def flush(self) -> None:
        """Write every outcome added so far."""
        with self._lock:
            ticket = self._ticket
        self._drain(ticket)

    def _drain(self, ticket: int) -> None:
        """Write buffered outcomes until ``ticket`` is written."""
        with self._flush_lock:
            with self._lock:
                if self._flushed >= ticket or not self._buffer:
                    return  # a batch written by another thread included ours
                batch = self._buffer
                self._buffer = []
                last = batch[-1][0]
            lost = self._write_all([o for _, o in batch])
            with self._lock:
                self._flushed = max(self._flushed, last)
                self.lost += lost

    def _write_all(self, outcomes: list[Outcome]) -> int:
        """Write ``outcomes`` in one transaction; if it fails, each in its own,
        so that a row the database refuses does not take the batch's other
        outcomes (other hooks' among them) down with it. How many were lost."""
        try:
            self._write(outcomes)
            return 0
        except Exception as exc:
            error = exc
        lost = outcomes
        if len(outcomes) > 1 and _about_a_row(error):
            lost = []
            for outcome in outcomes:
                try:
                    self._write([outcome])
                except Exception as exc:
                    error = exc
                    lost.append(outcome)
        if lost:
            logger.error(
                "flask-postreg could not record %d outcome(s) (%s, hooks: %s); their"
                " leases will expire and the poller will run them again",
                len(lost),
                type(error).__name__,
                ", ".join(sorted({o.hook for o in lost})),
            )
        return len(lost)

    def _ensure_thread(self) -> None:
        """Start the batch writer in this process (lock held)."""
        if self._writer_pid == os.getpid():
            return
        self._writer_pid = os.getpid()
        try:
            threading.Thread(
                target=self._write_loop, name="postreg-writer", daemon=True
            ).start()
        except RuntimeError:  # interpreter exiting: write inline from now on
            self.batch_delay = 0.0

    def _write_loop(self) -> None:
        pid = os.getpid()
        while True:
            with self._lock:
                while not self._buffer:
                    if self._writer_pid != pid:
                        return
                    self._wake.wait()
                ticket = self._ticket
            time.sleep(self.batch_delay)  # let a batch gather
            self._drain(ticket)

    def _write(self, outcomes: Sequence[Outcome]) -> None:
        d = self.deliveries
        now = time.time()

        def build() -> sa.Update:
            return (
                sa.update(d)
                .where(
                    d.c.event_id == sa.bindparam("b_event"),
                    d.c.hook == sa.bindparam("b_hook"),
                    d.c.claim == sa.bindparam("b_claim"),
                )
                .values(
                    status=sa.bindparam("b_status"),
                    attempts=sa.bindparam("b_attempt"),
                    locked_until=sa.null(),
                    next_attempt_at=sa.bindparam("b_next"),
                    duration=sa.bindparam("b_duration"),
                    error_class=sa.bindparam("b_error_class"),
                    error=sa.bindparam("b_error"),
                    updated_at=sa.bindparam("b_updated"),
                )
            )

        rows = [
            {
                "b_event": o.event_id,
                "b_hook": o.hook,
                "b_claim": o.claim,
                "b_status": o.status,
                "b_attempt": o.attempt,
                "b_next": now + o.retry_in if o.retry_in is not None else now,
                "b_duration": o.duration,
                "b_error_class": o.error_class,
                "b_error": o.error,
                "b_updated": now,
            }
            for o in outcomes
        ]
        with self.begin() as conn:
            self.statements.execute(conn, ("outcome", d.name), build, rows)
