"""Benchmarks of DESIGN section 6; run them with ``python -m bench``."""
