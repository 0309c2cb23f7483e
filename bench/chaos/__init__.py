"""Chaos scenarios: break one part of the running stack, then count that nothing was lost.

Each scenario takes a started :class:`bench.stack.Stack` and a size, raises
``AssertionError`` when a run is lost, duplicated or stuck, and returns what it broke and
what it counted. ``tests/test_chaos.py`` runs them small; ``make chaos`` runs them long.
"""
