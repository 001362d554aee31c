"""Post each registration to Slack: an incoming webhook or ``chat.postMessage``.

Configured from ``POSTREG_SLACK_*`` (see :func:`flask_postreg.handlers.configure`)
or used by hand::

    postreg.hook(SlackNotifier(webhook_url="https://hooks.slack.com/services/..."))

Built on slack-sdk (``pip install flask-postreg[slack]``), with its transport
replaced by one that has a total deadline and never follows redirects, and its
sleeping retry handlers turned off: the dispatcher retries, the worker never
sleeps on a server's say-so. Every user-controlled value is escaped for mrkdwn
or sent as ``plain_text``; the webhook URL and the token never reach a log line.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from ..errors import PermanentError
from ..errors import RetryLater
from ..events import Context
from ..events import User
from ..scrub import scrub
from . import _http

try:
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError
    from slack_sdk.webhook import WebhookClient
    from slack_sdk.webhook import WebhookResponse
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "The Slack handler needs slack-sdk: pip install 'flask-postreg[slack]'"
    ) from exc

__all__ = [
    "DEFAULT_TEMPLATE",
    "RateLimiter",
    "SlackNotifier",
    "escape",
    "record_messages",
]

logger = logging.getLogger("flask_postreg.slack")

#: The reference example's message: ``New User: <name or email> (<email>)``.
DEFAULT_TEMPLATE = "New User: {display} ({email})"

#: Slack's documented limits (characters).
TEXT_LIMIT = 40000
SECTION_LIMIT = 3000
PLAIN_TEXT_LIMIT = 150
#: Each user value is cut to this before it enters a message.
VALUE_LIMIT = 500

Template = str | Callable[[User, Context], "str | Sequence[Mapping[str, Any]]"]


# -- escaping and limits ------------------------------------------------------


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


# -- rate limit ---------------------------------------------------------------


class RateLimiter:
    """At most one message per ``interval`` seconds to one destination.

    :meth:`acquire` reserves the next free slot and sleeps until it, but never
    longer than ``max_wait``: past that it raises :class:`RetryLater` with the
    wait, so a burst queues through retries instead of parking every worker.
    ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        interval: float = 1.0,
        *,
        max_wait: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = interval
        self.max_wait = max_wait
        self.clock = clock
        self.sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Wait for this caller's slot; returns the seconds waited."""
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            wait = slot - now
            if wait > self.max_wait:
                raise RetryLater(
                    f"Slack allows about one message per {self.interval:g}s to one"
                    f" destination; the next free slot is in {wait:.1f}s",
                    retry_after=wait,
                )
            self._next = slot + self.interval
        if wait > 0:
            self.sleep(wait)
        return wait

    def defer(self, seconds: float) -> None:
        """The server asked for a pause (429): hold every sender back as well."""
        with self._lock:
            self._next = max(self._next, self.clock() + seconds)


