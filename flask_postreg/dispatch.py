"""One job per (event, hook): run an attempt, classify it, record it, plan a retry.

Backends decide *where* an attempt runs (a pool thread, inline); this module
decides *what* an attempt is, so both behave the same.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import inspect
import logging
import math
import random
import threading
import time
import traceback
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import NamedTuple

from .errors import HookTimeout
from .errors import PermanentError
from .errors import RetryLater
from .events import Context
from .events import Event
from .events import User
from .scrub import scrub
from .scrub import storable
from .signals import hook_failed
from .signals import hook_succeeded
from .snapshot import with_run_facts

if TYPE_CHECKING:
    from flask import Flask

    from .store import Store

logger = logging.getLogger("flask_postreg")

HookFunc = Callable[[User, Context], Any]

#: Delivery statuses, as stored and as the tooling shows them.
PENDING = "pending"
RUNNING = "running"
SUCCEEDED = "succeeded"
DEAD = "dead"


@dataclasses.dataclass(frozen=True)
class Hook:
    """A registered hook and its delivery settings.

    ``source`` says where it comes from: ``"decorator"`` (``@postreg.hook``),
    ``"receiver"`` (a ``post_user_registration`` receiver) or ``"handler"`` (a
    built-in handler configured from ``app.config``).
    """

    name: str
    func: HookFunc
    enabled: bool = True
    max_attempts: int | None = None
    timeout: float | None = None
    source: str = "decorator"
    secrets: tuple[str, ...] = dataclasses.field(default=(), repr=False)

    def settle(self, max_attempts: int, timeout: float) -> Hook:
        """This hook with the app's defaults filled in."""
        return dataclasses.replace(
            self,
            max_attempts=self.max_attempts or max_attempts,
            timeout=self.timeout or timeout,
        )


