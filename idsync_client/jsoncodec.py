"""JSON encoding and decoding, fast when orjson is installed.

Values are stored and sent as JSON text and are never re-encoded on the hot
paths; where we must encode or decode, orjson is several times faster than the
standard library. It is a dependency, but where it cannot be installed (a
platform without a wheel) the standard library is used, with the same
compact output and the same refusals.
"""

from __future__ import annotations

import json
from typing import Any

_orjson: Any
try:  # pragma: no cover - which branch runs depends on the installation
    import orjson

    _orjson = orjson
except ImportError:  # pragma: no cover
    _orjson = None

__all__ = ["JSONDecodeError", "dumps", "loads"]


class JSONDecodeError(ValueError):
    """The text is not valid JSON (or uses NaN/Infinity, which JSON lacks)."""


def _reject_constant(name: str) -> Any:
    raise JSONDecodeError(f"{name} is not valid JSON")


if _orjson is not None:

    def dumps(obj: Any) -> str:
        """Encode ``obj`` as compact JSON text (UTF-8, no ASCII escaping)."""
        text: str = _orjson.dumps(obj).decode("utf-8")
        return text

    def loads(text: str | bytes) -> Any:
        """Decode JSON text; raise :class:`JSONDecodeError` when it is invalid."""
        try:
            return _orjson.loads(text)
        except _orjson.JSONDecodeError as exc:
            raise JSONDecodeError(str(exc)) from None

else:  # pragma: no cover

    def dumps(obj: Any) -> str:
        """Encode ``obj`` as compact JSON text (UTF-8, no ASCII escaping)."""
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    def loads(text: str | bytes) -> Any:
        """Decode JSON text; raise :class:`JSONDecodeError` when it is invalid."""
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise JSONDecodeError(str(exc)) from None
