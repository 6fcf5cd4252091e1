"""idsync client: offline-first sync for Python desktop apps."""

__version__ = "0.1.0"
