"""Test helpers, registered as a pytest plugin (``pytest11`` entry point)."""

from __future__ import annotations
