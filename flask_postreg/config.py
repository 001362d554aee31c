"""Every ``POSTREG_*`` key: its default, its meaning, and how it is checked.

One table serves ``init_app`` (defaults, validation, "did you mean"), and the
README's configuration table, so code and docs cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

PREFIX = "POSTREG_"

DEFAULT_RETRY_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000, 36000)


class ConfigError(ValueError):
    """A ``POSTREG_*`` setting is unknown or has a value that cannot work."""


@dataclasses.dataclass(frozen=True)
class Key:
    name: str
    default: Any
    doc: str
    check: Callable[[str, Any], Any] | None = None


def is_count(value: Any) -> bool:
    """A whole number >= 1 (an attempt count, a pool size); not a bool."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


def is_seconds(value: Any) -> bool:
    """A finite number > 0 (nan passes "<= 0"; neither it nor inf is a time)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and value > 0
    )


def positive_int(name: str, value: Any) -> int:
    if not is_count(value):
        raise ConfigError(f"{PREFIX}{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def positive_float(name: str, value: Any) -> float:
    if not is_seconds(value):
        raise ConfigError(
            f"{PREFIX}{name} must be a number of seconds > 0, got {value!r}"
        )
    return float(value)


def _optionalpositive_float(name: str, value: Any) -> float | None:
    return None if value is None else positive_float(name, value)


def _choice(*choices: str) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if value is not None and value not in choices:
            raise ConfigError(
                f"{PREFIX}{name} must be one of {', '.join(map(repr, choices))},"
                f" got {value!r}"
            )
        return value

    return check


def _schedule(name: str, value: Any) -> tuple[float, ...]:
    items: tuple[float, ...] = ()
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        items = tuple(float(v) for v in value)
    if not items or any(not math.isfinite(v) or v < 0 for v in items):
        raise ConfigError(
            f"{PREFIX}{name} must be a non-empty list of seconds >= 0"
            f" (delay before attempt 2, 3, ...), got {value!r}"
        )
    return items


def _mapping_or_callable(name: str, value: Any) -> Any:
    if value is None:
        return {}
    if not (isinstance(value, Mapping) or callable(value)):
        raise ConfigError(
            f"{PREFIX}{name} must be a dict or a callable returning one, got"
            f" {type(value).__name__}"
        )
    return dict(value) if isinstance(value, Mapping) else value  # this app's own copy


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{PREFIX}{name} must be a string, got {value!r}")
    return value


def _optional_mapping(name: str, value: Any) -> Mapping[str, Any] | None:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{PREFIX}{name} must be a dict, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{PREFIX}{name} must be True or False, got {value!r}")
    return value


KEYS: dict[str, Key] = {}


def register(
    name: str, default: Any, doc: str, check: Callable[[str, Any], Any] | None = None
) -> None:
    """Declare a ``POSTREG_<name>`` key (handlers and stores add their own)."""
    KEYS[name] = Key(name, default, doc, check)


register(
    "TENANT",
    None,
    "`user.tenant` and `context.connection.tenant`; default `app.name`.",
    _optional_str,
)
register(
    "CONNECTION",
    None,
    '`context.connection`; default `{"id": "con_<user table>", "name":'
    ' "Username-Password-Authentication"}`.',
    _optional_mapping,
)
register(
    "SECRETS",
    {},
    "`context.secrets` (a dict, or a callable returning one); resolved when a hook"
    " runs, never stored or logged.",
    _mapping_or_callable,
)
register(
    "USER_FIELDS",
    None,
    "Map of `User` field to a model attribute name or `callable(instance)`;"
    " overrides auto-detection.",
    _optional_mapping,
)
register(
    "DEFAULT_LANGUAGE",
    None,
    "`context.request_language` when there is no request or no usable"
    " `Accept-Language`.",
    _optional_str,
)
register(
    "BACKEND",
    "thread",
    '`"thread"` (a pool in this process) or `"sync"` (inline after commit; retries run at once).',
    _choice("thread", "sync"),
)
register(
    "STORE",
    None,
    '`"database"` (outbox tables, durable) or `"memory"`; default `"database"` when a'
    " `db` is given and it is not in-memory SQLite.",
    _choice("memory", "database"),
)
register("MAX_WORKERS", 4, "Threads in the pool.", positive_int)
register(
    "MAX_QUEUE",
    10000,
    "Jobs waiting at most; past it memory mode drops (counted, logged), database"
    " mode leaves them to the poller.",
    positive_int,
)
register(
    "HOOK_TIMEOUT",
    20.0,
    "Seconds per attempt before it is reported timed out.",
    positive_float,
)
register(
    "MAX_ATTEMPTS", 8, "Attempts per hook, then the delivery is dead.", positive_int
)
register(
    "RETRY_SCHEDULE",
    list(DEFAULT_RETRY_SCHEDULE),
    "Seconds before attempt 2, 3, ... (the last repeats); each jittered by +/-20%.",
    _schedule,
)
register(
    "SHUTDOWN_TIMEOUT",
    10.0,
    "Seconds the pool waits for running jobs at interpreter exit.",
    positive_float,
)
register(
    "HISTORY_SIZE",
    1000,
    "Outcomes the memory store keeps (most recent first).",
    positive_int,
)
register(
    "POLL_INTERVAL",
    5.0,
    "Database store: seconds between polls for due retries, expired leases (a"
    " crashed process) and hook enable/disable changes.",
    positive_float,
)
register(
    "LEASE_GRACE",
    60.0,
    "Database store: seconds a delivery's lease lasts beyond the hook's timeout"
    " (queue wait, slow writes); after a crash its deliveries run again once the"
    " lease expired.",
    positive_float,
)
register(
    "RETENTION_DAYS",
    7.0,
    "Database store: succeeded deliveries (and their events) older than this are"
    " pruned by the poller.",
    positive_float,
)
register(
    "ENABLED",
    True,
    "Set False to capture nothing and run no hook (for example in some tests).",
    check_bool,
)


def closest(name: str) -> str | None:
    matches = difflib.get_close_matches(
        name, [PREFIX + k for k in KEYS], n=1, cutoff=0.6
    )
    return matches[0] if matches else None


def load(config: Mapping[str, Any]) -> dict[str, Any]:
    """Check every ``POSTREG_*`` key in ``config`` and return the values, by short name."""
    for full in config:
        if full.startswith(PREFIX) and full[len(PREFIX) :] not in KEYS:
            hint = closest(full)
            extra = (
                f" Did you mean {hint!r}?"
                if hint
                else " Valid keys: " + ", ".join(PREFIX + k for k in KEYS) + "."
            )
            raise ConfigError(f"Unknown configuration key {full!r}.{extra}")
    values: dict[str, Any] = {}
    for name, key in KEYS.items():
        value = config.get(PREFIX + name, key.default)
        values[name] = key.check(name, value) if key.check else value
    return values


def table() -> str:
    """The README's configuration table, in Markdown."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for name, key in KEYS.items():
        default = "(see meaning)" if key.default is None else f"`{key.default!r}`"
        rows.append(f"| `{PREFIX}{name}` | {default} | {key.doc} |")
    return "\n".join(rows)
