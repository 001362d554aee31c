"""The Runner: run hooks once, now, with a sample body, like Auth0's hook Runner.

Each chosen hook runs one attempt in a fresh app context (as a worker would:
secrets filled in, async hooks awaited) on its own thread, bounded by the hook's
timeout. Nothing is written: no event, no delivery row, no outcome, no signal.
The log records the hook emitted on that thread, and what it printed (Auth0's
Runner shows ``console.log`` output), are collected for display, so a hook's
``print()`` cannot break ``flask postreg test --json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any
from typing import TextIO

from .dispatch import Delivery
from .dispatch import Hook
from .dispatch import _text
from .errors import HookTimeout
from .errors import PostRegError
from .events import Event
from .events import sample_body
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
    """Log records emitted on one thread, formatted as lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.thread: int | None = None
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if self.thread is not None and record.thread == self.thread:
            try:
                self.lines.append(self.format(record))
            except Exception:  # a bad format string must not break the Runner
                self.lines.append(f"{record.levelname} {record.name}: {record.msg!r}")


class _Printed:
    """Stands in for ``sys.stdout``/``sys.stderr`` while a hook runs: lines the
    hook's thread writes go to ``capture``; every other thread's writes go on to
    the stream it replaced (the process's stdout is shared by all threads)."""

    def __init__(self, stream: TextIO, capture: _Capture) -> None:
        self.stream = stream
        self.capture = capture
        self.partial = ""

    def write(self, text: str) -> int:
        if self.capture.thread is None or threading.get_ident() != self.capture.thread:
            return self.stream.write(text)
        *lines, self.partial = (self.partial + str(text)).split("\n")
        self.capture.lines.extend(lines)
        return len(text)

    def flush(self) -> None:
        if self.capture.thread is None or threading.get_ident() != self.capture.thread:
            self.stream.flush()

    def close_line(self) -> None:
        """Keep what was printed without a final newline."""
        if self.partial:
            self.capture.lines.append(self.partial)
            self.partial = ""

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno...
        return getattr(self.stream, name)


def run_one(state: _State, hook: Hook, event: Event) -> RunResult:
    """One attempt of ``hook`` on its own thread, bounded by its timeout."""
    dispatcher = state.dispatcher
    delivery = Delivery(event=event, hook=hook)
    capture = _Capture()
    outcome: list[tuple[BaseException | None, float]] = []

    def target() -> None:
        capture.thread = threading.get_ident()
        outcome.append(dispatcher.call(delivery))

    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    if root.getEffectiveLevel() > LOG_LEVEL:
        root.setLevel(LOG_LEVEL)
    out, err = _Printed(sys.stdout, capture), _Printed(sys.stderr, capture)
    sys.stdout, sys.stderr = out, err
    timeout = hook.timeout or state.values["HOOK_TIMEOUT"]
    start = time.perf_counter()
    try:
        thread = threading.Thread(
            target=target, name=f"postreg-runner-{hook.name}", daemon=True
        )
        thread.start()
        thread.join(timeout)
    finally:
        # Put back only what is still ours (something else may have swapped
        # them meanwhile); a hook still running past its timeout prints to
        # the real streams from now on.
        if sys.stdout is out:
            sys.stdout = out.stream
        if sys.stderr is err:
            sys.stderr = err.stream
        out.close_line()
        err.close_line()
        root.setLevel(old_level)
        root.removeHandler(capture)
    if outcome:
        error, duration = outcome[0]
    else:
        error = HookTimeout(
            f"the hook did not return within its timeout of {timeout:g}s"
        )
        duration = time.perf_counter() - start
    # Secrets only: the Runner's user is the developer's own sample, shown as is.
    secrets = dispatcher.scrub_values() | set(delivery.hook.secrets)
    common: dict[str, Any] = {
        "hook": hook.name,
        "duration": duration,
        "source": hook.source,
        "enabled": hook.enabled,
        "logs": tuple(_hide(line, secrets) for line in capture.lines),
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


def _hide(text: str, secrets: Iterable[str]) -> str:
    """Known secret values out of a log line (the line is otherwise the hook's)."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "[secret]")
    return text


def run_test(
    state: _State, payload: Any = None, hooks: Iterable[str] | None = None
) -> list[RunResult]:
    """Run the chosen hooks once each, in order; see the module docstring."""
    event = parse_payload(payload)
    chosen = select(state, hooks)
    return [run_one(state, hook, event) for hook in chosen]
