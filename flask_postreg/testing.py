"""Test helpers, registered as a pytest plugin (``pytest11`` entry point).

``record_events(app)`` is a context manager, like Flask-Mail's
``record_messages()``::

    with record_events(app) as events:
        register(client, "ann@example.com")
    assert [e.user.email for e in events] == ["ann@example.com"]

Fixtures (available in every test once flask-postreg is installed):

- ``postreg_events``: the same list for the whole test; needs an ``app``
  fixture in your test suite that returns the Flask app.
- ``postreg_sample_body``: Auth0's Runner sample body, a fresh dict each time.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from .events import Event
from .events import sample_body
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


@pytest.fixture
def postreg_events(request: pytest.FixtureRequest) -> Iterator[list[Event]]:
    """Events of users committed during the test; hooks do not run.

    Uses the ``app`` fixture of your test suite.
    """
    try:
        app: Any = request.getfixturevalue("app")
    except pytest.FixtureLookupError:
        pytest.fail(
            "the postreg_events fixture needs an 'app' fixture returning your Flask"
            " app (define one in conftest.py), or use"
            " flask_postreg.testing.record_events(app) directly",
            pytrace=False,
        )
    with record_events(app) as events:
        yield events


@pytest.fixture
def postreg_sample_body() -> dict[str, Any]:
    """Auth0's Runner sample body: ``{"user": {...}, "context": {...}}``."""
    return sample_body()
