"""Runnable applications on kerna's public API; each module is one self-contained program.

They run in the test suite (``tests/test_examples.py``); see ``examples/README.md``.
"""