def hook_name(func: Any) -> str:
    """``module:qualname`` of a function, or of a callable object's class."""
    explicit = getattr(func, "hook_name", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    target = func if inspect.isfunction(func) or inspect.ismethod(func) else type(func)
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or repr(target)
    return f"{module}:{qualname}"


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One attempt to run one hook for one event (``row_id`` in database mode)."""

    event: Event
    hook: Hook
    attempt: int = 1
    row_id: str | None = None
    claim: int = 0
    lease_until: float | None = None

    def next(self) -> Delivery:
        """The next attempt: in database mode it must claim its row again."""
        return dataclasses.replace(self, attempt=self.attempt + 1, lease_until=None)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt came to; ``retry_in`` is set when another will follow."""

    event_id: str
    hook: str
    attempt: int
    status: str
    duration: float
    finished_at: _dt.datetime
    error_class: str | None = None
    error: str | None = None
    retry_in: float | None = None
    row_id: str | None = None
    claim: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["finished_at"] = self.finished_at.isoformat()
        return data


def personal_values(event: Event) -> set[str]:
    """The user's own texts (and the request's IP and agent) to scrub; the e-mail
    is left to the e-mail pattern, which labels it ``[email]``."""
    user, request = event.user, event.context.request
    found = {user.username, user.phone_number, user.name}
    if request is not None:
        found.update((request.ip, request.user_agent))
    leaves = [v for m in (user.user_metadata, user.app_metadata) for v in _leaves(m)]
    # Short metadata values are mostly vocabulary ("free", "https", "en"):
    # hiding them would garble every message that happens to contain them.
    found.update(v for v in leaves if isinstance(v, str) and len(v) >= METADATA_MIN)
    return {v for v in found if isinstance(v, str) and v}


#: Metadata strings shorter than this are not scrubbed (see personal_values).
METADATA_MIN = 6


def _leaves(value: Any) -> Iterator[Any]:
    """The scalars nested in ``value``'s dicts and lists."""
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _secret_texts(secrets: Any) -> set[str]:
    """Every text in a secrets mapping to hide: its strings and numbers, nested
    in dicts and lists too (``{"crm": {"token": ..., "pin": 4821}}``); not
    booleans ("True" is no secret, and hiding it would garble messages)."""
    return {
        str(v) for v in _leaves(secrets) if v is not None and not isinstance(v, bool)
    }


class Attempt(NamedTuple):
    """One call of a hook: its error (None when it returned), its seconds, and
    the texts of the secrets it was given, hidden from its error and logs (a
    callable ``POSTREG_SECRETS`` may give each attempt a new token)."""

    error: BaseException | None
    duration: float
    secrets: frozenset[str] = frozenset()


class RetryPolicy:
    """Delays between attempts: the schedule, jittered by +/- ``jitter``.

    ``rand`` is injectable so the jitter can be tested without waiting.
    """

    def __init__(
        self,
        schedule: Iterable[float],
        *,
        jitter: float = 0.2,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.schedule = tuple(float(s) for s in schedule)
        self.jitter = jitter
        self.rand = rand

    def delay(self, failed_attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after attempt ``failed_attempt`` before the next one."""
        cap = max(self.schedule)
        if retry_after is not None and math.isfinite(retry_after):
            return min(max(retry_after, 0.0), cap)
        base = self.schedule[min(failed_attempt, len(self.schedule)) - 1]
        return base * (1.0 - self.jitter + 2.0 * self.jitter * self.rand())


def _text(error: BaseException) -> str:
    """``str(error)``, or a placeholder when the exception's ``__str__`` raises
    (a failure must still be recorded)."""
    try:
        return str(error)
    except Exception:
        return f"(a {type(error).__name__} whose message could not be read)"


def _call(func: HookFunc, user: User, context: Context) -> None:
    result = func(user, context)
    if not inspect.isawaitable(result):
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # the usual case: a worker thread has no loop
        asyncio.run(_await(result))
        return
    # A loop already runs in this thread (the sync backend, called from async
    # code): await the hook on a loop of its own, in a helper thread.
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(_await(result))
        except BaseException as exc:
            errors.append(exc)

    helper = threading.Thread(target=run, name="postreg-async-hook")
    helper.start()
    helper.join()
    if errors:
        raise errors[0]


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Dispatcher:
    """Runs and records attempts for one app; shared by every backend."""

    def __init__(
        self,
        app: Flask,
        *,
        policy: RetryPolicy,
        secrets: Mapping[str, Any] | Callable[[], Mapping[str, Any]],
        store: Store,
    ) -> None:
        self.app = app
        self.policy = policy
        self._secrets = secrets
        self.store = store
        self._scrub_values: set[str] = set()

    def add_scrub_values(self, values: Iterable[str]) -> None:
        """Texts (webhook URLs, tokens) that must never appear in logs or rows."""
        self._scrub_values.update(v for v in values if v)

    def secrets(self) -> Mapping[str, Any]:
        """``POSTREG_SECRETS`` for one attempt (a callable is called: in the
        attempt's app context)."""
        value = self._secrets() if callable(self._secrets) else self._secrets
        return value or {}

    def scrub_values(self, delivery: Delivery | None = None) -> set[str]:
        """Every text to hide: secrets, and the delivery's own personal data (a
        hook raising ``ValueError(f"CRM rejected {user.phone_number}")`` must not
        put it in a log line or a stored error)."""
        values = set(self._scrub_values)
        if delivery is not None:
            values.update(delivery.hook.secrets)
            values.update(personal_values(delivery.event))
        # A callable's texts come with each attempt (Attempt.secrets): called
        # here, outside an app context or after a rotation, it could miss them.
        if not callable(self._secrets):
            values.update(_secret_texts(self._secrets or {}))
        return values

    def prepare(self, delivery: Delivery) -> Delivery | None:
        """Take the delivery's lease (database mode); None: someone else has it."""
        try:
            return self.store.prepare(delivery)
        except Exception as exc:
            logger.error(
                "flask-postreg could not claim hook %s for event %s (%s); the poller"
                " will run it later",
                delivery.hook.name,
                delivery.event.id,
                type(exc).__name__,
            )
            return None

    def call(
        self,
        delivery: Delivery,
        given: Callable[[frozenset[str]], None] | None = None,
    ) -> Attempt:
        """Run the hook once in a fresh app context. ``given`` learns the
        secrets' texts before the hook runs (for a caller that stops waiting)."""
        start = time.perf_counter()
        seen: frozenset[str] = frozenset()
        try:
            with self.app.app_context():
                secrets = self.secrets()
                if callable(self._secrets):
                    seen = frozenset(_secret_texts(secrets))
                    if given is not None:
                        given(seen)
                context = with_run_facts(
                    delivery.event.context, attempt=delivery.attempt, secrets=secrets
                )
                _call(delivery.hook.func, delivery.event.user, context)
        except KeyboardInterrupt as exc:
            # Ctrl-C reaches the main thread only (the sync backend): let it
            # stop the program. On a pool thread the hook raised it itself: a
            # failure like any other, not the end of the worker.
            if threading.current_thread() is threading.main_thread():
                raise
            return Attempt(exc, time.perf_counter() - start, seen)
        except BaseException as exc:  # recorded as the attempt's failure
            return Attempt(exc, time.perf_counter() - start, seen)
        return Attempt(None, time.perf_counter() - start, seen)

    def finish(
        self,
        delivery: Delivery,
        error: BaseException | None,
        duration: float,
        secrets: Iterable[str] = (),
    ) -> Outcome:
        """Classify, log, signal and record one attempt (``secrets``: the
        texts it was given, :attr:`Attempt.secrets`); never raises."""
        hook = delivery.hook
        max_attempts = hook.max_attempts or 1
        now = _dt.datetime.now(_dt.timezone.utc)
        if error is None:
            outcome = Outcome(
                event_id=delivery.event.id,
                hook=hook.name,
                attempt=delivery.attempt,
                status=SUCCEEDED,
                duration=duration,
                finished_at=now,
                row_id=delivery.row_id,
                claim=delivery.claim,
            )
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "hook %s succeeded for event %s (attempt %d, %.3fs)",
                    hook.name,
                    delivery.event.id,
                    delivery.attempt,
                    duration,
                )
        else:
            final = (
                isinstance(error, PermanentError) or delivery.attempt >= max_attempts
            )
            retry_in = None
            if not final:
                retry_after = error.delay if isinstance(error, RetryLater) else None
                retry_in = self.policy.delay(delivery.attempt, retry_after)
            hidden = self.scrub_values(delivery) | set(secrets)
            message = scrub(_text(error), hidden)
            outcome = Outcome(
                event_id=delivery.event.id,
                hook=hook.name,
                attempt=delivery.attempt,
                status=DEAD if final else PENDING,
                duration=duration,
                finished_at=now,
                error_class=storable(type(error).__name__),
                error=message,
                retry_in=retry_in,
                row_id=delivery.row_id,
                claim=delivery.claim,
            )
            self._log_failure(delivery, error, outcome, hidden)
        self._signal(delivery, error, outcome)
        try:
            self.store.record(outcome)
        except Exception:
            logger.exception(
                "flask-postreg could not record an outcome of %s", hook.name
            )
        return outcome

    def _log_failure(
        self,
        delivery: Delivery,
        error: BaseException,
        outcome: Outcome,
        secrets: set[str],
    ) -> None:
        if isinstance(error, HookTimeout):
            detail = ""
        else:
            tb = "".join(
                traceback.format_exception(type(error), error, error.__traceback__)
            )
            detail = "\n" + scrub(tb, secrets, limit=8000)
        if outcome.status == DEAD:
            level, what = logging.ERROR, "delivery is dead"
        else:
            level, what = logging.WARNING, f"retrying in {outcome.retry_in:.1f}s"
        logger.log(
            level,
            "hook %s failed for event %s (attempt %d of %d): %s: %s; %s%s",
            delivery.hook.name,
            delivery.event.id,
            delivery.attempt,
            delivery.hook.max_attempts or 1,
            outcome.error_class,
            outcome.error,
            what,
            detail,
        )

    def _signal(
        self, delivery: Delivery, error: BaseException | None, outcome: Outcome
    ) -> None:
        signal = hook_succeeded if error is None else hook_failed
        if not signal.receivers:  # the common case: skip the app context
            return
        try:
            with self.app.app_context():
                if error is None:
                    hook_succeeded.send(
                        self.app,
                        event=delivery.event,
                        hook=delivery.hook.name,
                        attempt=delivery.attempt,
                        duration=outcome.duration,
                    )
                else:
                    hook_failed.send(
                        self.app,
                        event=delivery.event,
                        hook=delivery.hook.name,
                        attempt=delivery.attempt,
                        error=error,
                        final=outcome.status == DEAD,
                    )
        except Exception:
            logger.exception("a receiver of flask-postreg's outcome signals raised")
