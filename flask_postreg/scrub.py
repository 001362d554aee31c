"""Remove secrets and personal data from text before it is logged or stored."""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

# No quote or "=" in the local part: "email='ann@x.org'" keeps "email='".
_EMAIL = re.compile(r"[\w.!#$%&*+/?^~-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+", re.IGNORECASE)
_URL_SECRET = re.compile(
    r"(https?://)[^\s/'\"<>]*(?:hooks\.slack\.com/services|/hooks?/|/webhooks?/)[^\s'\"<>]*",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"(\w+://)[^\s/@'\"<>]+@")
_TOKENS = re.compile(
    r"\b(?:xox[abposr]-[\w-]+|whsec_[\w+/=]+|(?:Bearer|Basic)\s+[\w.~+/=-]+)",
    re.IGNORECASE,
)
#: ``token=...``, ``api_key=...`` and the like in query strings and messages.
_KEY_VALUES = re.compile(
    r"\b((?:access_|api_|auth_)?(?:token|key|secret|password|pwd)=)[^\s&'\"<>]+",
    re.IGNORECASE,
)

MAX_MESSAGE = 500

#: Query parameters of a database URL whose value is a secret (libpq's
#: ``password``, ``sslpassword``, drivers' ``token``, ``api_key``, ...).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)


def scrub(
    text: str, secrets: Iterable[str] = (), *, limit: int | None = MAX_MESSAGE
) -> str:
    """Replace known secret values (see :func:`hide_secrets`), tokens, webhook
    URLs and e-mail addresses."""
    text = storable(hide_secrets(text, secrets))
    text = _TOKENS.sub("[secret]", text)
    text = _KEY_VALUES.sub(r"\1[secret]", text)
    text = _URL_SECRET.sub(r"\1[redacted-url]", text)
    text = _URL_USERINFO.sub(r"\1[secret]@", text)
    text = _EMAIL.sub("[email]", text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def storable(text: str) -> str:
    """``text`` as any database's text column takes it: NUL (a binary response
    body quoted in an error; PostgreSQL refuses it) and lone surrogates (an
    undecodable file name; no UTF-8 encoder takes them) are written escaped."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def hide_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace known secret values (4 characters or more), as given, URL-encoded
    or JSON-escaped: an HTTP library quotes the URL it failed on."""
    forms = {form for s in secrets if len(s) >= 4 for form in _forms(s)}
    for secret in sorted(forms, key=len, reverse=True):
        text = text.replace(secret, "[secret]")
    return text


def _forms(secret: str) -> set[str]:
    """The ways a secret's text shows up in messages."""
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        urllib.parse.quote(secret),
        json.dumps(secret)[1:-1],
    }


def database_url(url: Any) -> str:
    """A SQLAlchemy URL to show: the password hidden, wherever it is given (in
    the user info, or as a query parameter such as libpq's ``password=``)."""
    hidden = "postreg-hidden"  # rendered unescaped, then shown as ***
    query = {
        name: hidden if _SECRET_PARAM.search(name) else value
        for name, value in url.query.items()
    }
    text = str(url.set(query=query).render_as_string(hide_password=True))
    return text.replace(hidden, "***")
