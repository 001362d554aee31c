"""The Runner: run hooks once, now, with a sample body, like Auth0's hook Runner.

Each chosen hook runs one attempt in a fresh app context (as a worker would:
secrets filled in, async hooks awaited) on its own thread, bounded by the hook's
timeout. Nothing is written: no event, no delivery row, no outcome, no signal.
The log records the hook emitted on that thread, and what it printed (Auth0's
Runner shows ``console.log`` output), are collected for display, so a hook's
``print()`` cannot break ``flask postreg test --json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from collections.abc import Iterator
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import TextIO

from .dispatch import Attempt
from .dispatch import Delivery
from .dispatch import Hook
from .dispatch import _text
from .errors import HookTimeout
from .errors import PostRegError
from .events import Event
from .events import sample_body
from .scrub import hide_secrets
from .scrub import scrub

if TYPE_CHECKING:
    from .state import _State

#: Level the root logger is lowered to (if higher) while a hook runs, so the
#: hook's ``logger.info(...)`` lines are shown like Auth0's ``console.log``.
LOG_LEVEL = logging.INFO


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One hook's result in the Runner.

    .. versionadded:: 0.1
    """

    hook: str
    ok: bool
    duration: float
    source: str = "decorator"
    enabled: bool = True
    error_class: str | None = None
    error: str | None = None
    traceback: str | None = None
    logs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["logs"] = list(self.logs)
        return data


def parse_payload(payload: Any) -> Event:
    """An event from a Runner body: None (the sample), a dict, or JSON text."""
    if payload is None:
        payload = sample_body()
    if isinstance(payload, (str, bytes, bytearray)):
        try:
            payload = json.loads(payload)
        except ValueError as exc:  # UnicodeDecodeError too: not UTF-8
            raise PostRegError(f"the payload is not valid JSON: {exc}") from None
        except RecursionError:
            raise PostRegError(
                "the payload is not valid JSON: nested too deeply"
            ) from None
    if isinstance(payload, Event):
        return payload
    if not isinstance(payload, Mapping):
        raise PostRegError(
            'the payload must be a JSON object {"user": {...}, "context": {...}},'
            f" got {type(payload).__name__}"
        )
    try:
        return Event.from_dict(payload)
    except (TypeError, ValueError) as exc:
        raise PostRegError(f"the payload is not a Runner body: {exc}") from None


def select(state: _State, names: Iterable[str] | None) -> list[Hook]:
    """The hooks named (all of the app's, disabled ones too, when None)."""
    hooks = state.hooks(include_disabled=True)
    if names is None:
        return hooks
    names = [names] if isinstance(names, str) else list(names)  # one name
    if not names:
        return hooks
    by_name = {h.name: h for h in hooks}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        valid = ", ".join(sorted(by_name)) or "(none: register one with @postreg.hook)"
        raise PostRegError(
            f"unknown hook(s): {', '.join(unknown)}. The app's hooks are: {valid}"
        )
    return [by_name[n] for n in dict.fromkeys(names)]


class _Capture(logging.Handler):
    """What one hook's thread logged and printed, as lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.thread: int | None = None
        self.open = True  # False once its run ended: the thread registers no more
        self.lines: list[str] = []
        self.partial: dict[str, str] = {}  # a stream's line not ended yet
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # Its thread while registered: a later thread may reuse the ident.
        if record.thread is not None and _captures.get(record.thread) is self:
            try:
                self.lines.append(self.format(record))
            except Exception:  # a bad format string must not break the Runner
                self.lines.append(f"{record.levelname} {record.name}: {record.msg!r}")

    def printed(self, stream: str, text: str) -> None:
        *lines, self.partial[stream] = (self.partial.get(stream, "") + text).split("\n")
        self.lines.extend(lines)

    def end_lines(self) -> None:
        """Keep what was printed without a final newline."""
        # A copy: a thread past its timeout may still be printing.
        self.lines.extend(rest for rest in list(self.partial.values()) if rest)
        self.partial.clear()


class _Printed:
    """Stands in for ``sys.stdout``/``sys.stderr`` while Runner runs last: what
    a running hook's own thread writes goes to that hook's capture; every other
    thread's writes go on to the stream it replaced (all threads share it)."""

    def __init__(self, stream: TextIO | None, name: str) -> None:
        self.stream = stream
        self.name = name

    def write(self, text: str) -> int:
        capture = _captures.get(threading.get_ident())
        if capture is not None:
            capture.printed(self.name, str(text))
            return len(text)
        return self.stream.write(text) if self.stream is not None else len(text)

    def flush(self) -> None:
        if self.stream is not None and threading.get_ident() not in _captures:
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno...
        return getattr(self.stream, name)


