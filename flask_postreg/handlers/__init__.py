"""Built-in handlers (Slack, e-mail, webhooks, console), configured from app.config.

Their ``POSTREG_*`` keys are declared here, so ``init_app`` can check them
without importing optional dependencies; each handler module is imported only
when its settings are present.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

from flask import Blueprint

from ..config import PREFIX
from ..config import ConfigError
from ..config import check_bool
from ..config import is_seconds
from ..config import positive_float
from ..config import positive_int
from ..config import register
from ..dispatch import Hook
from ._http import HEADERS_RULE
from ._http import URL_RULE
from ._http import plain_headers
from ._http import plain_url

if TYPE_CHECKING:
    from ..state import _State


# -- checks -------------------------------------------------------------------


def _opt_str(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(
            f"{PREFIX}{name} must be a string, got {type(value).__name__}"
        )
    return value


def _opt_bool(name: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{PREFIX}{name} must be True, False or None, got {value!r}")
    return value


def _seconds_or_zero(name: str, value: Any) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not (value == 0 or is_seconds(value)):
        raise ConfigError(
            f"{PREFIX}{name} must be a finite number of seconds >= 0, got {value!r}"
        )
    return float(value)


def _opt_port(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(f"{PREFIX}{name} must be a TCP port (1-65535), got {value!r}")
    return value


def _template(name: str, value: Any) -> Any:
    if value is None or callable(value):
        return value
    if not isinstance(value, str):
        raise ConfigError(
            f"{PREFIX}{name} must be a format string such as"
            " 'New User: {display} ({email})' or a callable(user, context)"
        )
    return value


def _addresses(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(a, str) for a in value
    ):
        raise ConfigError(
            f"{PREFIX}{name} must be a list of e-mail addresses, got {value!r}"
        )
    return list(value)


_WEBHOOK_KEYS = {"name", "url", "secret", "timeout", "max_attempts", "headers"}


def _webhooks(name: str, value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    example = '[{"name": "crm", "url": "https://...", "secret": "whsec_..."}]'
    if isinstance(value, Mapping) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"{PREFIX}{name} must be a list like {example}")
    seen: set[str] = set()
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise ConfigError(f"{PREFIX}{name}[{i}] must be a dict like {example}")
        unknown = set(item) - _WEBHOOK_KEYS
        if unknown:
            raise ConfigError(
                f"{PREFIX}{name}[{i}] has unknown key(s) {sorted(unknown)}; valid keys"
                f" are {sorted(_WEBHOOK_KEYS)}"
            )
        hook = str(item.get("name") or "")
        if not hook or not item.get("url") or not item.get("secret"):
            # Never echo the item: it holds the secret.
            raise ConfigError(f"{PREFIX}{name}[{i}] needs 'name', 'url' and 'secret'")
        if hook in seen:
            raise ConfigError(f"{PREFIX}{name} names {hook!r} twice; names must differ")
        seen.add(hook)
        where = f"{name}[{i}]"  # the webhook's options, never the URL or secret
        if not plain_url(item["url"]):
            raise ConfigError(f"{PREFIX}{where}: {URL_RULE}")
        if item.get("timeout") is not None:
            positive_float(f"{where}['timeout']", item["timeout"])
        if item.get("max_attempts") is not None:
            positive_int(f"{where}['max_attempts']", item["max_attempts"])
        headers = item.get("headers")
        if headers is not None and not plain_headers(headers):
            raise ConfigError(f"{PREFIX}{where}: {HEADERS_RULE}")
        items.append(dict(item))
    return items


# -- keys ---------------------------------------------------------------------

register(
    "SLACK_WEBHOOK_URL",
    None,
    "Slack incoming-webhook URL; setting it registers the `slack` hook. A secret:"
    " never logged.",
    _opt_str,
)
register(
    "SLACK_TOKEN",
    None,
    "Slack bot token (`xoxb-...`) for `chat.postMessage`, with"
    " `POSTREG_SLACK_CHANNEL`; an alternative to the webhook URL.",
    _opt_str,
)
register("SLACK_CHANNEL", None, "Channel for token mode, e.g. `#signups`.", _opt_str)
register(
    "SLACK_TEMPLATE",
    None,
    "Message: a format string over `display`, `name`, `email`, `username`, `id`,"
    " `tenant`, `phone_number`, `email_verified`, `connection`, `event_id` (values"
    " escaped), or `callable(user, context)` returning text or blocks; default"
    " `New User: {display} ({email})`.",
    _template,
)
register(
    "SLACK_SUPPRESS",
    None,
    "Record Slack messages instead of sending them; default `app.testing`.",
    _opt_bool,
)
register(
    "SLACK_TIMEOUT",
    10.0,
    "Seconds one Slack attempt may take in total (connect, send, answer).",
    positive_float,
)
register(
    "SLACK_MIN_INTERVAL",
    1.0,
    "Seconds between two messages to one Slack destination (Slack allows about"
    " one per second); a burst queues.",
    _seconds_or_zero,
)
register(
    "SLACK_BASE_URL",
    "https://slack.com/api/",
    "Slack Web API base URL for token mode.",
    _opt_str,
)
register(
    "MAIL_NOTIFY",
    [],
    "Addresses told about each new account (registers the `mail:notify` hook).",
    _addresses,
)
register(
    "MAIL_WELCOME",
    False,
    "Send each new user a welcome message (registers the `mail:welcome` hook).",
    check_bool,
)
register("MAIL_SERVER", "localhost", "SMTP server host.", _opt_str)
register(
    "MAIL_PORT",
    None,
    "SMTP port; default 465 with `MAIL_USE_SSL`, 587 with `MAIL_USE_TLS`, else 25.",
    _opt_port,
)
register("MAIL_USERNAME", None, "SMTP login user (none: no login).", _opt_str)
register("MAIL_PASSWORD", None, "SMTP login password; never logged.", _opt_str)
register(
    "MAIL_USE_TLS", False, "Upgrade with STARTTLS (certificate verified).", check_bool
)
register(
    "MAIL_USE_SSL", False, "Implicit TLS from the first byte (port 465).", check_bool
)
register(
    "MAIL_SENDER",
    None,
    "`From` address, e.g. `Signups <noreply@example.com>`; required for e-mail.",
    _opt_str,
)
register(
    "MAIL_TIMEOUT",
    10.0,
    "Seconds per SMTP socket operation (the whole exchange gets twice that).",
    positive_float,
)
register(
    "MAIL_CA_FILE",
    None,
    "CA bundle (PEM) trusted for the SMTP server's certificate, for a private CA;"
    " default: the system's.",
    _opt_str,
)
register(
    "WEBHOOKS",
    [],
    'Signed webhooks: `[{"name": "crm", "url": "https://...", "secret":'
    ' "whsec_..."}]`, each the hook `webhook:<name>`; optional per item:'
    " `timeout`, `max_attempts`, `headers`.",
    _webhooks,
)
register(
    "WEBHOOK_TIMEOUT",
    10.0,
    "Seconds one webhook attempt may take in total (connect, send, answer).",
    positive_float,
)
register(
    "CONSOLE",
    False,
    "Log each registration's JSON at INFO on `flask_postreg.console` (for development).",
    check_bool,
)

#: Templates under ``templates/postreg/``; the app's own templates win.
blueprint = Blueprint(
    "postreg", __name__.rsplit(".", 1)[0], template_folder="templates"
)


def _add(state: _State, handler: Any, **options: Any) -> None:
    name = handler.hook_name
    if name in state.handler_hooks:
        raise ConfigError(f"two built-in handlers are both named {name!r}")
    if name in state.ext._hooks:
        raise ConfigError(
            f"a hook registered with @postreg.hook is named {name!r}, the name of"
            " a built-in handler this config turns on; rename the hook (its"
            " outbox rows would run the wrong one)"
        )
    state.handler_hooks[name] = Hook(
        name=name,
        func=handler,
        source="handler",
        secrets=tuple(handler.scrub_values),
        **options,
    )
    state.dispatcher.add_scrub_values(handler.scrub_values)


def configure(state: _State) -> None:
    """Register the handlers that ``state``'s config asks for as per-app hooks."""
    values = state.values
    app = state.app
    if "postreg" not in app.blueprints:
        app.register_blueprint(blueprint)

    if values["CONSOLE"]:
        from .log import ConsoleHandler

        _add(state, ConsoleHandler())

    if values["SLACK_WEBHOOK_URL"] or values["SLACK_TOKEN"]:
        from .slack import SlackNotifier

        suppress = values["SLACK_SUPPRESS"]
        timeout = values["SLACK_TIMEOUT"]
        try:
            slack = SlackNotifier(
                values["SLACK_WEBHOOK_URL"],
                token=values["SLACK_TOKEN"],
                channel=values["SLACK_CHANNEL"],
                template=values["SLACK_TEMPLATE"],
                timeout=timeout,
                suppress=app.testing if suppress is None else suppress,
                min_interval=values["SLACK_MIN_INTERVAL"],
                base_url=values["SLACK_BASE_URL"],
            )
        except ValueError as exc:
            raise ConfigError(f"Slack handler: {exc}") from None
        # The watchdog's limit: the wait for a rate-limit slot plus the deadline.
        _add(state, slack, timeout=timeout + slack.max_wait + 5.0)

    if values["MAIL_NOTIFY"] or values["MAIL_WELCOME"]:
        from .email import MailNotifier
        from .email import SMTPSettings
        from .email import WelcomeMailer

        if not values["MAIL_SENDER"]:
            raise ConfigError(
                f"{PREFIX}MAIL_SENDER is required to send e-mail, e.g."
                " 'Signups <noreply@example.com>'"
            )
        try:
            settings = SMTPSettings(
                sender=values["MAIL_SENDER"],
                server=values["MAIL_SERVER"] or "localhost",
                port=values["MAIL_PORT"],
                username=values["MAIL_USERNAME"],
                password=values["MAIL_PASSWORD"],
                use_tls=values["MAIL_USE_TLS"],
                use_ssl=values["MAIL_USE_SSL"],
                timeout=values["MAIL_TIMEOUT"],
                ca_file=values["MAIL_CA_FILE"],
            )
            mailers: list[Any] = []
            if values["MAIL_NOTIFY"]:
                mailers.append(MailNotifier(settings, values["MAIL_NOTIFY"]))
            if values["MAIL_WELCOME"]:
                mailers.append(WelcomeMailer(settings))
        except ValueError as exc:
            raise ConfigError(f"E-mail handler: {exc}") from None
        for mailer in mailers:
            _add(state, mailer, timeout=settings.deadline + 5.0)

    if values["WEBHOOKS"]:
        from .webhook import WebhookSender

        for item in values["WEBHOOKS"]:
            timeout = float(item.get("timeout") or values["WEBHOOK_TIMEOUT"])
            try:
                sender = WebhookSender(
                    item["url"],
                    item["secret"],
                    name=str(item["name"]),
                    timeout=timeout,
                    headers=item.get("headers"),
                )
            except ValueError as exc:
                raise ConfigError(f"{PREFIX}WEBHOOKS: {exc}") from None
            _add(
                state,
                sender,
                timeout=timeout + 5.0,
                max_attempts=item.get("max_attempts"),
            )
