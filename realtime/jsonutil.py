"""
JSON in one place, so that the codec can be swapped for a faster one without touching callers.

``dumps`` returns compact UTF-8 bytes with non-ASCII left as is (the bytes a browser's
``JSON.stringify`` would send); ``loads`` accepts bytes or str.
"""

import json



def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# One decoder for every call: json.loads with an argument builds a new JSONDecoder each time.
_decoder = json.JSONDecoder(parse_constant=_reject_constant)


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
    if not isinstance(data, str):
        raise TypeError(f"JSON text must be str or bytes, not {type(data).__name__}")
    if data.startswith("\ufeff"):
        raise ValueError("unexpected UTF-8 BOM")
    return _decoder.decode(data)
