"""The payloads: Auth0's keys in and out, frozen, never carrying secrets."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import pickle
import time

import pytest

from flask_postreg import Context
from flask_postreg import Event
from flask_postreg import User
from flask_postreg.events import event_id_floor
from flask_postreg.events import new_event_id
from flask_postreg.events import sample_body

SAMPLE = (
    pathlib.Path(__file__).parent.parent / "flask_postreg" / "data" / "sample-body.json"
)


def test_shipped_sample_is_auth0s_runner_body():
    assert sample_body()["user"]["username"] == "user1"
    assert sample_body() == json.loads(SAMPLE.read_text())


def test_sample_body_round_trips():
    body = sample_body()
    event = Event.from_dict(body)
    out = event.to_dict()
    for key, value in body["user"].items():
        assert out["user"][key] == value
    assert out["context"]["requestLanguage"] == "en-us"
    assert out["context"]["connection"] == body["context"]["connection"]
    assert event.user.tenant == "my-tenant"
    # And our own output reads back to the same event.
    assert Event.from_dict(out) == event
    assert Event.from_json(event.to_json()) == event


def test_user_to_dict_has_auth0_keys():
    user = User(id="1", email="a@b.c", email_verified=True, phone_number="1")
    assert set(user.to_dict()) == {
        "id",
        "tenant",
        "username",
        "email",
        "emailVerified",
        "phoneNumber",
        "phoneNumberVerified",
        "user_metadata",
        "app_metadata",
    }
    assert "name" in User(name="Ann").to_dict()


def test_payloads_are_frozen_and_picklable():
    user = User(user_metadata={"hobby": {"kind": "surfing"}, "tags": ["a"]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        user.email = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        user.user_metadata["hobby"] = "chess"  # type: ignore[index]
    assert user.user_metadata["tags"] == ("a",)
    assert pickle.loads(pickle.dumps(user)) == user
    assert user.to_dict()["user_metadata"] == {
        "hobby": {"kind": "surfing"},
        "tags": ["a"],
    }


def test_secrets_never_serialized():
    context = Context(secrets={"TOKEN": "s3cr3t-value"})
    assert context.secrets["TOKEN"] == "s3cr3t-value"
    assert "s3cr3t" not in json.dumps(context.to_dict())
    assert "s3cr3t" not in repr(context)
    assert "s3cr3t" not in repr(Event(id="e", user=User(), context=context))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "JSON object"),
        ([], "JSON object"),
        ({"user": "nope"}, "'user' must be a JSON object"),
        ({"user": {}, "context": {"connection": 3}}, "context.connection"),
    ],
)
def test_bad_bodies_say_what_is_wrong(body, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Event.from_dict(body)


def test_bad_json_is_a_clear_error():
    with pytest.raises(ValueError, match="not valid JSON"):
        Event.from_json("{nope")


def test_runner_bodies_read_text_flags_and_json_has_no_nan():
    """A body saying "emailVerified": "false" is False; NaN in metadata is null
    (a JSON NaN literal is refused by most receivers)."""
    body = {
        "user": {
            "email": "a@example.com",
            "emailVerified": "false",
            "phoneNumberVerified": "true",
            "user_metadata": {"score": float("nan"), "nested": {"x": float("inf")}},
        },
        "context": {},
    }
    event = Event.from_dict(body)
    assert event.user.email_verified is False
    assert event.user.phone_number_verified is True
    data = json.loads(event.to_json())
    assert data["user"]["user_metadata"] == {"score": None, "nested": {"x": None}}
    assert "NaN" not in event.stored_json() and "Infinity" not in event.stored_json()


def test_event_id_floor_sorts_with_the_ids_at_any_time():
    """Time windows and prunes compare ids with a floor: one for a date past the
    16 hex digits (a 17-digit prefix) or before 1970 must still sort above or
    below every id, or a listing ``--until`` then would miss every row."""
    now = time.time()
    made = new_event_id()
    assert event_id_floor(now - 60) < made < event_id_floor(now + 60)
    assert event_id_floor(-1e12) < made < event_id_floor(1.9e10)  # year 2572
    assert event_id_floor(1e12) == "evt_" + "f" * 16
