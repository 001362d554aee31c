"""Copy a user model instance and the current request into frozen payloads.

Runs inside ``after_flush``: it reads only the instance's loaded state (no SQL),
never raises (a bad field is logged and left empty, the registration goes on),
and reads only allow-listed fields, so a password hash cannot reach a hook.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import operator
import re
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from flask import has_request_context
from flask import request

from .config import ConfigError
from .errors import PostRegError
from .events import Connection
from .events import Context
from .events import FrozenDict
from .events import RequestInfo
from .events import User

logger = logging.getLogger("flask_postreg")

#: ``User`` fields a model can supply (``tenant`` comes from the config).
USER_FIELDS = (
    "id",
    "username",
    "email",
    "email_verified",
    "phone_number",
    "phone_number_verified",
    "user_metadata",
    "app_metadata",
    "name",
)

#: Attribute names tried, in order, when ``POSTREG_USER_FIELDS`` does not say.
CANDIDATES: dict[str, tuple[str, ...]] = {
    "username": ("username", "user_name", "login", "handle", "nickname"),
    "email": ("email", "email_address", "mail"),
    "email_verified": (
        "email_verified",
        "is_email_verified",
        "email_confirmed",
        "confirmed",
        "confirmed_at",
    ),
    "phone_number": ("phone_number", "phone", "mobile", "us_phone_number"),
    "phone_number_verified": ("phone_number_verified", "phone_verified"),
    "user_metadata": ("user_metadata",),
    "app_metadata": ("app_metadata",),
    "name": ("name", "full_name", "display_name"),
}

#: Attribute names that must never be read, whatever the configuration says.
_FORBIDDEN = re.compile(
    r"pass(word|wd)?|pwd|hash|secret|token|otp|totp|salt|api_?key|credential", re.I
)

Getter = Callable[[Any], Any]


class FieldMap:
    """How to read each ``User`` field from one model class (resolved once)."""

    def __init__(self, model: type, overrides: Mapping[str, Any] | None) -> None:
        mapper: Any = sa.inspect(model)
        self._columns = {prop.key for prop in mapper.column_attrs}
        attrs = self._columns | {
            name for name in dir(model) if not name.startswith("_")
        }
        #: Field -> how to read it; column attributes are read from the loaded
        #: state (``instance.__dict__``: no SQL, no descriptor), others called.
        self.getters: dict[str, Getter] = {}
        self.columns: dict[str, str] = {}
        overrides = dict(overrides or {})
        unknown = set(overrides) - set(USER_FIELDS)
        if unknown:
            raise ConfigError(
                f"POSTREG_USER_FIELDS has unknown field(s) {sorted(unknown)};"
                f" valid fields are {list(USER_FIELDS)}"
            )
        for field in USER_FIELDS:
            source = overrides.get(field)
            if callable(source):
                self.getters[field] = source
                continue
            if isinstance(source, str):
                if _FORBIDDEN.search(source):
                    raise ConfigError(
                        f"POSTREG_USER_FIELDS maps {field!r} to {source!r}, which looks"
                        " like a credential; hooks never receive passwords, hashes or"
                        " tokens."
                    )
                if source not in attrs:
                    raise ConfigError(
                        f"POSTREG_USER_FIELDS maps {field!r} to {source!r}, but"
                        f" {model.__name__} has no such attribute"
                    )
                self._use(field, source)
                continue
            if source is not None:
                raise ConfigError(
                    f"POSTREG_USER_FIELDS[{field!r}] must be an attribute name or a"
                    " callable(instance)"
                )
            if field == "id":
                pk = mapper.primary_key
                if len(pk) == 1:
                    key = mapper.get_property_by_column(pk[0]).key
                    self._use("id", key)
                continue
            for candidate in CANDIDATES.get(field, ()):
                if (
                    candidate in attrs
                    and not _FORBIDDEN.search(candidate)
                    # A method (def confirmed(self): ...) is not a value.
                    and not inspect.isroutine(getattr(model, candidate, None))
                ):
                    self._use(field, candidate)
                    break

    def _use(self, field: str, name: str) -> None:
        if name in self._columns:
            self.columns[field] = name
        else:
            self.getters[field] = operator.attrgetter(name)

    @property
    def fields(self) -> set[str]:
        """The ``User`` fields this model supplies."""
        return set(self.columns) | set(self.getters)

    def read(self, instance: Any) -> dict[str, Any]:
        loaded = instance.__dict__
        values: dict[str, Any] = {
            field: loaded.get(name) for field, name in self.columns.items()
        }
        for field, getter in self.getters.items():
            try:
                values[field] = getter(instance)
            except Exception as exc:  # a bad field must not fail the registration
                logger.error(
                    "flask-postreg could not read User field %r from %s (%s); it is"
                    " left empty. Fix POSTREG_USER_FIELDS or the model.",
                    field,
                    type(instance).__name__,
                    type(exc).__name__,
                )
        return values


_EMPTY = FrozenDict()


def _as_metadata(value: Any) -> Mapping[str, Any]:
    if not value:
        return _EMPTY
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, Mapping) else {}


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = value if isinstance(value, str) else str(value)
    return text[:1024]


@contextlib.contextmanager
def load_expired(
    instance: Any, connection: sa.Connection | None = None
) -> Iterator[Any]:
    """``instance`` with the attributes a commit expired loaded again (outside a
    flush only: one SELECT), to snapshot inside the block; the snapshot reads
    loaded state, never SQL, and ``emit(user)`` after a commit would otherwise
    send an empty user.

    With ``connection`` the row is read there, into a copy whose session stays
    open for the block (a field read through a relationship loads there too):
    the instance's own session may hold the pool's only connection for as long
    as it lives, or be closed. Without it, the instance's session loads it.
    """
    state = sa.inspect(instance)
    expired = state.expired_attributes
    if expired and connection is not None and state.identity is not None:
        with sa.orm.Session(bind=connection) as session:
            fresh = session.get(state.mapper.class_, state.identity)
            if fresh is None:
                raise PostRegError(
                    f"emit() got a {type(instance).__name__} that is no longer in"
                    " the database (its row was deleted after the commit)"
                )
            yield fresh
        return
    if expired:
        try:
            getattr(instance, next(iter(expired)))  # refreshes every expired column
        except sa.orm.exc.DetachedInstanceError:
            raise PostRegError(
                f"emit() got a {type(instance).__name__} whose attributes expired"
                " at the commit and whose session is closed, so they cannot be"
                " loaded: call emit() before the session ends, or pass"
                " flask_postreg.User(...)"
            ) from None
    yield instance


def build_user(fields: FieldMap, instance: Any, tenant: str | None) -> User:
    """A frozen :class:`User` from ``instance``'s allow-listed fields."""
    raw = fields.read(instance)
    return User(
        id=_as_text(raw.get("id")),
        tenant=tenant,
        username=_as_text(raw.get("username")),
        email=_as_text(raw.get("email")),
        email_verified=bool(raw.get("email_verified")),
        phone_number=_as_text(raw.get("phone_number")),
        phone_number_verified=bool(raw.get("phone_number_verified")),
        user_metadata=_as_metadata(raw.get("user_metadata")),
        app_metadata=_as_metadata(raw.get("app_metadata")),
        name=_as_text(raw.get("name")),
    )


