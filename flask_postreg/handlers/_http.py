"""One HTTP POST with a total deadline, no redirects, and status classification.

Shared by the Slack and webhook handlers. ``urllib``'s ``timeout`` bounds each
socket operation only: a server that drips one byte a second never trips it.
Here a timer shuts the socket down when the attempt's total deadline passes, and
the body is read in chunks against the same deadline, so an attempt always ends.
Redirects are never followed (a 302 would turn the POST into a GET that
"succeeds"); ``http.client`` does not follow them, and a 3xx is a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import email.utils
import http.client
import math
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping

from ..errors import PermanentError
from ..errors import RetryLater

#: Bytes of a response body kept (for error messages); the rest is discarded.
MAX_BODY = 64 * 1024


class DeadlineExceeded(TimeoutError):
    """The attempt ran past its total deadline (connect + send + response)."""


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header(self, name: str) -> str | None:
        lower = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lower:
                return value
        return None


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout: float = 10.0,
    deadline: float = 15.0,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """POST ``body`` to ``url``; any status is returned, never raised.

    ``timeout`` bounds each socket operation, ``deadline`` the whole attempt.
    Raises :class:`DeadlineExceeded` past the deadline and ``OSError`` on
    network errors.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Say nothing of the URL itself: it is often the secret.
        raise PermanentError("the URL must start with http:// or https://")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    started = time.monotonic()
    end = started + deadline
    per_op = max(min(timeout, deadline), 0.001)
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl_context or ssl.create_default_context()
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=per_op, context=context
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=per_op)
    with cutoff(lambda: conn.sock, deadline) as expired:
        return _exchange(conn, target, body, headers, end, deadline, per_op, expired)


def _exchange(
    conn: http.client.HTTPConnection,
    target: str,
    body: bytes,
    headers: Mapping[str, str],
    end: float,
    deadline: float,
    per_op: float,
    expired: threading.Event,
) -> Response:
    resp: http.client.HTTPResponse | None = None
    try:
        send_headers = {"Content-Length": str(len(body)), **headers}
        conn.request("POST", target, body=body, headers=send_headers)
        resp = conn.getresponse()
        chunks: list[bytes] = []
        kept = 0
        while True:
            if time.monotonic() >= end:
                raise DeadlineExceeded()
            chunk = resp.read1(16384)
            if not chunk:
                break
            if kept < MAX_BODY:
                chunks.append(chunk[: MAX_BODY - kept])
                kept += len(chunks[-1])
        if expired.is_set():  # the cut-off ended the read early: not a response
            raise DeadlineExceeded()
        return Response(
            status=resp.status,
            headers={k: v for k, v in resp.getheaders()},
            body=b"".join(chunks),
        )
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set() or isinstance(exc, DeadlineExceeded):
            raise DeadlineExceeded(
                f"no complete response within the deadline of {deadline:g}s"
            ) from None
        if isinstance(exc, (socket.timeout, TimeoutError)):
            raise DeadlineExceeded(
                f"no data for {per_op:g}s (the per-read timeout)"
            ) from None
        raise
    finally:
        if resp is not None:
            resp.close()
        conn.close()


#: Seconds between looks for a socket that did not exist yet at the deadline.
RECHECK = 0.05


@contextlib.contextmanager
def cutoff(
    get_socket: Callable[[], socket.socket | None], seconds: float
) -> Iterator[threading.Event]:
    """Shut the socket down after ``seconds``: blocked reads and writes end at once.

    Yields an event that is set when the cut-off fired, so the caller can say
    "deadline" instead of reporting a confusing connection reset. If there is
    no socket yet (a slow name lookup), it looks again every ``RECHECK``
    seconds until there is one or the block ends: the socket a late connect
    makes is shut down too.
    """
    expired = threading.Event()
    done = threading.Event()

    def cut() -> None:
        expired.set()
        while not done.is_set():
            sock = get_socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                return
            done.wait(RECHECK)

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        done.set()
        timer.cancel()


#: What :func:`plain_url` and :func:`plain_headers` ask for, for error messages
#: (which never quote the value itself: a URL or a header is often a secret).
URL_RULE = "'url' must be an http:// or https:// URL with a host and no spaces or control characters"
HEADERS_RULE = (
    "'headers' must be a dict of header names to text values, without line breaks"
)


def plain_url(url: object) -> bool:
    """An http(s) URL with a host and nothing http.client would refuse later
    (whitespace, control characters): checked when configured, so a bad URL
    fails at start-up with a message that does not quote it."""
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 for c in url):
        return False
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def plain_headers(headers: object) -> bool:
    """A dict of header names to text values, without line breaks (http.client
    refuses them at send time, quoting the value: often a key)."""
    return isinstance(headers, Mapping) and all(
        isinstance(k, str)
        and isinstance(v, str)
        and bool(k.strip())
        and not any(c in k + v for c in "\r\n\0")
        for k, v in headers.items()
    )


def retry_after(value: str | None, *, now: _dt.datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" and "inf" parse as floats; no server means them
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return max((when - now).total_seconds(), 0.0)


def raise_for_status(resp: Response, what: str) -> None:
    """Map a non-2xx answer to :class:`RetryLater` or :class:`PermanentError`.

    2xx: success. 3xx: permanent (redirects are not followed). 408, 429, 5xx:
    retry, honouring ``Retry-After``. Other 4xx (404, 410, 401...): permanent.
    """
    status = resp.status
    if 200 <= status < 300:
        return
    detail = resp.text.strip()[:200]
    suffix = f": {detail}" if detail else ""
    if 300 <= status < 400:
        raise PermanentError(
            f"{what} answered {status} (a redirect); redirects are not followed:"
            " update the URL to the final address"
        )
    if status in (408, 429) or status >= 500:
        raise RetryLater(
            f"{what} answered {status}{suffix}",
            retry_after=retry_after(resp.header("Retry-After")),
        )
    if status == 410:
        raise PermanentError(f"{what} answered 410 Gone: the endpoint was removed")
    raise PermanentError(f"{what} answered {status}{suffix}")
