"""Signals sent by flask-postreg, in a private blinker namespace.

Receivers should accept ``**extra``; the sender is always the real Flask app.
"""

from __future__ import annotations

from typing import Any

from blinker import Namespace

_signals = Namespace()

#: Sent after a new user's row is committed, once per registration.
#: Receivers connected for an app run **in the worker pool**, each as its own hook
#: with retries, never in the request: ``receiver(app, user=User, context=Context)``.
#: Connect with ``post_user_registration.connect_via(app)``.
#:
#: .. versionadded:: 0.1
post_user_registration = _signals.signal("post-user-registration")

# Counts connects and disconnects of ``post_user_registration`` for any sender:
# an app's cached hook list keys on it (connecting a known receiver for one more
# app, or disconnecting it from one, leaves ``receivers`` as it was).
_receiver_changes = 0


def _receivers_changed(_signal: Any, **_kwargs: Any) -> None:
    # Never raises: blinker would undo the app's connect() and raise it there.
    global _receiver_changes
    _receiver_changes += 1


def receiver_changes() -> int:
    """How many times ``post_user_registration``'s receivers changed."""
    return _receiver_changes


post_user_registration.receiver_connected.connect(
    _receivers_changed, sender=post_user_registration, weak=False
)
post_user_registration.receiver_disconnected.connect(
    _receivers_changed, sender=post_user_registration, weak=False
)

#: Sent in the worker after a hook's attempt succeeded, with ``event`` (Event),
#: ``hook`` (its name), ``attempt`` (1-based) and ``duration`` (seconds).
#:
#: .. versionadded:: 0.1
hook_succeeded = _signals.signal("hook-succeeded")

#: Sent in the worker after a hook's attempt failed or timed out, with ``event``,
#: ``hook`` (name), ``attempt``, ``error`` (the exception) and ``final`` (True when
#: no attempt remains: the delivery is dead).
#:
#: .. versionadded:: 0.1
hook_failed = _signals.signal("hook-failed")
