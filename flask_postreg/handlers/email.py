"""E-mail about each registration: notify a fixed list, and/or welcome the user.

Standard library only (``smtplib``, ``email.message.EmailMessage``). Subject and
bodies come from templates the app can override under ``templates/postreg/``:
``notify_subject.txt``, ``notify_body.txt``, ``notify_body.html`` (optional),
and the same three with ``welcome_``. Headers are built with
:class:`email.headerregistry.Address` and recipients are passed explicitly, so a
name such as ``Eve, x@evil.test`` or one with CR/LF adds no recipient and no
header. SMTP 4xx replies are retried, 5xx are permanent; certificates are
verified.

.. versionadded:: 0.1
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import smtplib
import socket
import ssl
from collections.abc import Sequence
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from flask import current_app
from flask import render_template
from jinja2 import TemplateNotFound

from ..errors import PermanentError
from ..errors import RetryLater
from ..events import Context
from ..events import User
from ._http import cutoff

__all__ = ["MailNotifier", "SMTPSettings", "WelcomeMailer", "parse_address"]

logger = logging.getLogger("flask_postreg.email")

#: Longest subject line kept; longer rendered subjects are cut.
SUBJECT_LIMIT = 200


@dataclasses.dataclass(frozen=True)
class SMTPSettings:
    """How to reach the SMTP server (``POSTREG_MAIL_*``).

    ``timeout`` bounds each socket operation and, doubled, the whole exchange.
    ``ssl_context`` defaults to :func:`ssl.create_default_context` (verified),
    or one trusting ``ca_file`` when given.
    """

    sender: str
    server: str = "localhost"
    port: int | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    use_tls: bool = False
    use_ssl: bool = False
    timeout: float = 10.0
    ca_file: str | None = None
    ssl_context: ssl.SSLContext | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.use_tls and self.use_ssl:
            raise ValueError(
                "POSTREG_MAIL_USE_TLS (STARTTLS, port 587) and POSTREG_MAIL_USE_SSL"
                " (implicit TLS, port 465) exclude each other: set only one"
            )
        parse_address(self.sender, what="POSTREG_MAIL_SENDER")

    @property
    def effective_port(self) -> int:
        if self.port:
            return self.port
        return 465 if self.use_ssl else 587 if self.use_tls else 25

    def context(self) -> ssl.SSLContext:
        if self.ssl_context is not None:
            return self.ssl_context
        return ssl.create_default_context(cafile=self.ca_file)

    @property
    def deadline(self) -> float:
        return self.timeout * 2


def _one_line(text: str | None) -> str:
    """Drop CR, LF and other control characters: one harmless line."""
    return " ".join("".join(c if c.isprintable() else " " for c in text or "").split())


def parse_address(
    value: str, *, name: str | None = None, what: str = "address"
) -> Address:
    """An :class:`Address` from ``"a@b.c"`` or ``"Name <a@b.c>"``; ValueError if bad.

    One address only: ``"a@b.c, x@evil.test"`` is refused, never two recipients.
    """
    from email.headerregistry import HeaderRegistry

    if (
        not isinstance(value, str)
        or not value.strip()
        or "\r" in value
        or "\n" in value
    ):
        raise ValueError(f"{what} must be one e-mail address, got {value!r}")
    header = HeaderRegistry()("To", value)
    addresses: tuple[Address, ...] = tuple(getattr(header, "addresses", ()))
    defects = tuple(getattr(header, "defects", ()))
    if len(addresses) != 1 or defects or not addresses[0].domain:
        raise ValueError(f"{what} must be one e-mail address, got {value!r}")
    parsed: Address = addresses[0]
    display = _one_line(name if name is not None else parsed.display_name)
    return Address(display_name=display, addr_spec=parsed.addr_spec)


def _render(name: str, **ctx: Any) -> str:
    return render_template(name, **ctx)


def _render_optional(name: str, **ctx: Any) -> str | None:
    try:
        current_app.jinja_env.get_or_select_template(name)
    except TemplateNotFound:
        return None
    return _render(name, **ctx)


class _Mailer:
    """Render ``postreg/<kind>_*`` templates and send one message over SMTP."""

    kind = "notify"

    def __init__(self, settings: SMTPSettings, *, name: str) -> None:
        self.settings = settings
        self.hook_name = name
        self.scrub_values: tuple[str, ...] = tuple(s for s in (settings.password,) if s)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.hook_name!r} via {self.settings.server}>"

    def recipients(self, user: User) -> list[Address]:
        raise NotImplementedError

    def build(self, user: User, context: Context) -> tuple[EmailMessage, list[str]]:
        """The message and the exact envelope recipients."""
        to = self.recipients(user)
        ctx = {"user": user, "context": context, "recipients": to}
        subject = _one_line(_render(f"postreg/{self.kind}_subject.txt", **ctx))
        if len(subject) > SUBJECT_LIMIT:
            subject = subject[: SUBJECT_LIMIT - 1] + "…"
        text = _render(f"postreg/{self.kind}_body.txt", **ctx)
        html = _render_optional(f"postreg/{self.kind}_body.html", **ctx)
        sender = parse_address(self.settings.sender, what="POSTREG_MAIL_SENDER")
        msg = EmailMessage()
        msg["Subject"] = subject
        msg["From"] = sender
        msg["To"] = to
        msg["Message-ID"] = make_msgid(domain=sender.domain)
        if context.event_id:
            msg["X-PostReg-Event-Id"] = _one_line(context.event_id)
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
        return msg, [a.addr_spec for a in to]

    def __call__(self, user: User, context: Context) -> None:
        msg, to_addrs = self.build(user, context)
        send(self.settings, msg, to_addrs)


class MailNotifier(_Mailer):
    """A hook that tells a fixed list of addresses about each new account.

    .. versionadded:: 0.1
    """

    kind = "notify"

    def __init__(
        self, settings: SMTPSettings, to: Sequence[str], *, name: str = "mail:notify"
    ) -> None:
        super().__init__(settings, name=name)
        if isinstance(to, str):
            to = [to]
        self.to = [parse_address(a, what="POSTREG_MAIL_NOTIFY entry") for a in to]
        if not self.to:
            raise ValueError("MailNotifier needs at least one address in 'to'")

    def recipients(self, user: User) -> list[Address]:
        return list(self.to)


class WelcomeMailer(_Mailer):
    """A hook that sends the new user a welcome message.

    .. versionadded:: 0.1
    """

    kind = "welcome"

    def __init__(self, settings: SMTPSettings, *, name: str = "mail:welcome") -> None:
        super().__init__(settings, name=name)

    def recipients(self, user: User) -> list[Address]:
        if not user.email:
            raise PermanentError("the new user has no e-mail address to welcome")
        try:
            return [parse_address(user.email, name=user.name or "", what="user.email")]
        except (ValueError, IndexError) as exc:
            raise PermanentError(
                "the new user's e-mail address is not a single valid address"
            ) from exc


def _classify(code: int, what: str) -> Exception:
    if 400 <= code < 500:
        return RetryLater(f"SMTP server replied {code} {what} (temporary)")
    return PermanentError(f"SMTP server replied {code} {what} (permanent)")


def _reply(resp: Any) -> str:
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return _one_line(text)[:200]


def send(settings: SMTPSettings, msg: EmailMessage, to_addrs: list[str]) -> None:
    """Deliver ``msg`` to exactly ``to_addrs``; map SMTP replies to retry/permanent."""
    host, port = settings.server, settings.effective_port
    smtp: smtplib.SMTP
    if settings.use_ssl:
        smtp = smtplib.SMTP_SSL(timeout=settings.timeout, context=settings.context())
    else:
        smtp = smtplib.SMTP(timeout=settings.timeout)
    try:
        with cutoff(lambda: getattr(smtp, "sock", None), settings.deadline) as expired:
            try:
                _exchange(smtp, settings, host, port, msg, to_addrs)
            except Exception as exc:
                if expired.is_set():  # what failed read a cut-off connection
                    raise TimeoutError(
                        f"SMTP exchange with {host}:{port} exceeded its deadline of"
                        f" {settings.deadline:g}s"
                    ) from None
                if not isinstance(exc, (OSError, smtplib.SMTPServerDisconnected)):
                    raise
                if isinstance(exc, ssl.SSLCertVerificationError):
                    raise ssl.SSLCertVerificationError(
                        f"the certificate of SMTP server {host}:{port} is not"
                        f" trusted ({exc.verify_message}); set POSTREG_MAIL_CA_FILE"
                        " to its CA if it is a private one"
                    ) from None
                if isinstance(
                    exc, (socket.timeout, TimeoutError)
                ) or "timed out" in str(exc):
                    raise TimeoutError(
                        f"SMTP server {host}:{port} did not answer within"
                        f" {settings.timeout:g}s"
                    ) from None
                raise
    finally:
        try:
            smtp.close()
        except Exception:  # pragma: no cover - closing a broken socket
            logger.debug("closing the SMTP connection failed", exc_info=True)


def _exchange(
    smtp: smtplib.SMTP,
    settings: SMTPSettings,
    host: str,
    port: int,
    msg: EmailMessage,
    to_addrs: list[str],
) -> None:
    try:
        # Constructed without a host (so the deadline covers connecting too):
        # STARTTLS and SMTP_SSL take the name to verify from ``_host``.
        smtp._host = host  # type: ignore[attr-defined]
        code, resp = smtp.connect(host, port)
        if code != 220:
            raise _classify(code, _reply(resp))
        smtp.ehlo()
        if settings.use_tls:
            smtp.starttls(context=settings.context())
            smtp.ehlo()
        if settings.username:
            smtp.login(settings.username, settings.password or "")
        sender = parse_address(settings.sender).addr_spec
        refused = smtp.send_message(msg, from_addr=sender, to_addrs=to_addrs)
        if refused:
            logger.warning(
                "SMTP server refused %d of %d recipients of %s; the others got it",
                len(refused),
                len(to_addrs),
                msg.get("Message-ID", "a message"),
            )
        # The message was accepted: a failed QUIT changes nothing.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            smtp.quit()
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        if codes and all(400 <= c < 500 for c in codes):
            raise RetryLater(
                f"SMTP server deferred every recipient ({sorted(set(codes))})"
            ) from None
        raise PermanentError(
            f"SMTP server refused every recipient ({sorted(set(codes))})"
        ) from None
    except smtplib.SMTPResponseException as exc:
        raise _classify(exc.smtp_code, _reply(exc.smtp_error)) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise PermanentError(f"SMTP server {host}:{port}: {exc}") from None
