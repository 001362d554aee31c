"""The Slack message for one registration: ``text`` and ``blocks``, every user
value escaped for mrkdwn or sent as ``plain_text``, within Slack's limits.

Needs nothing from slack-sdk, so a template can be tried without it.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from ..events import Context
from ..events import User

#: The reference example's message: ``New User: <name or email> (<email>)``.
DEFAULT_TEMPLATE = "New User: {display} ({email})"

#: Slack's documented limits (characters).
TEXT_LIMIT = 40000
SECTION_LIMIT = 3000
PLAIN_TEXT_LIMIT = 150
#: Each user value is cut to this before it enters a message.
VALUE_LIMIT = 500

Template = str | Callable[[User, Context], "str | Sequence[Mapping[str, Any]]"]


def escape(value: object) -> str:
    """Escape text for Slack mrkdwn: ``&``, ``<``, ``>`` (in that order).

    A user named ``<!channel>`` then shows as text instead of pinging everyone,
    and ``<https://evil.test|click>`` shows as text instead of a link.
    """
    text = "" if value is None else str(value)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, ending in "…" when cut.

    Never leaves half an escape sequence (``&am``) at the end.
    """
    if len(text) <= limit:
        return text
    text = text[: limit - 1]
    amp = text.rfind("&")
    if amp != -1 and ";" not in text[amp:] and len(text) - amp <= 5:
        text = text[:amp]
    return text + "…"


def _plain(value: object) -> str:
    """A user value for a template: text, one line, cut to :data:`VALUE_LIMIT`."""
    text = "" if value is None else str(value)
    return cut(" ".join(text.split()), VALUE_LIMIT)


def user_fields(user: User, context: Context) -> dict[str, str]:
    """The names a ``POSTREG_SLACK_TEMPLATE`` can use, unescaped, one line each."""
    display = user.name or user.email or user.username or user.id
    return {
        "display": _plain(display),
        "name": _plain(user.name),
        "email": _plain(user.email),
        "username": _plain(user.username),
        "id": _plain(user.id),
        "tenant": _plain(user.tenant),
        "phone_number": _plain(user.phone_number),
        "email_verified": "yes" if user.email_verified else "no",
        "connection": _plain(context.connection.name),
        "event_id": _plain(context.event_id),
    }


def check_template(template: str) -> str:
    """Fail early (at ``init_app``) on a template naming an unknown field."""
    sample = user_fields(User(id="1", email="a@example.com"), Context(event_id="e"))
    try:
        template.format_map(sample)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise ValueError(
            f"POSTREG_SLACK_TEMPLATE cannot be formatted ({exc!r}); use fields"
            f" among {sorted(sample)}, e.g. {DEFAULT_TEMPLATE!r}"
        ) from None
    return template


def build_message(
    user: User, context: Context, template: Template | None = None
) -> dict[str, Any]:
    """The ``text`` and ``blocks`` for one registration (user values escaped)."""
    fields = user_fields(user, context)
    escaped = {k: escape(v) for k, v in fields.items()}
    default_text = cut(DEFAULT_TEMPLATE.format_map(escaped), TEXT_LIMIT)
    if callable(template):
        result = template(user, context)
        if isinstance(result, str):
            text = cut(result, TEXT_LIMIT)
            return {"text": text, "blocks": _default_blocks(text, fields)}
        blocks = [dict(b) for b in result]
        return {"text": default_text, "blocks": blocks}
    fmt = template or DEFAULT_TEMPLATE
    text = cut(fmt.format_map(escaped), TEXT_LIMIT)
    return {"text": text, "blocks": _default_blocks(text, fields)}


def _default_blocks(text: str, fields: Mapping[str, str]) -> list[dict[str, Any]]:
    """A section with the (escaped) text, a context line in ``plain_text``."""
    facts = [f"Username: {fields['username']}" if fields["username"] else ""]
    facts.append(f"via {fields['connection']}" if fields["connection"] else "")
    note = " · ".join(f for f in facts if f) or "New registration"
    return [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(text, SECTION_LIMIT)},
        },
        {
            "type": "context",
            "elements": [
                {
                    "type": "plain_text",
                    "text": cut(note, PLAIN_TEXT_LIMIT),
                    "emoji": False,
                }
            ],
        },
    ]
