"""The Auth0-shaped payloads a hook receives: plain, frozen, JSON-safe data.

Hooks never see ORM instances or the request's session: the capture step copies
the allow-listed fields into a :class:`User` and the request's facts into a
:class:`Context`, and both cross threads and processes as values.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import json
import math
import os
import time
import uuid
from collections.abc import Iterator
from collections.abc import Mapping
from importlib import resources
from typing import Any

__all__ = [
    "Connection",
    "Context",
    "Event",
    "FrozenDict",
    "RequestInfo",
    "User",
    "freeze",
    "new_event_id",
    "sample_body",
    "thaw",
]


class FrozenDict(Mapping[str, Any]):
    """A read-only, picklable mapping; one hook cannot change what another sees."""

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        object.__setattr__(self, "_data", dict(data or {}))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenDict is read-only")

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._data.items(), key=lambda kv: kv[0])))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (self._data,))


def _read_only(value: Any) -> Any:
    """Mappings and lists made read-only all the way down, values kept as they
    are (secrets: a hook must not change what ``app.config`` and the next hook
    hold, and a number stays a number)."""
    if isinstance(value, Mapping):
        return FrozenDict({k: _read_only(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_read_only(v) for v in value)
    return value


def _flag(value: Any) -> bool:
    """A boolean from a body: ``"false"``, ``"0"``, ``"no"`` and ``""`` are False."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "off")
    return bool(value)


def jsonable(value: Any) -> Any:
    """Turn a model value into JSON-safe data (dates as ISO text, others as text)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):  # NaN and infinities are not JSON: null
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return _jsonable_mapping(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _jsonable_mapping(value: Mapping[Any, Any]) -> dict[str, Any]:
    """Keys as the app's own JSON column stores them: ``json.dumps``'s text
    (``True`` is ``"true"``, ``None`` ``"null"``, ``1`` ``"1"``). When two keys
    become the same text (``1`` and ``"1"``), the last one wins, as it does when
    the column is read back: hooks see what the app reads."""
    return {_key_text(key): jsonable(item) for key, item in value.items()}


def _key_text(key: Any) -> str:
    if isinstance(key, str):  # a subclass (a str enum): its text, as json does
        return str.__str__(key)
    if key is None or isinstance(key, (bool, int, float)):
        return json.dumps(key)  # true, null, 1, 1.5, NaN
    return str(jsonable(key))


#: Value types that need no conversion or copy (exact types: subclasses take
#: the general path of :func:`freeze`).
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _flat(data: dict[str, Any]) -> bool:
    """Only text keys and scalar values: the usual ``user_metadata``."""
    scalars = _SCALARS
    for key, value in data.items():
        if type(key) is not str or type(value) not in scalars:
            return False
        if type(value) is float and not math.isfinite(value):
            return False  # jsonable() turns it into null
    return True


def freeze(value: Any) -> Any:
    """Deep, JSON-safe, immutable copy: mappings become FrozenDict, lists tuples."""
    if type(value) is dict and _flat(value):  # the common case, without recursion
        return FrozenDict(value)
    value = jsonable(value)
    if isinstance(value, dict):
        return FrozenDict({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    return value


def _is_frozen(value: Any) -> bool:
    """True when ``value`` holds only immutable JSON-safe data (no copy needed)."""
    if isinstance(value, FrozenDict):
        data = value._data
        return _flat(data) or all(_is_frozen(v) for v in data.values())
    if isinstance(value, tuple):
        return all(_is_frozen(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def thaw(value: Any) -> Any:
    """The inverse of :func:`freeze`: plain dicts and lists for ``json.dumps``."""
    if type(value) is FrozenDict and _flat(value._data):
        return dict(value._data)
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


#: One encoder for every stored payload (``json.dumps`` with options builds one
#: per call, on every registration).
_PAYLOAD_JSON = json.JSONEncoder(separators=(",", ":"))


def new_event_id() -> str:
    """A new event id: stable across retries, the hooks' idempotency key.

    Time-ordered (then random), so outbox rows append to their indexes.
    """
    return f"evt_{time.time_ns():016x}{os.urandom(8).hex()}"


def event_id_floor(seconds: float) -> str:
    """The lowest id :func:`new_event_id` gives at ``seconds`` (epoch) or later,
    so "made before then" is a range of ids. Times before 1970 or past the 16
    hex digits (year 2554) give the lowest or highest such prefix: a 17-digit
    one would not sort after the ids."""
    nanoseconds = min(max(int(seconds * 1e9), 0), 2**64 - 1)
    return f"evt_{nanoseconds:016x}"


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclasses.dataclass(frozen=True)
class User:
    """The user being created, as Auth0 passes it to a post-registration hook.

    .. versionadded:: 0.1
    """

    id: str | None = None
    tenant: str | None = None
    username: str | None = None
    email: str | None = None
    email_verified: bool = False
    phone_number: str | None = None
    phone_number_verified: bool = False
    user_metadata: Mapping[str, Any] = dataclasses.field(default_factory=FrozenDict)
    app_metadata: Mapping[str, Any] = dataclasses.field(default_factory=FrozenDict)
    name: str | None = None

    def __post_init__(self) -> None:
        for key in ("user_metadata", "app_metadata"):
            value = getattr(self, key)
            if not value and type(value) is FrozenDict:
                continue
            if not isinstance(value, FrozenDict) or not _is_frozen(value):
                frozen = freeze(value if isinstance(value, Mapping) else {})
                object.__setattr__(self, key, frozen)

    def __repr__(self) -> str:
        # Personal data stays out of reprs (an f-string in an exception message
        # would otherwise carry it into logs).
        return f"User(id={self.id!r}, tenant={self.tenant!r}, ...)"

    def to_dict(self) -> dict[str, Any]:
        """Auth0's keys (``emailVerified``, ``phoneNumber``...); ``name`` if known."""
        data: dict[str, Any] = {
            "id": self.id,
            "tenant": self.tenant,
            "username": self.username,
            "email": self.email,
            "emailVerified": self.email_verified,
            "phoneNumber": self.phone_number,
            "phoneNumberVerified": self.phone_number_verified,
            "user_metadata": thaw(self.user_metadata),
            "app_metadata": thaw(self.app_metadata),
        }
        if self.name is not None:
            data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> User:
        """Read Auth0's keys (snake_case accepted too); unknown keys are ignored."""
        if not isinstance(data, Mapping):
            raise TypeError("'user' must be a JSON object")

        def pick(*names: str, default: Any = None) -> Any:
            for name in names:
                if name in data:
                    return data[name]
            return default

        user_id = pick("id", "user_id")
        return cls(
            id=None if user_id is None else str(user_id),
            tenant=pick("tenant"),
            username=pick("username"),
            email=pick("email"),
            email_verified=_flag(
                pick("emailVerified", "email_verified", default=False)
            ),
            phone_number=pick("phoneNumber", "phone_number"),
            phone_number_verified=_flag(
                pick("phoneNumberVerified", "phone_number_verified", default=False)
            ),
            user_metadata=pick("user_metadata", default=None) or {},
            app_metadata=pick("app_metadata", default=None) or {},
            name=pick("name"),
        )


