"""Per-app state: the store and backend chosen for an app, capture and hand-over.

One :class:`_State` lives in ``app.extensions["postreg"]`` for each app that
:meth:`PostReg.init_app` registered; the listeners and the tooling reach it there.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask import current_app
from sqlalchemy.orm.attributes import instance_state

from . import forksafe
from . import recording
from . import worker  # noqa: F401  (declares POSTREG_RUN_IN_WEB)
from .backends import Backend
from .backends import create as create_backend
from .config import ConfigError
from .dispatch import Delivery
from .dispatch import Dispatcher
from .dispatch import Hook
from .dispatch import RetryPolicy
from .dispatch import hook_name
from .errors import PostRegError
from .events import Connection
from .events import Event
from .events import User
from .events import new_event_id
from .poller import Poller
from .signals import post_user_registration
from .signals import receiver_changes
from .snapshot import FieldMap
from .snapshot import build_context
from .snapshot import build_user
from .store import MemoryStore
from .store import Store
from .store.database import DatabaseStore
from .store.tables import tables_for

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy.orm import Session

    from .extension import PostReg


logger = logging.getLogger("flask_postreg")

#: Databases the durable store runs on (it needs UPDATE ... RETURNING).
DURABLE_BACKENDS = ("postgresql", "sqlite")

#: Seconds the database store gathers outcomes before writing them together.
OUTCOME_BATCH_DELAY = 0.05


def choose_store(url: sa.URL, asked: str | None) -> str:
    """``asked``, or ``database`` unless the database is in-memory SQLite (nothing
    to keep) or one the durable store cannot run on (then ``memory``, warned)."""
    backend = url.get_backend_name()
    supported = backend in DURABLE_BACKENDS
    if asked == "database" and not supported:
        raise ConfigError(
            f"POSTREG_STORE='database' supports {' and '.join(DURABLE_BACKENDS)};"
            f" this app's database is {backend}. Use POSTREG_STORE='memory'."
        )
    if asked is not None:
        return asked
    if not supported:
        logger.warning(
            "flask-postreg: the database store supports %s, not %s; using the memory"
            " store (not durable). Set POSTREG_STORE='memory' to silence this.",
            " and ".join(DURABLE_BACKENDS),
            backend,
        )
        return "memory"
    in_memory = backend == "sqlite" and (
        url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
    )
    return "memory" if in_memory else "database"


class _State:
    """Everything one app needs; lives in ``app.extensions["postreg"]``."""

    def __init__(
        self,
        ext: PostReg,
        app: Flask,
        db: SQLAlchemy,
        user_model: type,
        values: dict[str, Any],
    ) -> None:
        self.ext = ext
        self.app = app
        self.db = db
        self.user_model = user_model
        self.values = values
        self.enabled: bool = values["ENABLED"]
        self.tenant: str = values["TENANT"] or app.name
        table = (
            getattr(user_model, "__tablename__", None) or user_model.__name__.lower()
        )
        conn = dict(values["CONNECTION"] or {})
        self.connection = Connection(
            id=str(conn.get("id") or f"con_{table}"),
            name=str(conn.get("name") or "Username-Password-Authentication"),
            tenant=str(conn.get("tenant") or self.tenant),
        )
        self._field_maps: dict[type, FieldMap] = {}
        self._field_lock = threading.Lock()
        self.field_map(user_model)  # fail early on a bad POSTREG_USER_FIELDS
        self.mapper: Any = sa.inspect(user_model)
        self.handler_hooks: dict[str, Hook] = {}
        self.dropped = 0
        self.overflow: list[str] = []
        self._overflow_lock = threading.Lock()
        self._settings: dict[str, bool] = {}
        self._settings_version = 0
        self._settings_at = 0.0
        self._settings_lock = threading.Lock()
        self._hooks_cache: tuple[Any, list[Hook], list[Hook]] | None = None
        #: False: this process writes outbox rows but leaves them to a worker.
        self.run_here: bool = values["RUN_IN_WEB"]
        #: Outcomes lost (not written) that a join() has reported already.
        self.lost_reported = 0
        self._settings_failing = False  # the last settings read failed (logged)
        #: Open ``record_events()`` blocks (see :mod:`flask_postreg.recording`).
        self.recorders: list[recording.Recorder] = []
        self.bind_key: str | None = user_model.metadata.info.get("bind_key")  # type: ignore[attr-defined]
        self.store_name = self._choose_store(values["STORE"])
        self.store: Store
        self.poller: Poller | None = None
        if self.store_name == "database":
            tables = tables_for(user_model.metadata)  # type: ignore[attr-defined]
            self.store = DatabaseStore(
                app,
                db,
                tables,
                bind_key=self.bind_key,
                history_size=values["HISTORY_SIZE"],
                # Inline runs write at once; the pool batches its outcomes.
                batch_delay=0.0 if values["BACKEND"] == "sync" else OUTCOME_BATCH_DELAY,
                lease_grace=values["LEASE_GRACE"],
            )
            self.poller = Poller(self, self.store)
        else:
            self.store = MemoryStore(values["HISTORY_SIZE"])
        self.dispatcher = Dispatcher(
            app,
            policy=RetryPolicy(values["RETRY_SCHEDULE"]),
            secrets=values["SECRETS"],
            store=self.store,
        )
        self.backend: Backend = create_backend(
            values["BACKEND"],
            self.dispatcher,
            values,
            background=None if self.poller is None else self.poller.run,
        )
        self._started_pid = 0
        forksafe.register(self)

    def _after_fork(self) -> None:
        self._field_lock = threading.Lock()
        self._settings_lock = threading.Lock()
        self._overflow_lock = threading.Lock()
        self.overflow = []

    def _choose_store(self, asked: str | None) -> str:
        """The configured store, or the default: ``database`` where it can work."""
        try:
            with self.app.app_context():
                url = self.db.engines[self.bind_key].url
        except (KeyError, RuntimeError) as exc:
            bind = (
                "the default bind"
                if self.bind_key is None
                else f"bind {self.bind_key!r}"
            )
            raise PostRegError(
                f"PostReg found no database engine for {bind}: call db.init_app(app)"
                " before postreg.init_app(app), and check SQLALCHEMY_DATABASE_URI /"
                " SQLALCHEMY_BINDS."
            ) from exc
        return choose_store(url, asked)

    @property
    def durable(self) -> bool:
        return self.store.durable

    def start(self) -> None:
        """Start the pool (and poller) in this process if not yet running."""
        if not self.enabled:  # POSTREG_ENABLED = False: not even pending rows
            return
        if not self.run_here:  # POSTREG_RUN_IN_WEB = False: a worker runs them
            return
        if self._started_pid != os.getpid():
            self._started_pid = os.getpid()
            self.backend.start()

    def tables_ready(self) -> bool:
        """Database mode: are the outbox tables there (checked once per engine)?"""
        return isinstance(self.store, DatabaseStore) and self.store.tables_ready()

    def take_overflow(self) -> list[str]:
        """Rows the queue refused since the last poll (database mode)."""
        with self._overflow_lock:
            taken, self.overflow = self.overflow, []
        return taken

    @property
    def settings(self) -> dict[str, bool]:
        """Run-time enable/disable switches by hook name (``flask postreg
        enable/disable``), as last read from the store."""
        return self._settings

    @settings.setter
    def settings(self, value: dict[str, bool]) -> None:
        # A version, not id(): a new dict often takes a freed one's address.
        self._settings = value
        self._settings_version += 1

    def refresh_settings(
        self, *, force: bool = True, connection: sa.Connection | None = None
    ) -> None:
        """Reload run-time enable/disable switches from the store (on
        ``connection``, in its transaction, when given)."""
        now = time.monotonic()
        if not force and now - self._settings_at < self.values["POLL_INTERVAL"]:
            return
        self._settings_at = now
        try:
            if connection is None and self.store.durable and not self.tables_ready():
                return
            # One refresh at a time: the poller's read, older than a switch just
            # made, must not land after the read that saw the switch.
            with self._settings_lock:
                self.settings = self.store.hook_settings(connection)
            self._settings_failing = False
        except Exception as exc:
            if not self._settings_failing:  # once per outage, not every poll
                self._settings_failing = True
                logger.error(
                    "flask-postreg could not read hook settings (%s); the last"
                    " ones read stay in force",
                    type(exc).__name__,
                )

    def read_switches(self, connection: sa.Connection | None = None) -> None:
        """Before deliveries are made: the run-time switches, read here when no
        poller of this process keeps them fresh (``POSTREG_RUN_IN_WEB = False``,
        the sync backend, the memory store) or before its first round, so that
        ``flask postreg enable/disable`` reaches every process within
        ``POSTREG_POLL_INTERVAL``. One read per interval at most.

        With the database store only on ``connection``, the registration's own:
        a second connection inside its transaction could wait for a pool that
        has none to spare, or (a static pool) be the same one and roll it back.
        """
        polled = self.poller is not None and self.values["BACKEND"] != "sync"
        if self._settings_at and self.run_here and polled:
            return  # the poller reads them every round
        if connection is None and self.store.durable:
            return
        self.refresh_settings(force=False, connection=connection)

    # -- capture -----------------------------------------------------------

    def field_map(self, model: type) -> FieldMap:
        fields = self._field_maps.get(model)
        if fields is None:
            with self._field_lock:
                fields = FieldMap(model, self.values["USER_FIELDS"])
                self._field_maps[model] = fields
        return fields

    def snapshot(self, instance: Any) -> Event:
        """A frozen event for ``instance`` and the current request (no SQL)."""
        return self.event_for(self.snapshot_user(instance))

    def snapshot_user(self, instance: Any) -> User:
        """``instance``'s allow-listed fields, frozen (no SQL)."""
        return build_user(self.field_map(type(instance)), instance, self.tenant)

    def event_for(self, user: User) -> Event:
        """A new event for ``user``, with the current request's context."""
        event_id = new_event_id()
        context = build_context(
            event_id=event_id,
            connection=self.connection,
            tenant=self.tenant,
            default_language=self.values["DEFAULT_LANGUAGE"],
        )
        return Event(id=event_id, user=user, context=context)

    def capture(
        self, instances: list[Any], session: Session
    ) -> tuple[list[Delivery], dict[Any, str]]:
        """Called in ``after_flush``: snapshot, and in database mode write the outbox
        rows on the flush's own connection (same transaction). Returns the
        deliveries, and the event id of each instance captured."""
        events = []
        captured = {}
        for instance in instances:
            try:
                event = self.snapshot(instance)
            except Exception:
                logger.exception(
                    "flask-postreg could not capture a new %s; its hooks will not run",
                    type(instance).__name__,
                )
                continue
            events.append(event)
            captured[instance_state(instance)] = event.id
        if not events:
            return [], {}
        return self._deliveries_for(events, session), captured

    def forget(self, event_ids: set[str], session: Session) -> None:
        """Users captured earlier in this transaction and deleted in it before the
        commit: their outbox rows go too (on the flush's connection)."""
        connection = self._outbox_connection(session)
        if connection is not None:
            assert isinstance(self.store, DatabaseStore)
            self.store.forget(connection, event_ids)

    def revise(self, events: list[Event], session: Session) -> None:
        """Events captured earlier in this transaction whose user a later flush
        updated: in database mode their rows get the new payload (on the
        flush's connection, in its transaction)."""
        connection = self._outbox_connection(session)
        if connection is not None:
            assert isinstance(self.store, DatabaseStore)
            self.store.revise(connection, events)

    def _deliveries_for(self, events: list[Event], session: Session) -> list[Delivery]:
        marks, run = recording.marks(self, events)
        if not run:
            return marks
        return marks + self.deliveries(events, self._outbox_connection(session))

    def user_connection(self, session: Session) -> sa.Connection:
        """``session``'s connection for the user model (its transaction)."""
        return session.connection(bind_arguments={"mapper": self.mapper})

    def _outbox_connection(self, session: Session) -> sa.Connection | None:
        """The flush's connection, when the database store has its tables there."""
        if isinstance(self.store, DatabaseStore):
            connection = self.user_connection(session)
            if self.store.tables_present(connection):
                return connection
        return None

    def deliveries(
        self, events: list[Event], connection: sa.Connection | None
    ) -> list[Delivery]:
        """One delivery per event and enabled hook: written to the outbox on
        ``connection`` (in its transaction) when given, else kept in memory."""
        self.read_switches(connection)
        hooks = self.hooks()
        if not hooks:  # nothing to deliver: no row (it would hold personal data)
            return []
        if connection is not None:
            assert isinstance(self.store, DatabaseStore)
            return self.store.write(connection, events, hooks, leased=self.run_here)
        return [Delivery(event=e, hook=h) for e in events for h in hooks]

    # -- dispatch ----------------------------------------------------------

    def hooks(self, *, include_disabled: bool = False) -> list[Hook]:
        """Every hook for this app: decorated, built-in handlers, then receivers.

        Cached: rebuilt only when a hook, a receiver or a run-time switch changed,
        since this runs on every registration.
        """
        key = (
            self.ext._version,
            tuple(self.handler_hooks),
            self._settings_version,
            tuple(post_user_registration.receivers),  # a weak one collected
            receiver_changes(),  # connected or disconnected for some app
        )
        cached = self._hooks_cache
        if cached is None or cached[0] != key:
            cached = (key, *self._build_hooks())
            self._hooks_cache = cached
        return list(cached[1] if include_disabled else cached[2])

    def _build_hooks(self) -> tuple[list[Hook], list[Hook]]:
        values = self.values
        found: dict[str, Hook] = {}
        for hook in (*self.ext._hooks.values(), *self.handler_hooks.values()):
            found.setdefault(hook.name, hook)
        seen: collections.Counter[str] = collections.Counter()
        for receiver in _in_connection_order(
            post_user_registration.receivers_for(self.app)
        ):
            name = "signal:" + hook_name(receiver)
            # Receivers made by one factory share a qualname: number them in
            # connection order, the same in every process that connects them
            # alike (a ``hook_name`` attribute gives a name that needs no order).
            seen[name] += 1
            if seen[name] > 1:
                name = f"{name}#{seen[name]}"
            found.setdefault(
                name, Hook(name, _receiver_hook(receiver), source="receiver")
            )
        settled = []
        for hook in found.values():
            enabled = self.settings.get(hook.name, hook.enabled)
            if enabled != hook.enabled:
                hook = dataclasses.replace(hook, enabled=enabled)
            settled.append(hook.settle(values["MAX_ATTEMPTS"], values["HOOK_TIMEOUT"]))
        return settled, [h for h in settled if h.enabled]

    def committed(self, deliveries: list[Delivery]) -> None:
        """The root transaction committed: start every delivery now."""
        for delivery in recording.take(self, deliveries):
            if self.run_here or delivery.row_id is None:
                self.submit(delivery)

    def submit(self, delivery: Delivery) -> None:
        try:
            accepted = self.backend.submit(delivery)
        except Exception:
            logger.exception(
                "flask-postreg could not queue hook %s", delivery.hook.name
            )
            accepted = False
        if not accepted and delivery.row_id is not None:
            with self._overflow_lock:  # the poller releases its lease next round
                self.overflow.append(delivery.row_id)
            return
        if not accepted:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "flask-postreg dropped hook %s for event %s: the queue is full"
                    " (POSTREG_MAX_QUEUE=%d) or the pool is shut down; %d dropped so"
                    " far. Use the database store to keep every delivery.",
                    delivery.hook.name,
                    delivery.event.id,
                    self.values["MAX_QUEUE"],
                    self.dropped,
                )


def _in_connection_order(receivers: Iterable[Any]) -> list[Any]:
    """``receivers`` in the order they were connected: blinker gives them from
    a set (by memory address, different in every process), its ``receivers``
    mapping keeps the connection order."""
    connected = []
    for value in list(post_user_registration.receivers.values()):
        target = value() if isinstance(value, weakref.ref) else value
        if target is not None:
            connected.append(target)

    def position(receiver: Any) -> int:
        for i, target in enumerate(connected):
            if _same(target, receiver):
                return i
        return len(connected)

    return sorted(receivers, key=position)


def _same(a: Any, b: Any) -> bool:
    """One receiver? By identity: a receiver's own ``__eq__`` must not run (it
    may raise, inside the registration's flush). A weakly held bound method is
    a new object each time it is resolved: its function and instance decide."""
    if inspect.ismethod(a) and inspect.ismethod(b):
        return a.__func__ is b.__func__ and a.__self__ is b.__self__
    return a is b


def _receiver_hook(receiver: Callable[..., Any]) -> Callable[[User, Any], Any]:
    def call_receiver(user: User, context: Any) -> Any:
        return receiver(current_app._get_current_object(), user=user, context=context)  # type: ignore[attr-defined]

    return call_receiver
