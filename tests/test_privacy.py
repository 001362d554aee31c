"""DESIGN 4.3: hooks get plain allow-listed data; no password hash reaches anything."""

from __future__ import annotations

import json
import logging
import urllib.parse

from .models import Account
from .models import db

HASH = "pbkdf2:sha256:600000$NaCl$0123456789abcdef-HASH"


def test_no_password_hash_in_payloads_or_logs(app, postreg, recorder, caplog):
    def fails(user, context):
        raise RuntimeError(f"could not sync {user.email}")

    postreg.hook(fails, name="fails", max_attempts=2)
    with caplog.at_level(logging.DEBUG):
        with app.app_context():
            db.session.add(
                Account(
                    email="ann@example.com",
                    password_hash=HASH,
                    user_metadata={"hobby": "surfing"},
                    app_metadata={"plan": "full"},
                )
            )
            db.session.commit()
        assert postreg.join(10)
    (user, context), *_ = recorder.calls
    payload = json.dumps({"user": user.to_dict(), "context": context.to_dict()})
    assert HASH not in payload and "password" not in payload
    assert HASH not in repr(user)
    assert HASH not in caplog.text
    # Personal data stays out of log lines and stored errors too.
    assert "ann@example.com" not in caplog.text
    for outcome in app.extensions["postreg"].store.recent():
        assert "ann@example.com" not in (outcome.error or "")
    assert user.user_metadata == {"hobby": "surfing"}
    assert user.app_metadata == {"plan": "full"}


def test_hooks_receive_frozen_data_not_orm_instances(app, postreg, recorder):
    with app.app_context():
        account = Account(email="ann@example.com", username="ann", email_verified=True)
        db.session.add(account)
        db.session.commit()
        account_id = account.id
    assert postreg.join(10)
    ((user, _),) = recorder.calls
    assert type(user).__name__ == "User"
    assert user.id == str(account_id)
    assert (user.username, user.email_verified) == ("ann", True)
    assert user.tenant == app.name


def test_a_field_that_raises_loses_nothing(make_app, caplog):
    def broken(instance):
        raise LookupError("no phone service")

    app, postreg = make_app(POSTREG_USER_FIELDS={"phone_number": broken})
    seen = []
    postreg.hook(lambda u, c: seen.append(u), name="seen")
    with caplog.at_level(logging.ERROR, logger="flask_postreg"), app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()  # the registration is not lost
    assert postreg.join(10)
    assert seen[0].email == "ann@example.com" and seen[0].phone_number is None
    assert "phone_number" in caplog.text and "POSTREG_USER_FIELDS" in caplog.text


def test_odd_metadata_values_are_made_json_safe(make_app):
    import datetime as dt
    import decimal

    meta = {"when": dt.date(2026, 1, 2), "price": decimal.Decimal("1.50"), "set": {1}}
    app, postreg = make_app(POSTREG_USER_FIELDS={"user_metadata": lambda i: meta})
    seen = []
    postreg.hook(lambda u, c: seen.append(u), name="seen")
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
    assert postreg.join(10)
    assert json.loads(json.dumps(seen[0].to_dict()))["user_metadata"] == {
        "when": "2026-01-02",
        "price": "1.50",
        "set": [1],
    }


def test_metadata_keys_reach_hooks_as_the_json_column_reads_them_back(make_app):
    """Non-text keys become the text ``json.dumps`` writes (``True`` is "true",
    not "True"), and of two keys with one text (``2`` and ``"2"``) the last wins,
    as on reading the column back: a hook sees what the app itself reads."""
    meta = {True: "yes", None: "none", 2: "two", "2": "text", "3": "text", 3: "int"}
    app, postreg = make_app()
    seen = []
    postreg.hook(lambda u, c: seen.append(u), name="seen")
    with app.app_context():
        account = Account(email="ann@example.com", user_metadata=meta)
        db.session.add(account)
        db.session.commit()
        db.session.expire(account)
        stored = account.user_metadata
    assert postreg.join(10)
    assert stored == {"true": "yes", "null": "none", "2": "text", "3": "int"}
    assert dict(seen[0].user_metadata) == stored


