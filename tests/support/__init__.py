"""Helpers shared by several test modules (import them; never import test_*.py)."""
