"""The :class:`PostReg` extension: configuration, the hook registry, per-app state."""

from __future__ import annotations

import copy
import logging
import time
import weakref
from collections.abc import Callable
from collections.abc import Iterable
from typing import TYPE_CHECKING
from typing import Any
from typing import TypeVar
from typing import overload

import sqlalchemy as sa
from flask import Flask
from flask import current_app
from flask import has_app_context

from . import capture
from . import cli
from . import config as _config
from . import recording
from . import runner
from .dispatch import Hook
from .dispatch import hook_name
from .errors import PostRegError
from .events import Event
from .events import User
from .handlers import configure as configure_handlers
from .snapshot import load_expired
from .state import _State
from .store import Store
from .store.database import DatabaseStore

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

logger = logging.getLogger("flask_postreg")

F = TypeVar("F", bound=Callable[..., Any])


#: The longest hook name: the width of ``postreg_deliveries.hook``.
MAX_HOOK_NAME = 255


class PostReg:
    """Run hooks after a new user is committed, like Auth0's post-registration hooks.

    ::

        postreg = PostReg(app, db=db, user_model=User)

        @postreg.hook
        def notify(user, context):
            ...

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: SQLAlchemy | None = None,
        user_model: type | None = None,
    ) -> None:
        self.db = db
        self.user_model = user_model
        self._hooks: dict[str, Hook] = {}
        self._version = 0
        self._states: weakref.WeakSet[_State] = weakref.WeakSet()
        if app is not None:
            self.init_app(app)

    def init_app(
        self,
        app: Flask,
        *,
        db: SQLAlchemy | None = None,
        user_model: type | None = None,
    ) -> None:
        """Register the extension on ``app``; config is read here, once."""
        if "postreg" in app.extensions:
            raise RuntimeError(
                "A 'PostReg' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
        db = db if db is not None else self.db
        user_model = user_model if user_model is not None else self.user_model
        if db is None:
            raise PostRegError(
                "PostReg needs the app's Flask-SQLAlchemy object: pass it as"
                " PostReg(app, db=db, user_model=User) or"
                " postreg.init_app(app, db=db, user_model=User)."
            )
        if user_model is None or not isinstance(user_model, type):
            raise PostRegError(
                "PostReg needs the user model class whose new rows are"
                " registrations: pass user_model=User to PostReg() or init_app()."
            )
        for key, spec in _config.KEYS.items():
            # A copy: a mutable default (a dict, a list) must not be shared by apps.
            app.config.setdefault(_config.PREFIX + key, copy.deepcopy(spec.default))
        values = _config.load(app.config)
        state = _State(self, app, db, user_model, values)
        configure_handlers(state)
        app.extensions["postreg"] = state
        self._states.add(state)
        capture.install()
        app.before_request(state.start)
        app.cli.add_command(cli.postreg_group, name="postreg")

    def start(self, app: Flask | None = None) -> None:
        """Start the pool and, in database mode, the poller now in this process.

        They otherwise start with the first registration or request; call this in
        a process that should pick up pending deliveries without either.
        """
        self._state(app).start()

    # -- hook registry -----------------------------------------------------

    @overload
    def hook(self, func: F) -> F: ...

    @overload
    def hook(
        self,
        func: None = None,
        *,
        name: str | None = None,
        enabled: bool = True,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]: ...

    def hook(
        self,
        func: F | None = None,
        *,
        name: str | None = None,
        enabled: bool = True,
        max_attempts: int | None = None,
        timeout: float | None = None,
    ) -> F | Callable[[F], F]:
        """Register ``func(user, context)`` to run after each registration.

        Use bare (``@postreg.hook``) or with options. ``name`` defaults to
        ``"module:qualname"``; ``max_attempts`` and ``timeout`` default to
        ``POSTREG_MAX_ATTEMPTS`` and ``POSTREG_HOOK_TIMEOUT``. Also takes a
        callable object: ``postreg.hook(SlackNotifier(...))``.
        """

        def register(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"a hook must be callable, got {fn!r}")
            if max_attempts is not None and not _config.is_count(max_attempts):
                raise ValueError(
                    f"max_attempts must be a whole number >= 1, got {max_attempts!r}"
                )
            if timeout is not None and not _config.is_seconds(timeout):
                raise ValueError(
                    f"timeout must be a number of seconds > 0, got {timeout!r}"
                )
            final_name = name or hook_name(fn)
            if not 0 < len(final_name) <= MAX_HOOK_NAME:
                raise ValueError(
                    f"a hook name must have 1 to {MAX_HOOK_NAME} characters (it is"
                    " stored in postreg_deliveries.hook); pass name='...'"
                )
            hook = Hook(
                name=final_name,
                func=fn,
                enabled=enabled,
                max_attempts=max_attempts,
                timeout=timeout,
                secrets=tuple(getattr(fn, "scrub_values", ()) or ()),
            )
            if hook.name in self._hooks:
                raise ValueError(
                    f"a hook named {hook.name!r} is already registered; pass"
                    " name='...' to tell them apart"
                )
            if any(hook.name in state.handler_hooks for state in self._states):
                raise ValueError(
                    f"{hook.name!r} is the name of a built-in handler an app's"
                    " config turns on; pass name='...' to tell them apart"
                )
            self._hooks[hook.name] = hook
            self._version += 1
            return fn

        if func is not None:
            return register(func)
        return register

    def remove_hook(self, name: str) -> None:
        """Unregister a hook by name (KeyError if there is none)."""
        del self._hooks[name]
        self._version += 1

    # -- running -----------------------------------------------------------

    def _state(self, app: Flask | None = None) -> _State:
        if app is None:
            if not has_app_context():
                raise RuntimeError(
                    "Working outside of application context: pass app=... or use"
                    " 'with app.app_context():'."
                )
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        assert app is not None
        state = app.extensions.get("postreg")
        if state is None or state.ext is not self:
            raise RuntimeError(
                "The current Flask app is not registered with this 'PostReg'"
                " instance. Did you forget to call 'init_app', or did you import a"
                " different instance?"
            )
        return state  # type: ignore[no-any-return]

    def store(self, app: Flask | None = None) -> Store:
        """The app's delivery store: the query API for tooling and tests.

        ``deliveries(status=, hook=, since=, until=, limit=)``, ``counts()``,
        ``retry(ids)``, ``retry_dead(hook=)``, ``prune(days)``,
        ``set_enabled(hook, enabled)``; see :class:`flask_postreg.store.Store`.

        .. versionadded:: 0.1
        """
        return self._state(app).store

    def hooks(self, app: Flask | None = None) -> list[Hook]:
        """The hooks that would run for ``app`` now, settled with its defaults."""
        return self._state(app).hooks(include_disabled=True)

    def emit(self, user: Any, *, app: Flask | None = None) -> Event:
        """Run the hooks for ``user`` (a model instance or a :class:`User`) now.

        For paths SQLAlchemy events cannot see (Core ``insert()``, ``bulk_*``):
        call it after the commit. Returns the event (its id is the idempotency key);
        with ``POSTREG_ENABLED = False`` nothing runs or is written.
        """
        state = self._state(app)
        if not isinstance(user, (User, state.user_model)):
            raise TypeError(
                f"emit() takes a {state.user_model.__name__} instance or a"
                f" flask_postreg.User, got {type(user).__name__}"
            )
        if state.enabled and isinstance(state.store, DatabaseStore):
            # One transaction of its own for the outbox rows. An instance whose
            # attributes the commit expired is read on it too, not through its
            # session: that may hold the pool's only connection, or be closed.
            with state.store.begin() as conn:
                event = self._event(state, user, conn)
                marks, run = recording.marks(state, [event])
                outbox = conn if run and state.store.tables_present(conn) else None
                deliveries = state.deliveries([event], outbox) if run else []
        else:
            event = self._event(state, user, None)
            if not state.enabled:  # POSTREG_ENABLED = False: nothing runs
                return event
            marks, run = recording.marks(state, [event])
            deliveries = state.deliveries([event], None) if run else []
        state.committed(marks + deliveries)
        return event

    @staticmethod
    def _event(state: _State, user: Any, connection: sa.Connection | None) -> Event:
        """The event for emit()'s ``user``: a :class:`User`, or a model instance
        (expired attributes loaded first, on ``connection`` when given)."""
        if isinstance(user, User):
            return state.event_for(user)
        with load_expired(user, connection) as loaded:
            return state.snapshot(loaded)

    def run_test(
        self,
        payload: Any = None,
        hooks: Iterable[str] | None = None,
        *,
        app: Flask | None = None,
    ) -> list[runner.RunResult]:
        """The Runner: run hooks once, now, with a sample body; record nothing.

        ``payload`` is a ``{"user": ..., "context": ...}`` dict or JSON text
        (default: Auth0's sample body shipped in the package); ``hooks`` are
        names (default: every hook of the app). Returns one result per hook.
        See :func:`flask_postreg.runner.run_test`.

        .. versionadded:: 0.1
        """
        return runner.run_test(self._state(app), payload, hooks)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for every job dispatched so far in this process. False on
        timeout, or if an outcome could not be written since the last join()
        (the database store runs it again once its lease ends)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = True
        for state in list(self._states):
            remaining = (
                None if deadline is None else max(deadline - time.monotonic(), 0)
            )
            if not state.backend.join(remaining):
                return False
            state.store.flush()  # outcomes are durable when join() says done
            lost = state.store.lost_outcomes
            if lost > state.lost_reported:
                state.lost_reported = lost
                done = False
        return done

    def shutdown(
        self, timeout: float | None = None, *, app: Flask | None = None
    ) -> bool:
        """Stop the pools of this extension (only ``app``'s when given), letting
        jobs finish within ``timeout``. Threads hold their app: an app factory
        per test should stop its app's pool in the fixture's teardown."""
        if app is not None:  # current_app too; an app without us is an error
            return self._state(app).backend.shutdown(timeout)
        ok = True
        for state in list(self._states):
            ok = state.backend.shutdown(timeout) and ok
        return ok

    def states(self) -> Iterable[_State]:
        return list(self._states)
