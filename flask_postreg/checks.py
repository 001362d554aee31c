"""``flask postreg check``: is this app ready to run its hooks?

Local checks (configuration, outbox tables, hooks) and, on request, a TCP connect
to each configured endpoint (Slack, SMTP, webhooks) with a short timeout.
"""

from __future__ import annotations

import dataclasses
import socket
import urllib.parse
from typing import TYPE_CHECKING
from typing import Any

import sqlalchemy as sa

from . import config as _config
from .scrub import database_url
from .store.database import DatabaseStore
from .store.tables import index_problems
from .store.tables import table_problems

if TYPE_CHECKING:
    from .state import _State

#: Seconds a ping's TCP connect may take.
PING_TIMEOUT = 3.0


@dataclasses.dataclass(frozen=True)
class Check:
    kind: str  # "config", "store", "hooks" or "ping"
    name: str
    ok: bool
    detail: str
    warning: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def local(state: _State) -> list[Check]:
    """Configuration, store and hooks."""
    results: list[Check] = []
    try:
        _config.load(state.app.config)
        results.append(Check("config", "configuration", True, "POSTREG_* keys valid"))
    except Exception as exc:
        results.append(Check("config", "configuration", False, str(exc)))
    results.extend(_store(state))
    results.extend(_hooks(state))
    results.extend(_mail(state))
    return results


def _mail(state: _State) -> list[Check]:
    """A warning when the SMTP password would cross the network in clear."""
    values = state.values
    mails = values["MAIL_NOTIFY"] or values["MAIL_WELCOME"]
    if not mails or not values["MAIL_USERNAME"]:
        return []
    if values["MAIL_USE_TLS"] or values["MAIL_USE_SSL"]:
        return []
    server = values["MAIL_SERVER"] or "localhost"
    if server in ("localhost", "127.0.0.1", "::1"):
        return []
    return [
        Check(
            "config",
            "mail",
            True,
            f"the SMTP login to {server} is sent unencrypted: set"
            " POSTREG_MAIL_USE_TLS = True (STARTTLS) or POSTREG_MAIL_USE_SSL = True",
            warning=True,
        )
    ]


def _store(state: _State) -> list[Check]:
    store = state.store
    if not isinstance(store, DatabaseStore):
        detail = "memory store: deliveries are not durable across restarts"
        if not state.values["RUN_IN_WEB"]:
            return [
                Check(
                    "store",
                    "store",
                    False,
                    detail + "; POSTREG_RUN_IN_WEB = False needs the database store",
                )
            ]
        return [Check("store", "store", True, detail, warning=True)]
    url = database_url(store.engine.url)
    try:
        with store.connect() as conn:
            inspector = sa.inspect(conn)
            tables = (store.t.events, store.t.deliveries, store.t.hook_settings)
            missing, stale = table_problems(inspector, tables)
            indexes = [] if missing or stale else index_problems(inspector, tables)
    except Exception as exc:
        return [
            Check("store", "database", False, f"{url}: {type(exc).__name__}: {exc}")
        ]
    if missing:
        return [
            Check(
                "store",
                "tables",
                False,
                f"missing in {url}: {', '.join(missing)}; create them with"
                " db.create_all() or a migration (flask db migrate && flask db"
                " upgrade)",
            )
        ]
    if stale:
        return [
            Check(
                "store",
                "tables",
                False,
                f"not the layout this version writes, in {url}: {', '.join(stale)};"
                " migrate them (flask db migrate && flask db upgrade) or drop and"
                " recreate them with db.create_all()",
            )
        ]
    found = [Check("store", "tables", True, f"postreg_* tables present in {url}")]
    if indexes:
        found.append(
            Check(
                "store",
                "indexes",
                True,
                f"{'; '.join(indexes)}, in {url}: made by an earlier version?"
                " Recreate them (a migration, or drop them and run db.create_all())",
                warning=True,
            )
        )
    return found


def _hooks(state: _State) -> list[Check]:
    try:
        state.refresh_settings()
        hooks = state.hooks(include_disabled=True)
    except Exception as exc:
        return [Check("hooks", "hooks", False, f"{type(exc).__name__}: {exc}")]
    if not hooks:
        return [
            Check(
                "hooks",
                "hooks",
                True,
                "no hook registered: register one with @postreg.hook",
                warning=True,
            )
        ]
    results = []
    for hook in hooks:
        ok = callable(hook.func)
        detail = f"{hook.source}, {'enabled' if hook.enabled else 'disabled'}"
        if not ok:
            detail = f"not callable: {hook.func!r}"
        results.append(Check("hooks", hook.name, ok, detail))
    return results


def endpoints(state: _State) -> list[tuple[str, str, int]]:
    """(hook name, host, port) for every configured handler endpoint."""
    values = state.values
    found: list[tuple[str, str, int]] = []

    def add(name: str, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.hostname:
            default = 443 if parts.scheme == "https" else 80
            found.append((name, parts.hostname, parts.port or default))

    if values["SLACK_WEBHOOK_URL"]:
        add("slack", values["SLACK_WEBHOOK_URL"])
    elif values["SLACK_TOKEN"]:
        add("slack", values["SLACK_BASE_URL"] or "https://slack.com/api/")
    if values["MAIL_NOTIFY"] or values["MAIL_WELCOME"]:
        port = values["MAIL_PORT"] or (
            465 if values["MAIL_USE_SSL"] else 587 if values["MAIL_USE_TLS"] else 25
        )
        found.append(("mail", values["MAIL_SERVER"] or "localhost", int(port)))
    for item in values["WEBHOOKS"] or ():
        add(f"webhook:{item['name']}", str(item["url"]))
    return found


def ping(state: _State, timeout: float = PING_TIMEOUT) -> list[Check]:
    """A TCP connect to each endpoint (never the URL itself: it may be a secret)."""
    results = []
    for name, host, port in endpoints(state):
        where = f"{host}:{port}"
        try:
            with socket.create_connection((host, port), timeout=timeout):
                pass
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            results.append(Check("ping", name, False, f"{where} unreachable: {reason}"))
        else:
            results.append(Check("ping", name, True, f"{where} reachable"))
    if not results:
        results.append(
            Check("ping", "endpoints", True, "no handler endpoint configured", True)
        )
    return results
