"""Where deliveries live: ``memory`` (recent, in-process) or ``database`` (durable).

The database store is imported only when configured.
"""

from __future__ import annotations

from .base import DeliveryRecord
from .base import Store
from .memory import MemoryStore

__all__ = ["DeliveryRecord", "MemoryStore", "Store"]
