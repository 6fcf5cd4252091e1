"""JSON encoding and decoding, fast when orjson is installed.

Values are stored and sent as JSON text and are never re-encoded on the hot
paths; where we must encode or decode, orjson is several times faster than the
standard library. It is a dependency, but where it cannot be installed (a
platform without a wheel) the standard library is used, with the same
compact output and the same refusals.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

_orjson: Any
try:  # pragma: no cover - which branch runs depends on the installation
    import orjson

    _orjson = orjson
except ImportError:  # pragma: no cover
    _orjson = None

__all__ = ["JSONDecodeError", "canonical", "dumps", "loads", "loads_checked"]

# orjson turns integer literals beyond 64 bits into floats, which would change
# the value. Every such literal has at least 19 digits; texts holding an
# integer literal that long (rare: big numbers) are parsed again by the
# standard library, which keeps integers exact, so validation can refuse them.
# Only a run of digits that can be a whole integer literal counts: not one
# after a decimal point or in an exponent (a long fraction such as
# 0.01234567890123456789 is a float, which orjson reads exactly as the
# standard library does), and not one followed by a fraction or an exponent.
# A run inside a string may count too: that costs time, never exactness.
# The runs are found by mapping every digit to "0" and everything else to a
# space, then searching for 19 zeros: both at C speed over the whole text (a
# regular expression tries each digit of every run again, many times slower).
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_NINETEEN = b"0" * 19
_NOT_INT_BEFORE = frozenset(b".eE+")
_NOT_INT_AFTER = frozenset(b".eE")
_EXPONENT = frozenset(b"eE")
_MINUS = ord("-")


def _has_long_integer(text: str | bytes) -> bool:
    """True when ``text`` may hold an integer literal of 19 digits or more."""
    # UTF-8 keeps ASCII bytes for ASCII characters only: digits, signs and
    # exponents read alike in the bytes.
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    shape = data.translate(_DIGITS_AS_ZEROS)
    start = shape.find(_NINETEEN)
    while start >= 0:
        end = shape.find(b" ", start)
        end = len(shape) if end < 0 else end
        before = data[start - 1] if start else 0x20
        after = data[end] if end < len(data) else 0x20
        negative_exponent = before == _MINUS and start >= 2 and data[start - 2] in _EXPONENT
        if not (after in _NOT_INT_AFTER or before in _NOT_INT_BEFORE or negative_exponent):
            return True
        start = shape.find(_NINETEEN, end)
    return False


# orjson refuses numbers beyond the range of a double (an integer of 310+
# digits, 1e400) as if the text were not JSON. It is valid JSON: the
# standard library reads it (integers exact, such floats as infinities) and
# validation refuses the value as a value, not as malformed text.
_OUT_OF_RANGE_STR = re.compile(r"[0-9]{19}|[eE][+-]?[0-9]{3}")
_OUT_OF_RANGE_BYTES = re.compile(rb"[0-9]{19}|[eE][+-]?[0-9]{3}")


class JSONDecodeError(ValueError):
    """The text is not valid JSON (or uses NaN/Infinity, which JSON lacks)."""


def _reject_constant(name: str) -> Any:
    raise JSONDecodeError(f"{name} is not valid JSON")


if _orjson is not None:

    def dumps(obj: Any) -> str:
        """Encode ``obj`` as compact JSON text (UTF-8, no ASCII escaping)."""
        text: str = _orjson.dumps(obj).decode("utf-8")
        return text

    def loads(text: str | bytes, finite: bool = False) -> Any:
        """Decode JSON text; raise :class:`JSONDecodeError` when it is invalid.

        Integers are exact, whatever their size; a number beyond the range of
        a double (``1e400``) is an infinity. Range checks are the caller's
        (see :mod:`.protocol`): such values are valid JSON, refused as values.
        With ``finite``, a float beyond that range is a JSONDecodeError
        instead (for texts no validation follows, such as a server's
        answers); integers stay exact.
        """
        try:
            value = _orjson.loads(text)
        except _orjson.JSONDecodeError as exc:
            far = _OUT_OF_RANGE_STR if isinstance(text, str) else _OUT_OF_RANGE_BYTES
            if far.search(text) is None:  # type: ignore[arg-type]
                raise JSONDecodeError(str(exc)) from None
            return _stdlib_loads(text, finite)
        if _has_long_integer(text):
            return _stdlib_loads(text)  # orjson read it: every number is finite
        return value

    def loads_checked(text: str | bytes) -> tuple[Any, bool]:
        """Decode like :func:`loads`, and say whether the values need no range check.

        The flag is True when orjson alone read the text: then every number
        is finite, every integer fits in 64 bits (signed) and no string holds
        a lone surrogate, so validation need not visit each scalar. False
        when the standard library read it (big integers, numbers beyond a
        double, or orjson missing): validation must check every value.
        """
        try:
            value = _orjson.loads(text)
        except _orjson.JSONDecodeError:
            return loads(text), False
        if _has_long_integer(text):
            return _stdlib_loads(text), False
        return value, True

    def canonical(obj: Any) -> str:
        """The canonical JSON text of ``obj``: compact, object keys sorted.

        Two values are equal as JSON exactly when their canonical texts are
        equal: ``false`` is not ``0``, ``1`` (an integer) is not ``1.0`` (a
        float), ``-0.0`` is not ``0.0``; object member order does not count.
        """
        text: str = _orjson.dumps(obj, option=_orjson.OPT_SORT_KEYS).decode("utf-8")
        return text

else:  # pragma: no cover

    def dumps(obj: Any) -> str:
        """Encode ``obj`` as compact JSON text (UTF-8, no ASCII escaping)."""
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    def loads(text: str | bytes, finite: bool = False) -> Any:
        """Decode JSON text; raise :class:`JSONDecodeError` when it is invalid."""
        return _stdlib_loads(text, finite)

    def loads_checked(text: str | bytes) -> tuple[Any, bool]:
        """Decode like :func:`loads`; False: validation must check every value."""
        return _stdlib_loads(text), False

    def canonical(obj: Any) -> str:
        """The canonical JSON text of ``obj``: compact, object keys sorted."""
        return json.dumps(
            obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, sort_keys=True
        )


def _parse_int(digits: str) -> int | float:
    try:
        return int(digits)
    except ValueError:
        # Over Python's limit on integer digits (4300): far beyond any range
        # a value may have, so its exact value never matters; an infinity of
        # its sign is refused by validation the same way.
        return -math.inf if digits.startswith("-") else math.inf


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONDecodeError(f"the number {text[:40]} is beyond the range of a double")
    return value


def _stdlib_loads(text: str | bytes, finite: bool = False) -> Any:
    try:
        if finite:  # int() refuses over 4300 digits by itself
            value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        else:
            value = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int)
    except (ValueError, RecursionError) as exc:
        raise JSONDecodeError(str(exc)) from None
    # 1e400 reads as an infinity and an integer of any size exactly: valid
    # JSON, which validation refuses as a value (see loads).
    return value