def test_personal_data_in_a_hook_error_is_scrubbed(make_app, caplog):
    app, postreg = make_app(
        POSTREG_USER_FIELDS={
            "name": lambda i: "Jane Doe",
            "phone_number": "phone_number",
        }
    )

    def crm(user, context):
        raise ValueError(
            f"CRM rejected {user} {user.phone_number} {user.name} {user.user_metadata}"
        )

    postreg.hook(crm, name="crm", max_attempts=1)
    with caplog.at_level(logging.DEBUG), app.app_context():
        db.session.add(
            Account(
                email="jane@example.com",
                phone_number="+1 555 0100",
                user_metadata={"dob": "1990-04-01"},
            )
        )
        db.session.commit()
    assert postreg.join(10)
    (outcome,) = app.extensions["postreg"].store.recent(hook="crm")
    for text in (outcome.error, caplog.text):
        for personal in ("+1 555 0100", "Jane Doe", "1990-04-01", "jane@example.com"):
            assert personal not in text
    assert "CRM rejected User(id=" in outcome.error


def test_reprs_carry_no_personal_data():
    from flask_postreg import RequestInfo
    from flask_postreg import User

    user = User(
        id="7", email="jane@example.com", phone_number="+1 555 0100", name="Jane"
    )
    assert repr(user) == "User(id='7', tenant=None, ...)"
    assert "10.0.0.9" not in repr(
        RequestInfo(ip="10.0.0.9", user_agent="x", hostname="h")
    )


def test_scrub_catches_encoded_and_lowercase_secrets_but_not_vocabulary(make_app):
    """What an HTTP library's error message carries: an URL-encoded address, a
    lowercase bearer token, a token in a query string; nested POSTREG_SECRETS.
    Short metadata words ("free", "https") stay readable."""
    from flask_postreg.scrub import scrub

    text = scrub(
        "GET /x?email=ann%40example.com&token=t0k3n failed; bearer abc.def;"
        " Basic QWxhZGRpbg== api_key=K3Y"
    )
    for secret in ("ann%40example.com", "t0k3n", "abc.def", "QWxhZGRpbg==", "K3Y"):
        assert secret not in text, text
    app, postreg = make_app(POSTREG_SECRETS={"crm": {"token": "nested-s3cret"}})

    def crm(user, context):
        raise ValueError(
            f"https://crm.test refused plan free with {context.secrets['crm']['token']}"
        )

    postreg.hook(crm, name="crm", max_attempts=1)
    with app.app_context():
        db.session.add(Account(email="ann@example.com", user_metadata={"plan": "free"}))
        db.session.commit()
    assert postreg.join(10)
    (outcome,) = app.extensions["postreg"].store.recent(hook="crm")
    assert "nested-s3cret" not in outcome.error
    assert "https://crm.test refused plan free with [secret]" in outcome.error


def test_secrets_are_hidden_url_encoded_and_as_numbers(make_app, caplog):
    """A requests-style error quotes the URL it failed on, so an API key with
    "+", "/" or "=" shows up percent-encoded; a nested PIN is a number.
    Booleans are not secrets: "True" stays readable."""
    key = "Zm9vYmFy+c2VjcmV0/a2V5=="
    app, postreg = make_app(
        POSTREG_SECRETS={"CRM_KEY": key, "crm": {"pin": 48291734, "sandbox": True}}
    )

    def crm(user, context):
        quoted = urllib.parse.quote(context.secrets["CRM_KEY"], safe="")
        pin = context.secrets["crm"]["pin"]
        raise RuntimeError(
            f"401 for url: https://api.crm.test/v1?apikey={quoted} (pin {pin}),"
            f" sandbox={context.secrets['crm']['sandbox']}"
        )

    postreg.hook(crm, name="crm", max_attempts=1)
    with caplog.at_level(logging.DEBUG), app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
        assert postreg.join(10)
    (outcome,) = app.extensions["postreg"].store.recent(hook="crm")
    for text in (outcome.error, caplog.text):
        assert "Zm9vYmFy" not in text and "48291734" not in text
    assert "apikey=[secret] (pin [secret]), sandbox=True" in outcome.error


def test_nested_secrets_are_read_only_for_hooks(make_app):
    """A hook writing into context.secrets["crm"] changed app.config and what
    every later hook saw."""
    config = {"crm": {"token": "t0k3n"}, "ids": [1, 2]}
    app, postreg = make_app(POSTREG_SECRETS=config)
    seen = []

    def meddler(user, context):
        seen.append(context.secrets["crm"]["token"])
        context.secrets["crm"]["token"] = "CHANGED"  # raises: read-only

    postreg.hook(meddler, name="meddler", max_attempts=2)
    with app.app_context():
        db.session.add(Account(email="ann@example.com"))
        db.session.commit()
    assert postreg.join(10)
    assert seen == ["t0k3n", "t0k3n"]  # both attempts saw the original
    assert config["crm"]["token"] == "t0k3n"
    (outcome, _) = app.extensions["postreg"].store.recent(hook="meddler")
    assert outcome.error_class == "TypeError"
