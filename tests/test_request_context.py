"""``context.request_language`` and ``context.request``, through the test client."""

from __future__ import annotations

import pytest

from flask_postreg.snapshot import parse_accept_language

from .models import Account
from .models import db

CASES = [
    ("en-US,en;q=0.9", "en-us"),
    ("da, en-gb;q=0.8", "da"),
    ("fr;q=0.5, de;q=0.7", "de"),
    ("*", "xx"),
    ("*;q=1, es;q=0.2", "es"),
    ("en;q=0", "xx"),
    ("!!!, ;q=abc", "xx"),
    ("en;q=abc", "xx"),
    ("en;q=2", "xx"),
    ("", "xx"),
    (None, "xx"),
    ("x" * 5000, "xx"),
    ("zh-Hant-TW;q=0.8, en;q=0.8", "zh-hant-tw"),
]


@pytest.fixture
def view(make_app):
    app, postreg = make_app(POSTREG_DEFAULT_LANGUAGE="xx")
    seen = []
    postreg.hook(lambda user, context: seen.append(context), name="seen")

    @app.post("/register")
    def register():
        db.session.add(Account(email=f"u{len(seen)}@example.com"))
        db.session.commit()
        return "ok"

    def post(headers):
        seen.clear()
        assert app.test_client().post("/register", headers=headers).status_code == 200
        assert postreg.join(10)
        (context,) = seen
        return context

    return post


@pytest.mark.parametrize(("header", "expected"), CASES)
def test_accept_language(view, header, expected):
    headers = {} if header is None else {"Accept-Language": header}
    assert view(headers).request_language == expected


def test_request_info(view):
    context = view({"User-Agent": "curl/8.0", "X-Other": "1"})
    assert context.request.ip == "127.0.0.1"
    assert context.request.user_agent == "curl/8.0"
    assert context.request.hostname == "localhost"


def test_no_request_outside_a_request(app, postreg, recorder):
    with app.app_context():
        db.session.add(Account(email="cli@example.com"))
        db.session.commit()
    assert postreg.join(10)
    (_, context) = recorder.calls[0]
    assert context.request is None
    assert context.request_language is None


def test_parser_never_raises_on_junk():
    for junk in [
        ";",
        ",,,",
        "q=1",
        "en;;q=",
        "en-;q=1",
        "\x00\xff",
        "en;q=nan",
        "en;q=-1",
    ]:
        assert parse_accept_language(junk) is None


def test_configured_tenant_connection_and_default_language_outside_a_request(
    make_app,
):
    """``POSTREG_TENANT``, ``POSTREG_CONNECTION`` and ``POSTREG_DEFAULT_LANGUAGE``
    reach a hook run for a registration made outside any request (a CLI)."""
    app, postreg = make_app(
        POSTREG_TENANT="acme",
        POSTREG_CONNECTION={"id": "con_42", "name": "Corporate-LDAP"},
        POSTREG_DEFAULT_LANGUAGE="de",
    )
    seen = []
    postreg.hook(lambda user, context: seen.append((user, context)), name="seen")
    with app.app_context():
        db.session.add(Account(email="cli@example.com"))
        db.session.commit()
    assert postreg.join(10)
    ((user, context),) = seen
    assert user.tenant == context.tenant == "acme"
    connection = context.connection
    assert (connection.id, connection.name, connection.tenant) == (
        "con_42",
        "Corporate-LDAP",
        "acme",
    )
    assert context.request is None and context.request_language == "de"
