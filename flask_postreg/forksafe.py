"""Reset per-process state in a forked child (gunicorn ``--preload``).

A lock held by a parent's thread at fork time stays held forever in the child,
and the parent's threads do not exist there: objects that own locks or threads
register here and get ``_after_fork()`` called in every child.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_OBJECTS: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    _OBJECTS.add(obj)


def _reset_in_child() -> None:
    for obj in list(_OBJECTS):
        obj._after_fork()


os.register_at_fork(after_in_child=_reset_in_child)
