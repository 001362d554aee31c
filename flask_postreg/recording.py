"""The hook point behind :func:`flask_postreg.testing.record_events`.

While a :class:`Recorder` is open on an app, each captured event also travels
through the session's transaction as a *mark*: a delivery of the internal
:data:`RECORD` hook. Marks follow the same rules as real deliveries (a rollback
drops them, a savepoint release moves them), and at the root commit
:func:`take` hands their events to the recorders instead of running anything.
So a recorder sees exactly the registrations that committed.

When a recorder does not run hooks, :func:`marks` tells the capture step to stop
there: no outbox row is written and no hook runs.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING
from typing import Any

from .dispatch import Delivery
from .dispatch import Hook
from .events import Event

if TYPE_CHECKING:
    from .state import _State


def _never(user: Any, context: Any) -> None:  # pragma: no cover - never submitted
    raise AssertionError("the record_events() mark must never run")


#: The internal hook whose deliveries carry events to the recorders.
RECORD = Hook(name="flask_postreg:record_events", func=_never, source="internal")


class Recorder:
    """The events one ``record_events()`` block has seen, in commit order."""

    def __init__(self, run_hooks: bool) -> None:
        self.run_hooks = run_hooks
        self.events: list[Event] = []
        self.lock = threading.Lock()

    def add(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)


def marks(state: _State, events: Sequence[Event]) -> tuple[list[Delivery], bool]:
    """Marks for ``events`` while recording, and whether hooks should still run."""
    recorders = list(state.recorders)
    if not recorders:
        return [], True
    run = all(r.run_hooks for r in recorders)
    return [Delivery(event=e, hook=RECORD) for e in events], run


def take(state: _State, deliveries: Sequence[Delivery]) -> list[Delivery]:
    """Give the marks' events to the open recorders; return the real deliveries."""
    real = []
    for delivery in deliveries:
        if delivery.hook is RECORD:
            for recorder in list(state.recorders):
                recorder.add(delivery.event)
        else:
            real.append(delivery)
    return real
