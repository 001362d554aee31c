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
import logging
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

from ..errors import PermanentError
from ..errors import RetryLater
from ..events import Context
from ..events import User
from ..scrub import scrub
from . import _http
from .slack_message import DEFAULT_TEMPLATE
from .slack_message import Template
from .slack_message import build_message
from .slack_message import check_template
from .slack_message import escape
from .slack_ratelimit import RateLimiter
from .slack_ratelimit import limiter_for

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


#: Where slack-sdk's DEBUG lines start a request's or a response's body: the
#: message, with the new user's name and whatever a template put in it.
_BODY_MARKERS = (", body: ", ", body_params: ")


class ScrubFilter(logging.Filter):
    """Rewrite a record's message without webhook URLs, tokens, e-mail addresses
    and message bodies (personal data)."""

    def filter(self, record: logging.LogRecord) -> bool:
        with _SECRETS_LOCK:
            secrets = tuple(_SECRETS)
        try:
            message = record.getMessage()
        except Exception:  # a broken format: drop the args rather than leak them
            message = str(record.msg)
        for marker in _BODY_MARKERS:
            head, found, _ = message.partition(marker)
            if found:  # the body and everything after it (headers: redacted)
                message = f"{head}{found}(omitted by flask-postreg)"
                break
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


def _after_fork() -> None:
    """A parent's thread may have held these locks at fork time."""
    global _SECRETS_LOCK, _recorders_lock
    _SECRETS_LOCK = threading.Lock()
    _recorders_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


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
