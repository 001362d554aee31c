"""Test helpers for any test runner (no pytest needed).

``record_events(app)`` is a context manager, like Flask-Mail's
``record_messages()``::

    with record_events(app) as events:
        register(client, "ann@example.com")
    assert [e.user.email for e in events] == ["ann@example.com"]

The pytest fixtures built on it live in :mod:`flask_postreg.pytest_plugin`.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from flask import Flask

from .events import Event
from .recording import Recorder

__all__ = ["record_events"]


@contextlib.contextmanager
def record_events(app: Flask, run_hooks: bool = False) -> Iterator[list[Event]]:
    """Yield the list of events of users committed while the block is open.

    Only committed registrations are recorded (a rollback records nothing).
    With ``run_hooks=False`` (the default) no hook runs and no outbox row is
    written; ``run_hooks=True`` records and runs them as usual.
    """
    state = app.extensions.get("postreg")
    if state is None:
        raise RuntimeError(
            f"app {app.name!r} has no PostReg: call postreg.init_app(app, ...)"
            " before record_events(app)"
        )
    recorder = Recorder(run_hooks)
    state.recorders.append(recorder)
    try:
        yield recorder.events
    finally:
        state.recorders.remove(recorder)
