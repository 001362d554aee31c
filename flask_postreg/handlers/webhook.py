"""Signed webhooks (Standard Webhooks) for CRMs and other receivers.

Each configured endpoint is its own hook (``webhook:<name>``) with its own
retries. The body is the Auth0-shaped ``{"user": ..., "context": ...}`` JSON
(never secrets); it is signed per https://www.standardwebhooks.com/ with the
``standardwebhooks`` package (``pip install flask-postreg[webhooks]``):

- ``webhook-id``: the event id, the same on every retry (the receiver's
  idempotency key);
- ``webhook-timestamp`` and ``webhook-signature``: new on every attempt, over
  the exact bytes sent.

Redirects are never followed, every attempt has a total deadline, 2xx is
success, 410 and other 4xx are permanent, 408/429/5xx are retried (honouring
``Retry-After``).

.. versionadded:: 0.1
"""

from __future__ import annotations

import datetime as _dt
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from ..events import Context
from ..events import User
from . import _http

try:
    from standardwebhooks import Webhook
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "Signed webhooks need standardwebhooks: pip install 'flask-postreg[webhooks]'"
    ) from exc

__all__ = ["WebhookSender", "payload"]

USER_AGENT = "flask-postreg-webhooks"


def payload(user: User, context: Context) -> str:
    """The JSON text sent (and signed): compact, keys sorted, UTF-8."""
    body = {"user": user.to_dict(), "context": context.to_dict()}
    return json.dumps(body, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


class WebhookSender:
    """A hook that POSTs each registration, signed, to one endpoint.

    ``secret`` is a Standard Webhooks secret (``whsec_`` + base64).
    ``timeout`` is the total deadline of one attempt. ``clock`` (seconds since
    the epoch) is injectable for tests.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        name: str = "crm",
        timeout: float = 10.0,
        ssl_context: Any = None,
        headers: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _http.plain_url(url):
            raise ValueError(f"webhook {name!r}: {_http.URL_RULE}")
        try:
            self._signer = Webhook(secret)
        except Exception as exc:
            raise ValueError(
                f"webhook {name!r}: 'secret' must be a Standard Webhooks secret,"
                " 'whsec_' followed by base64 (for example"
                " 'whsec_' + base64.b64encode(os.urandom(32)).decode())"
            ) from exc
        self.hook_name = f"webhook:{name}"
        self.name = name
        self.url = url
        self.timeout = timeout
        self.ssl_context = ssl_context
        if headers is not None and not _http.plain_headers(headers):
            raise ValueError(f"webhook {name!r}: {_http.HEADERS_RULE}")
        self.headers = dict(headers or {})
        self.clock = clock
        raw = secret.removeprefix("whsec_") if isinstance(secret, str) else ""
        # The URL's query often carries a token, and header values are often
        # keys: none of them may reach a log line or a stored error.
        query = urllib.parse.urlsplit(url).query
        hidden = (url, secret, raw, query, *self.headers.values())
        self.scrub_values: tuple[str, ...] = tuple(
            s for s in hidden if len(s.strip()) >= 4
        )

    def __repr__(self) -> str:  # never the URL or the secret
        return f"<WebhookSender {self.hook_name!r}>"

    def sign(self, msg_id: str, body: str) -> dict[str, str]:
        """Fresh Standard Webhooks headers for ``body``, timestamped now."""
        seconds = int(self.clock())
        when = _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(seconds),
            "webhook-signature": self._signer.sign(msg_id, when, body),
        }

    def __call__(self, user: User, context: Context) -> None:
        body = payload(user, context)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **self.headers,
            **self.sign(context.event_id, body),
        }
        resp = _http.post(
            self.url,
            body.encode("utf-8"),
            headers,
            timeout=self.timeout,
            deadline=self.timeout,
            ssl_context=self.ssl_context,
        )
        _http.raise_for_status(resp, f"webhook {self.name!r}")