# One set of stand-ins while any run lasts (runs may overlap on several
# threads): the first run installs them, the last one puts the streams and the
# root logger's level back.
_lock = threading.Lock()
_captures: dict[int, _Capture] = {}  # a running hook's thread -> its capture
_runs = 0
_replaced: tuple[_Printed, _Printed, int] | None = None


@contextlib.contextmanager
def _capturing(capture: _Capture) -> Iterator[None]:
    global _runs, _replaced
    root = logging.getLogger()
    with _lock:
        if _runs == 0:
            out, err = _Printed(sys.stdout, "out"), _Printed(sys.stderr, "err")
            _replaced = (out, err, root.level)
            sys.stdout, sys.stderr = out, err
            if root.getEffectiveLevel() > LOG_LEVEL:
                root.setLevel(LOG_LEVEL)
        _runs += 1
        root.addHandler(capture)
    try:
        yield
    finally:
        with _lock:
            root.removeHandler(capture)
            capture.open = False
            # Only if still this run's: its thread's ident may have been freed
            # and taken by another run's hook thread.
            if capture.thread is not None and _captures.get(capture.thread) is capture:
                del _captures[capture.thread]
            _runs -= 1
            if _runs == 0 and _replaced is not None:
                out, err, level = _replaced
                _replaced = None
                # Only what is still ours: something else may have swapped them.
                if sys.stdout is out:
                    sys.stdout = out.stream
                if sys.stderr is err:
                    sys.stderr = err.stream
                root.setLevel(level)
        capture.end_lines()


def run_one(state: _State, hook: Hook, event: Event) -> RunResult:
    """One attempt of ``hook`` on its own thread, bounded by its timeout. A hook
    still running past it prints to the real streams from then on."""
    dispatcher = state.dispatcher
    delivery = Delivery(event=event, hook=hook)
    capture = _Capture()
    outcome: list[Attempt] = []
    given: list[frozenset[str]] = []  # the secrets' texts, before the hook runs

    def target() -> None:
        ident = threading.get_ident()
        with _lock:
            if capture.open:
                capture.thread = ident
                _captures[ident] = capture
        try:
            outcome.append(dispatcher.call(delivery, given=given.append))
        finally:
            with _lock:
                if _captures.get(ident) is capture:
                    del _captures[ident]

    timeout = hook.timeout or state.values["HOOK_TIMEOUT"]
    start = time.perf_counter()
    with _capturing(capture):
        thread = threading.Thread(
            target=target, name=f"postreg-runner-{hook.name}", daemon=True
        )
        thread.start()
        thread.join(timeout)
    if outcome:
        error, duration, seen = outcome[0]
    else:
        error = HookTimeout(
            f"the hook did not return within its timeout of {timeout:g}s"
        )
        # What it logged before hanging may quote the secrets it was given.
        duration, seen = time.perf_counter() - start, frozenset().union(*given)
    # Secrets only: the Runner's user is the developer's own sample, shown as is.
    secrets = dispatcher.scrub_values() | set(delivery.hook.secrets) | seen
    common: dict[str, Any] = {
        "hook": hook.name,
        "duration": duration,
        "source": hook.source,
        "enabled": hook.enabled,
        "logs": tuple(hide_secrets(line, secrets) for line in capture.lines),
    }
    if error is None:
        return RunResult(ok=True, **common)
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return RunResult(
        ok=False,
        error_class=type(error).__name__,
        error=scrub(_text(error), secrets),
        traceback=scrub(tb, secrets, limit=8000),
        **common,
    )


def run_test(
    state: _State, payload: Any = None, hooks: Iterable[str] | None = None
) -> list[RunResult]:
    """Run the chosen hooks once each, in order; see the module docstring."""
    event = parse_payload(payload)
    chosen = select(state, hooks)
    return [run_one(state, hook, event) for hook in chosen]
