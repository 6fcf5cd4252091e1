"""Benchmarks: idsync beside Kinto and the SQLite/HTTP ceiling, in one run.

Run ``python -m tests.bench --quick`` (under a minute) or ``python -m tests.bench``
(a few minutes); see the README. Figures are printed, never asserted.
"""
