"""The console handler: the Auth0-shaped JSON at INFO, nothing secret."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from flask_postreg import Context
from flask_postreg import User
from flask_postreg.handlers.log import ConsoleHandler
from tests.servers import fixture_app_factory  # noqa: F401


def test_logs_the_event_as_json(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flask_postreg.console")
    ConsoleHandler()(
        User(id="1", email="a@example.com"),
        Context(event_id="evt_1", secrets={"API_KEY": "sEcReT"}),
    )
    [record] = caplog.records
    assert record.name == "flask_postreg.console" and record.levelno == logging.INFO
    body = json.loads(record.getMessage().split("\n", 1)[1])
    assert body["user"]["email"] == "a@example.com"
    assert body["context"]["eventId"] == "evt_1"
    assert "sEcReT" not in record.getMessage()


def test_configured_by_postreg_console(
    app_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flask_postreg.console")
    a = app_factory(POSTREG_CONSOLE=True)
    assert list(a.hooks()) == ["console"]
    a.register(username="ada", email="ada@example.com")
    assert a.postreg.join(10)
    [record] = [r for r in caplog.records if r.name == "flask_postreg.console"]
    assert '"username": "ada"' in record.getMessage()
    assert "secret-hash" not in record.getMessage()  # the password hash column


def test_nothing_configured_means_no_handler(app_factory: Any) -> None:
    assert app_factory().hooks() == {}
