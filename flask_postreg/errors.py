"""Exceptions hooks raise to steer retries, and the errors the extension raises."""

from __future__ import annotations

import math

from .config import ConfigError

__all__ = [
    "ConfigError",
    "HookTimeout",
    "LeaseExpired",
    "PermanentError",
    "PostRegError",
    "RetryLater",
]


class PostRegError(RuntimeError):
    """The extension is used in a way that cannot work; the message says the fix."""


class PermanentError(Exception):
    """Raise from a hook when retrying cannot help (a 404, a rejected address).

    The delivery becomes dead at once instead of using its remaining attempts.
    """


class RetryLater(Exception):
    """Raise from a hook to be retried, after ``retry_after`` seconds if given.

    The delay honours the server (``Retry-After``) but never exceeds the longest
    step of ``POSTREG_RETRY_SCHEDULE``.
    """

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def delay(self) -> float | None:
        """``retry_after`` as seconds, or None when it is not a finite number (a
        hook passing a raw ``Retry-After`` date, or ``nan``): the schedule then
        decides."""
        try:
            seconds = float(self.retry_after)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
        return max(seconds, 0.0) if math.isfinite(seconds) else None


class HookTimeout(Exception):
    """An attempt ran past its timeout; the watchdog reported it failed."""


class LeaseExpired(Exception):
    """A delivery's lease kept expiring without an outcome (its process died
    during each attempt, or could not record the outcome): recorded as the error
    of a delivery made dead so that it cannot run forever."""