@dataclasses.dataclass(frozen=True)
class Connection:
    """The "database connection" the user signed up through (Auth0's term)."""

    id: str
    name: str = "Username-Password-Authentication"
    tenant: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "tenant": self.tenant}


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """Facts about the HTTP request that created the user (personal data: the IP)."""

    ip: str | None = None
    user_agent: str | None = None
    hostname: str | None = None

    def __repr__(self) -> str:
        return f"RequestInfo(hostname={self.hostname!r}, ...)"

    def to_dict(self) -> dict[str, Any]:
        return {"ip": self.ip, "userAgent": self.user_agent, "hostname": self.hostname}


@dataclasses.dataclass(frozen=True)
class Context:
    """Auth0's ``context``: language, connection, plus our delivery facts.

    ``secrets`` is filled from ``POSTREG_SECRETS`` when the hook runs; it is never
    part of :meth:`to_dict`, ``repr`` or anything stored.

    .. versionadded:: 0.1
    """

    request_language: str | None = None
    connection: Connection = dataclasses.field(
        default_factory=lambda: Connection(id="con_users")
    )
    tenant: str | None = None
    secrets: Mapping[str, Any] = dataclasses.field(
        default_factory=FrozenDict, repr=False, compare=False
    )
    request: RequestInfo | None = None
    event_id: str = ""
    attempt: int = 1
    created_at: _dt.datetime = dataclasses.field(default_factory=_utcnow)

    def __post_init__(self) -> None:
        if not isinstance(self.secrets, FrozenDict):
            object.__setattr__(self, "secrets", _read_only(self.secrets))

    def to_dict(self) -> dict[str, Any]:
        """Auth0's ``requestLanguage`` and ``connection`` plus extras; no secrets."""
        data = self._snapshot()
        data["eventId"] = self.event_id
        data["attempt"] = self.attempt
        data["createdAt"] = self.created_at.isoformat()
        return data

    def _snapshot(self) -> dict[str, Any]:
        """What an outbox row stores: all but the id, time and attempt (columns)."""
        return {
            "requestLanguage": self.request_language,
            "connection": self.connection.to_dict(),
            "tenant": self.tenant,
            "request": None if self.request is None else self.request.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, event_id: str = "") -> Context:
        if not isinstance(data, Mapping):
            raise TypeError("'context' must be a JSON object")
        conn = data.get("connection") or {}
        if not isinstance(conn, Mapping):
            raise TypeError("'context.connection' must be a JSON object")
        tenant = data.get("tenant", conn.get("tenant"))
        req = data.get("request")
        created = data.get("createdAt")
        return cls(
            request_language=data.get("requestLanguage", data.get("request_language")),
            connection=Connection(
                id=str(conn.get("id") or "con_users"),
                name=str(conn.get("name") or "Username-Password-Authentication"),
                tenant=conn.get("tenant", tenant),
            ),
            tenant=tenant,
            request=None
            if not isinstance(req, Mapping)
            else RequestInfo(
                ip=req.get("ip"),
                user_agent=req.get("userAgent", req.get("user_agent")),
                hostname=req.get("hostname"),
            ),
            event_id=str(data.get("eventId") or event_id),
            attempt=int(data.get("attempt") or 1),
            created_at=_dt.datetime.fromisoformat(created)
            if isinstance(created, str)
            else _utcnow(),
        )


