"""pytest fixtures, registered as a plugin (``pytest11`` entry point), so they
are available in every test once flask-postreg is installed:

- ``postreg_events``: events of users committed during the test (hooks do not
  run); needs an ``app`` fixture in your test suite that returns the Flask app.
- ``postreg_sample_body``: Auth0's Runner sample body, a fresh dict each time.

.. versionadded:: 0.1
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .events import Event
from .events import sample_body
from .testing import record_events

__all__ = ["postreg_events", "postreg_sample_body"]


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
