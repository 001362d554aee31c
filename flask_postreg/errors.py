"""Exceptions hooks raise to steer retries, and the errors the extension raises."""

from __future__ import annotations

from .config import ConfigError

__all__ = ["ConfigError", "HookTimeout", "PermanentError", "PostRegError", "RetryLater"]


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


class HookTimeout(Exception):
    """An attempt ran past its timeout; the watchdog reported it failed."""