_LIMITERS: dict[str, RateLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter_for(destination: str, interval: float, max_wait: float) -> RateLimiter:
    """The process-wide limiter of one destination (shared by every app)."""
    key = hashlib.sha256(destination.encode()).hexdigest()
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = RateLimiter(interval, max_wait=max_wait)
        return limiter


# -- keeping secrets out of logs ----------------------------------------------

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()

#: slack-sdk's own loggers; they log the webhook URL and the body at DEBUG.
SDK_LOGGERS = (
    "slack_sdk",
    "slack_sdk.webhook.client",
    "slack_sdk.web.base_client",
    "slack_sdk.web.slack_response",
    "slack_sdk.proxy_env_variable_loader",
)


class ScrubFilter(logging.Filter):
    """Rewrite a record's message without webhook URLs, tokens and e-mail addresses."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _SECRETS_LOCK:
            secrets = tuple(_SECRETS)
        try:
            message = record.getMessage()
        except Exception:  # a broken format: drop the args rather than leak them
            message = str(record.msg)
        record.msg = scrub(message, secrets, limit=None)
        record.args = None
        return True


_FILTER = ScrubFilter()
#: The logger slack-sdk clients are given: everything they log is scrubbed.
sdk_logger = logging.getLogger("flask_postreg.slack.sdk")


def _protect(*secrets: str) -> None:
    with _SECRETS_LOCK:
        _SECRETS.update(s for s in secrets if s)
    for name in (sdk_logger.name, *SDK_LOGGERS):
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)


# -- recording instead of sending --------------------------------------------

_recorders: list[list[dict[str, Any]]] = []
_recorders_lock = threading.Lock()


@contextlib.contextmanager
def record_messages() -> Iterator[list[dict[str, Any]]]:
    """Collect the messages suppressed notifiers would have sent (any thread).

    ::

        with record_messages() as outbox:
            register_a_user()
            postreg.join(5)
        assert outbox[0]["text"].startswith("New User:")
    """
    outbox: list[dict[str, Any]] = []
    with _recorders_lock:
        _recorders.append(outbox)
    try:
        yield outbox
    finally:
        with _recorders_lock:
            _recorders.remove(outbox)


# -- transports with a deadline and no redirects ------------------------------


class _WebhookClient(WebhookClient):
    deadline: float = 10.0

    def _perform_http_request_internal(self, url: str, req: Any) -> WebhookResponse:
        resp = _http.post(
            url,
            req.data or b"",
            dict(req.header_items()),
            timeout=self.timeout,
            deadline=self.deadline,
            ssl_context=self.ssl,
        )
        return WebhookResponse(
            url=url, status_code=resp.status, body=resp.text, headers=dict(resp.headers)
        )


class _WebClient(WebClient):
    deadline: float = 10.0

    def _perform_urllib_http_request_internal(
        self, url: str, req: Any
    ) -> dict[str, Any]:
        resp = _http.post(
            url,
            req.data or b"",
            dict(req.header_items()),
            timeout=self.timeout,
            deadline=self.deadline,
            ssl_context=self.ssl,
        )
        return {"status": resp.status, "headers": dict(resp.headers), "body": resp.text}


#: ``chat.postMessage`` errors worth retrying; every other error is permanent.
_TRANSIENT = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable",
     "request_timeout"}
)  # fmt: skip


class SlackNotifier:
    """A hook that posts ``New User: <name or email> (<email>)`` to Slack.

    Give ``webhook_url`` (an incoming webhook) or ``token`` and ``channel``
    (``chat.postMessage``). ``template`` is a format string over
    :func:`user_fields` (values are escaped) or ``callable(user, context)``
    returning the text (escape user values with :func:`escape`) or a list of
    blocks. ``timeout`` is the total deadline of one attempt. ``suppress``
    records messages (``notifier.sent`` and :func:`record_messages`) instead of
    sending. ``min_interval`` spaces messages to one destination.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        webhook_url: str | None = None,
        *,
        token: str | None = None,
        channel: str | None = None,
        template: Template | None = None,
        timeout: float = 10.0,
        suppress: bool = False,
        min_interval: float = 1.0,
        max_wait: float = 5.0,
        base_url: str = "https://slack.com/api/",
        ssl_context: Any = None,
        limiter: RateLimiter | None = None,
        name: str = "slack",
    ) -> None:
        if bool(webhook_url) == bool(token):
            raise ValueError(
                "SlackNotifier needs either webhook_url (an incoming webhook) or"
                " token with channel (chat.postMessage), not both"
            )
        if token and not channel:
            raise ValueError("SlackNotifier(token=...) also needs channel='#name'")
        if isinstance(template, str):
            check_template(template)
        self.hook_name = name
        self.webhook_url = webhook_url
        self.token = token
        self.channel = channel
        self.template = template
        self.timeout = timeout
        self.suppress = suppress
        self.max_wait = max_wait
        self.sent: list[dict[str, Any]] = []
        self.scrub_values: tuple[str, ...] = tuple(s for s in (webhook_url, token) if s)
        _protect(*self.scrub_values)
        destination = webhook_url or f"{base_url}|{token}|{channel}"
        self.limiter = limiter or limiter_for(destination, min_interval, max_wait)
        self._client: Any
        if webhook_url:
            self._client = _WebhookClient(
                webhook_url,
                timeout=max(1, math.ceil(timeout)),
                ssl=ssl_context,
                logger=sdk_logger,
                retry_handlers=[],
            )
        else:
            self._client = _WebClient(
                token,
                base_url=base_url,
                timeout=max(1, math.ceil(timeout)),
                ssl=ssl_context,
                logger=sdk_logger,
                retry_handlers=[],
            )
        self._client.deadline = timeout

    def __repr__(self) -> str:  # never the URL or the token
        mode = "webhook" if self.webhook_url else f"channel={self.channel!r}"
        return f"<SlackNotifier {self.hook_name!r} {mode}>"

    def message(self, user: User, context: Context) -> dict[str, Any]:
        return build_message(user, context, self.template)

    def __call__(self, user: User, context: Context) -> None:
        message = self.message(user, context)
        if self.suppress:
            self._record(message)
            return
        self.limiter.acquire()
        if self.webhook_url:
            self._send_webhook(message)
        else:
            self._post_message(message)

    def _record(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        with _recorders_lock:
            for outbox in _recorders:
                outbox.append(message)
        logger.debug("Slack message suppressed (POSTREG_SLACK_SUPPRESS)")

    def _send_webhook(self, message: dict[str, Any]) -> None:
        resp = self._client.send(text=message["text"], blocks=message["blocks"])
        status = int(resp.status_code)
        if 200 <= status < 300:
            return
        result = _http.Response(
            status, dict(resp.headers or {}), str(resp.body or "").encode()
        )
        try:
            _http.raise_for_status(result, "Slack")
        except RetryLater as exc:
            if status == 429:
                self.limiter.defer(exc.retry_after or self.limiter.interval)
            raise

    def _post_message(self, message: dict[str, Any]) -> None:
        try:
            self._client.chat_postMessage(
                channel=self.channel, text=message["text"], blocks=message["blocks"]
            )
        except SlackApiError as exc:
            resp = exc.response
            status = int(getattr(resp, "status_code", 0) or 0)
            error = str(resp.get("error", "") if resp is not None else "") or "error"
            headers = getattr(resp, "headers", None) or {}
            wait = _http.retry_after(
                headers.get("Retry-After") or headers.get("retry-after")
            )
            if status == 429 or error == "ratelimited":
                self.limiter.defer(wait or self.limiter.interval)
                raise RetryLater(
                    "Slack chat.postMessage is rate limited", retry_after=wait
                ) from None
            if status >= 500 or error in _TRANSIENT:
                raise RetryLater(
                    f"Slack chat.postMessage failed: {error} (HTTP {status})",
                    retry_after=wait,
                ) from None
            raise PermanentError(
                f"Slack chat.postMessage refused the message: {error} (HTTP {status})"
            ) from None
