"""The inline backend, for scripts and tests: hooks run right after the commit.

Each attempt still runs in a fresh app context and nothing it does can make
``commit()`` raise. Retries run at once (no delay): there is no thread to wait
on. Timeouts cannot be enforced inline; use the thread backend in production.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..dispatch import Delivery
    from ..dispatch import Dispatcher

logger = logging.getLogger("flask_postreg")


class SyncBackend:
    name = "sync"

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.pending = 0

    def submit(self, delivery: Delivery) -> bool:
        while True:
            prepared = self.dispatcher.prepare(delivery)
            if prepared is None:
                return True
            outcome = self.dispatcher.finish(prepared, *self.dispatcher.call(prepared))
            if outcome.retry_in is None:
                return True
            delivery = prepared.next()

    def schedule(self, delivery: Delivery, delay: float) -> bool:
        return self.submit(delivery)

    def queued(self) -> int:
        return 0

    def start(self) -> bool:
        return True

    def capacity(self) -> int:
        return 0

    def join(self, timeout: float | None = None) -> bool:
        return True

    def shutdown(self, timeout: float | None = None) -> bool:
        return True
