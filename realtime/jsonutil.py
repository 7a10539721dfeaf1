"""
JSON in one place, so that the codec can be swapped for a faster one without touching callers.

``dumps`` returns compact UTF-8 bytes with non-ASCII left as is (the bytes a browser's
``JSON.stringify`` would send); ``loads`` accepts bytes or str, and refuses (``ValueError``)
anything that could not be sent on as JSON text: bytes that are not UTF-8, ``NaN`` and
``Infinity``, numbers beyond a double's range (``1e400``), nesting too deep for the parser
(:class:`TooDeep`, a ``ValueError``), and lone UTF-16 surrogates (``"\\ud800"``: valid
JSON syntax, but no UTF-8 can carry it).
Refusing them on the way in means every message that was accepted can be encoded again.
"""

import json

_INF = float("inf")


def reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def finite_float(text: str) -> float:
    """A JSON number as a float; ValueError when beyond a double's range (``1e400``)."""
    value = float(text)
    if value == _INF or value == -_INF:
        raise ValueError(f"number out of range: {text[:40]}")
    return value


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# One decoder for every call: json.loads with an argument builds a new JSONDecoder each time.
_decoder = json.JSONDecoder(parse_constant=reject_constant, parse_float=finite_float)


def dumps(obj) -> bytes:
    return _encoder.encode(obj).encode("utf-8")


def dumps_text(obj) -> str:
    return _encoder.encode(obj)


class TooDeep(ValueError):
    """JSON nested deeper than the parser can go (about 950 levels, less on a deep stack)."""


def decode_at(text: str, start: int):
    """
    The JSON value that starts at ``text[start]`` (no whitespace before it), and the index
    where it ends; refused as :func:`loads` refuses (:class:`TooDeep` when nested too deep).
    """
    try:
        value, end = _decoder.raw_decode(text, start)
    except RecursionError:
        raise TooDeep("JSON nested too deeply") from None
    if "\\u" in text[start:end] and has_lone_surrogate(value):
        raise ValueError("a string holds a lone surrogate (not valid Unicode)")
    return value, end


def loads(data):
    """Parse JSON text (see the module docstring for what is refused with ValueError)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    if not isinstance(data, str):
        raise TypeError(f"JSON text must be str or bytes, not {type(data).__name__}")
    if data.startswith("\ufeff"):
        raise ValueError("unexpected UTF-8 BOM")
    try:
        value = _decoder.decode(data)
    except RecursionError:
        raise TooDeep("JSON nested too deeply") from None
    if "\\u" in data and has_lone_surrogate(value):
        raise ValueError("a string holds a lone surrogate (not valid Unicode)")
    return value


def has_lone_surrogate(value) -> bool:
    """Whether any string (key or value) in a parsed document cannot be written as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
