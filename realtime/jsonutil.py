"""
JSON in one place, so that the codec can be swapped for a faster one without touching callers.

``dumps`` returns compact UTF-8 bytes with non-ASCII left as is (the bytes a browser's
``JSON.stringify`` would send); ``loads`` accepts bytes or str.
"""

import json

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
_decoder = json.JSONDecoder()


def dumps(obj) -> bytes:
    return _encoder.encode(obj).encode("utf-8")


def dumps_text(obj) -> str:
    return _encoder.encode(obj)


def loads(data):
    """
    Parse JSON text.  Raises ``ValueError`` (also for bytes that are not UTF-8, for ``NaN``
    and for duplicate-free but otherwise invalid input).
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data).decode("utf-8")
    return json.loads(data, parse_constant=_reject_constant)


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")
