"""Where outcomes live: ``memory`` (recent, in-process) or ``database`` (durable)."""

from __future__ import annotations

from .memory import MemoryStore
from .memory import Store

__all__ = ["MemoryStore", "Store"]
