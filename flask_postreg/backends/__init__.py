"""Where hook attempts run: ``thread`` (default pool) or ``sync`` (inline)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

if TYPE_CHECKING:
    from ..dispatch import Delivery


class Backend(Protocol):
    name: str

    def submit(self, delivery: Delivery) -> bool: ...

    def schedule(self, delivery: Delivery, delay: float) -> bool: ...

    def queued(self) -> int: ...

    def start(self) -> bool: ...

    def capacity(self) -> int: ...

    def join(self, timeout: float | None = None) -> bool: ...

    def shutdown(self, timeout: float | None = None) -> bool: ...


def create(
    name: str,
    dispatcher: Any,
    values: dict[str, Any],
    background: Callable[[Any], None] | None = None,
) -> Backend:
    """Build the configured backend; optional ones are imported only when used."""
    if name == "sync":
        from .sync import SyncBackend

        return SyncBackend(dispatcher)
    from .thread import ThreadBackend

    return ThreadBackend(
        dispatcher,
        max_workers=values["MAX_WORKERS"],
        max_queue=values["MAX_QUEUE"],
        shutdown_timeout=values["SHUTDOWN_TIMEOUT"],
        background=background,
    )
