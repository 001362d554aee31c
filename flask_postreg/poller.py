"""The poller: in database mode, re-runs what is due and what a dead process left.

One per process (started with the pool): every ``POSTREG_POLL_INTERVAL`` seconds it
claims due retries and deliveries whose lease expired (a crashed or killed
process), refreshes which hooks are disabled, and prunes old successes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import TYPE_CHECKING
from typing import Any

from .errors import LeaseExpired
from .scrub import scrub

if TYPE_CHECKING:
    from .dispatch import Delivery
    from .state import _State
    from .store.database import DatabaseStore

logger = logging.getLogger("flask_postreg")

#: Deliveries claimed per round at most (more wait for the next round).
BATCH = 200
#: Seconds between prunes.
PRUNE_EVERY = 3600.0
#: Seconds between log lines while polls keep failing.
FAILURE_LOG_EVERY = 60.0


def _cause(exc: BaseException) -> str:
    """The first line of the driver's message (no SQL, no parameters), scrubbed."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return scrub(text[0] if text else "", limit=200)


class Poller:
    def __init__(self, state: _State, store: DatabaseStore) -> None:
        self.state = state
        self.store = store
        self._last_prune = 0.0

    def run(self, backend: Any) -> None:
        """The poller thread's loop; returns when the pool stops.

        While the database is away it logs the first failure, then one line a
        minute at most (not one per poll), and says when polls work again.
        """
        failures = 0
        told_at = 0.0
        while True:
            try:
                self.poll_once(backend)
            except Exception as exc:
                failures += 1
                now = time.monotonic()
                if failures == 1 or now - told_at >= FAILURE_LOG_EVERY:
                    told_at = now
                    logger.error(
                        "flask-postreg: poll failed (%s: %s)%s; will try again every"
                        " %gs (due retries and crashed processes' deliveries wait"
                        " meanwhile)",
                        type(exc).__name__,
                        _cause(exc),
                        f", {failures} times in a row" if failures > 1 else "",
                        self.state.values["POLL_INTERVAL"],
                    )
            else:
                if failures:
                    logger.warning(
                        "flask-postreg: polls work again after %d failure(s)",
                        failures,
                    )
                failures = 0
            if backend.wait_stop(self.state.values["POLL_INTERVAL"]):
                return

    def poll_once(self, backend: Any) -> int:
        """One round: refresh settings, claim and submit due deliveries, maybe prune."""
        self.state.refresh_settings()
        if not self.state.tables_ready():
            return 0
        overflow = self.state.take_overflow()
        if overflow:
            self.store.release(overflow)
        hooks = self.state.hooks()
        limit = min(BATCH, backend.capacity())
        started = 0
        refused = []
        # join() waits for the round: a row claimed here is not queued yet.
        with getattr(backend, "busy", contextlib.nullcontext)():
            for delivery in self.store.claim_due(hooks, limit):
                if delivery.attempt > (delivery.hook.max_attempts or 1) + 1:
                    self._bury(delivery)
                    continue
                if backend.submit(delivery):
                    started += 1
                else:  # the queue filled meanwhile: don't sit on the lease
                    refused.append(delivery)
            if refused:
                self.store.unclaim(refused)
        now = time.monotonic()
        if now - self._last_prune > PRUNE_EVERY:
            self._last_prune = now
            self.store.prune(self.state.values["RETENTION_DAYS"])
        return started

    def _bury(self, delivery: Delivery) -> None:
        """A delivery whose leases kept expiring: dead, not run again.

        An expired lease means the process holding it died (or could not write
        the outcome); the attempt it counted may never have run, so a death is
        forgiven once. Past ``max_attempts + 1`` claims, a hook that kills its
        process (or an outcome that cannot be written) would otherwise run for
        ever; it ends as an explicit dead letter instead, through the same path
        as any failure (log, ``hook_failed`` signal, recorded outcome).
        """
        last = dataclasses.replace(delivery, attempt=delivery.attempt - 1)
        error = LeaseExpired(
            f"claimed for attempt {delivery.attempt} of"
            f" {delivery.hook.max_attempts}: the leases of earlier attempts expired"
            " without an outcome (the process running them died, or could not"
            " record it), or max_attempts was lowered"
        )
        self.state.dispatcher.finish(last, error, 0.0)
        self.store.flush()  # now, not with the next batch: the row stays claimed
