"""
CouchDB's collation of JSON values, as Mango selectors compare them, and the ``$type``
name of a value.  Pure functions, no I/O.

Comparisons use CouchDB's collation across types: ``null < false < true < numbers <
strings < arrays < objects``; numbers by value (``1 == 1.0``); arrays element by
element, then by length; objects key by key (in document order), then by size.
Strings are compared by Unicode code points, as pouchdb-server does, whereas CouchDB
uses ICU collation for strings (``"a" < "B"`` there, ``"B" < "a"`` here): ranges over
mixed-case or accented text can differ from CouchDB's ``_find``; equality does not
(see docs/resume.rst).  ``_id`` compares raw, as in CouchDB (Erlang term order across
types).
"""

from __future__ import annotations

__all__ = ["TYPE_NAMES", "collate", "collate_raw", "is_integer", "type_name"]

#: The ``$type`` names, in collation order.
TYPE_NAMES = ("null", "boolean", "number", "string", "array", "object")
_TYPE_OF_RANK = ("null", "boolean", "boolean", "number", "string", "array", "object")


def is_integer(value) -> bool:
    """Whether a JSON value is an integer (``true`` is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _rank(value) -> int:
    if value is None:
        return 0
    if value is False:
        return 1
    if value is True:
        return 2
    if isinstance(value, (int, float)):
        return 3
    if isinstance(value, str):
        return 4
    if isinstance(value, list):
        return 5
    if isinstance(value, dict):
        return 6
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def collate(a, b) -> int:
    """-1, 0 or 1: ``a`` against ``b`` in CouchDB's collation (strings by code point)."""
    ra, rb = _rank(a), _rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra == 3 or ra == 4:
        return (a > b) - (a < b)
    if ra == 5:
        for x, y in zip(a, b):
            c = collate(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    if ra == 6:
        for (ka, va), (kb, vb) in zip(a.items(), b.items()):
            c = (ka > kb) - (ka < kb) or collate(va, vb)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    return 0


# Erlang's term order, which CouchDB uses for _id: number < atom (false < null < true)
# < tuple (object) < list (array) < binary (string).
def _raw_rank(value) -> tuple:
    if value is None:
        return (1, 1)
    if value is False:
        return (1, 0)
    if value is True:
        return (1, 2)
    if isinstance(value, (int, float)):
        return (0, 0)
    if isinstance(value, dict):
        return (2, 0)
    if isinstance(value, list):
        return (3, 0)
    return (4, 0)


def collate_raw(a, b) -> int:
    """-1, 0 or 1: ``a`` against ``b`` in Erlang's term order (CouchDB's, for ``_id``)."""
    ra, rb = _raw_rank(a), _raw_rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    return collate(a, b)


def type_name(value) -> str:
    """The ``$type`` name of a JSON value."""
    return _TYPE_OF_RANK[_rank(value)]