@dataclasses.dataclass(frozen=True)
class Event:
    """One registration: the user, the context, and the id every retry shares.

    .. versionadded:: 0.1
    """

    id: str
    user: User
    context: Context

    def to_dict(self) -> dict[str, Any]:
        """The Runner's body shape: ``{"user": ..., "context": ...}``."""
        return {"user": self.user.to_dict(), "context": self.context.to_dict()}

    def to_json(self) -> str:
        return _PAYLOAD_JSON.encode(self.to_dict())

    def stored_json(self) -> str:
        """The outbox row's ``payload``: :meth:`to_json` less what the row's own
        columns hold (``eventId``, ``createdAt``) or each attempt sets
        (``attempt``): fewer bytes written in the registration's transaction."""
        return _PAYLOAD_JSON.encode(
            {"user": self.user.to_dict(), "context": self.context._snapshot()}
        )

    @classmethod
    def from_stored(
        cls, payload: str | bytes, event_id: str, created_at: float
    ) -> Event:
        """Read back a row: its :meth:`stored_json` payload (or, in rows written by
        earlier versions, a whole body), with the id and time of its columns."""
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise ValueError("the stored payload is not a JSON object")
        context = data.get("context")
        context = dict(context) if isinstance(context, dict) else {}
        context["eventId"] = event_id  # the row's key is the idempotency key
        context.setdefault(
            "createdAt",
            _dt.datetime.fromtimestamp(created_at, _dt.timezone.utc).isoformat(),
        )
        return cls.from_dict({**data, "context": context})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Read a Runner body (Auth0's sample parses); missing ids are generated."""
        if not isinstance(data, Mapping) or "user" not in data:
            raise ValueError(
                'an event body is a JSON object {"user": {...}, "context": {...}}'
            )
        context_data = data.get("context") or {}
        event_id = ""
        if isinstance(context_data, Mapping):
            event_id = str(context_data.get("eventId") or "")
        event_id = event_id or new_event_id()
        context = Context.from_dict(context_data, event_id=event_id)
        user = User.from_dict(data["user"])
        if user.tenant is None and context.tenant is not None:
            user = dataclasses.replace(user, tenant=context.tenant)
        if context.tenant is None and user.tenant is not None:
            context = dataclasses.replace(context, tenant=user.tenant)
        return cls(id=event_id, user=user, context=context)

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the event body is not valid JSON: {exc}") from None
        return cls.from_dict(data)


def sample_body() -> dict[str, Any]:
    """Auth0's Runner default body, shipped with the package."""
    text = resources.files("flask_postreg").joinpath("data/sample-body.json")
    data: dict[str, Any] = json.loads(text.read_text("utf-8"))
    return data