_LANG_TAG = re.compile(r"^[a-z]{1,8}(?:-[a-z0-9]{1,8})*$")
_MAX_HEADER = 4096


def parse_accept_language(header: str | None) -> str | None:
    """The highest-quality language tag, lower-cased; None if there is none.

    ``"en-US,en;q=0.9"`` gives ``"en-us"``; ``*``, malformed tags and bad ``q``
    values are skipped, never an error. Ties keep the header's order.
    """
    if not header or len(header) > _MAX_HEADER:
        return None
    best: tuple[float, int, str] | None = None
    for index, item in enumerate(header.split(",")):
        parts = [p.strip() for p in item.split(";")]
        tag = parts[0].lower()
        if not tag or tag == "*" or not _LANG_TAG.match(tag):
            continue
        quality = 1.0
        valid = True
        for param in parts[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    valid = False
                if not 0.0 <= quality <= 1.0 or quality != quality:
                    valid = False
        if not valid or quality <= 0.0:
            continue
        if best is None or quality > best[0]:
            best = (quality, index, tag)
    return None if best is None else best[2]


def _header(name: str, limit: int = 512) -> str | None:
    value = request.headers.get(name)
    return None if value is None else value[:limit]


def build_context(
    *,
    event_id: str,
    connection: Connection,
    tenant: str | None,
    default_language: str | None,
) -> Context:
    """The :class:`Context` for a registration happening now (request or not)."""
    language: str | None = default_language
    info: RequestInfo | None = None
    if has_request_context():
        try:
            language = parse_accept_language(request.headers.get("Accept-Language"))
            language = language or default_language
            info = RequestInfo(
                ip=request.remote_addr,
                user_agent=_header("User-Agent"),
                hostname=(request.host or "")[:255] or None,
            )
        except Exception:  # odd headers never fail a registration
            logger.warning("flask-postreg could not read the request's headers")
    return Context(
        request_language=language,
        connection=connection,
        tenant=tenant,
        request=info,
        event_id=event_id,
    )


def with_run_facts(
    context: Context, *, attempt: int, secrets: Mapping[str, Any]
) -> Context:
    """The context for one attempt: its number and the secrets, resolved now."""
    if attempt == context.attempt and not secrets and not context.secrets:
        return context  # the common first attempt: nothing to change
    return dataclasses.replace(context, attempt=attempt, secrets=secrets)
