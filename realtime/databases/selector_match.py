"""
Matching with a Mango selector: a normalised selector (the tuples that
:func:`realtime.databases.selector.parse` builds) compiled once into a function of one
document -> bool, so that each live change costs one call.  No I/O.

- A condition on a field that is missing fails, except ``{"$exists": false}``; a path
  through a value that is not an object (or an array, for an index) fails, even with
  ``$exists: false`` (CouchDB's ``bad_path``).  A path part that is a decimal integer
  indexes an array.
- Values compare with :func:`realtime.databases.collation.collate`; the ``_id`` field
  with Erlang's term order (:func:`~realtime.databases.collation.collate_raw`).
- ``$regex`` matches run with a time limit (:data:`REGEX_TIMEOUT`): a pattern that
  backtracks catastrophically cannot stall the server; a match that runs out of time
  counts as no match.  The limit is for all the ``$regex`` of a selector together, per
  document (:func:`with_regex_budget`): a selector of hundreds of them costs no more.
"""

from __future__ import annotations

import re
import time

from realtime.databases.collation import collate, collate_raw, is_integer, type_name

__all__ = ["REGEX_TIMEOUT", "compile_selector", "match_all", "with_regex_budget"]

#: Seconds the ``$regex`` of one selector may take on one document; past it, a ``$regex``
#: counts as no match.
REGEX_TIMEOUT = 0.01

#: when the current document's regex time runs out (set by :func:`with_regex_budget`;
#: one match at a time: the reactor's thread)
_regex_deadline = [float("inf")]

_INDEX = re.compile(r"[+-]?[0-9]+\Z")

_NOT_FOUND = object()
_BAD_PATH = object()


def _get_field(value, path):
    for name in path:
        if isinstance(value, dict):
            if name not in value:
                return _NOT_FOUND
            value = value[name]
        elif isinstance(value, list):
            if not _INDEX.match(name):
                return _BAD_PATH
            index = int(name)
            if not 0 <= index < len(value):
                return _BAD_PATH
            value = value[index]
        else:
            return _BAD_PATH
    return value


def compile_selector(node, cmp=collate):
    """A normalised node as a function of one value -> bool."""
    tag = node[0]
    if tag == "field":
        path, cond = node[1], node[2]
        sub = compile_selector(cond, collate_raw if path == ("_id",) else collate)
        exists_false = cond == ("$exists", False)
        if not path:
            return sub

        def field(value):
            found = _get_field(value, path)
            if found is _NOT_FOUND:
                return exists_false
            if found is _BAD_PATH:
                return False
            return sub(found)
        return field
    if tag == "$and":
        parts = [compile_selector(a, cmp) for a in node[1]]
        return lambda v: all(p(v) for p in parts)
    if tag == "$or":
        parts = [compile_selector(a, cmp) for a in node[1]]
        if not parts:
            return lambda v: True
        return lambda v: any(p(v) for p in parts)
    if tag == "$nor":
        parts = [compile_selector(a, cmp) for a in node[1]]
        return lambda v: not any(p(v) for p in parts)
    if tag == "$not":
        part = compile_selector(node[1], cmp)
        return lambda v: not part(v)
    arg = node[1]
    if tag == "$eq":
        return lambda v: cmp(v, arg) == 0
    if tag == "$ne":
        return lambda v: cmp(v, arg) != 0
    if tag == "$gt":
        return lambda v: cmp(v, arg) > 0
    if tag == "$gte":
        return lambda v: cmp(v, arg) >= 0
    if tag == "$lt":
        return lambda v: cmp(v, arg) < 0
    if tag == "$lte":
        return lambda v: cmp(v, arg) <= 0
    if tag == "$in":
        def in_(v):
            values = v if isinstance(v, list) else (v,)
            return any(cmp(x, a) == 0 for a in arg for x in values)
        return in_
    if tag == "$nin":
        def nin(v):
            values = v if isinstance(v, list) else (v,)
            return not any(cmp(x, a) == 0 for a in arg for x in values)
        return nin
    if tag == "$all":
        def all_(v):
            if not isinstance(v, list) or not arg:
                return False
            if len(arg) == 1 and isinstance(arg[0], list) and collate(arg[0], v) == 0:
                return True
            return all(any(collate(a, x) == 0 for x in v) for a in arg)
        return all_
    if tag == "$exists":
        return lambda v: arg
    if tag == "$type":
        return lambda v: type_name(v) == arg
    if tag == "$size":
        return lambda v: isinstance(v, list) and len(v) == arg
    if tag == "$mod":
        divisor, remainder = arg

        def mod(v):
            if not is_integer(v):
                return False
            r = abs(v) % abs(divisor)
            return (-r if v < 0 else r) == remainder
        return mod
    if tag == "$regex":
        def regex_match(v):
            if not isinstance(v, str):
                return False
            left = min(REGEX_TIMEOUT, _regex_deadline[0] - time.monotonic())
            if left <= 0:
                return False
            try:
                return arg.search(v, timeout=left) is not None
            except TimeoutError:
                return False
        return regex_match
    if tag == "$beginsWith":
        return lambda v: isinstance(v, str) and v.startswith(arg)
    if tag == "$elemMatch":
        part = compile_selector(arg)
        return lambda v: isinstance(v, list) and any(part(x) for x in v)
    if tag == "$allMatch":
        part = compile_selector(arg)
        return lambda v: isinstance(v, list) and bool(v) and all(part(x) for x in v)
    if tag == "$keyMapMatch":
        part = compile_selector(arg)
        return lambda v: isinstance(v, dict) and any(part(k) for k in v)
    raise AssertionError(f"unnormalised selector node {tag}")  # pragma: no cover



def has_regex(node) -> bool:
    """Whether a normalised node holds a ``$regex``."""
    if isinstance(node, tuple):
        return node[:1] == ("$regex",) or any(map(has_regex, node))
    if isinstance(node, list):
        return any(map(has_regex, node))
    return False


def with_regex_budget(match):
    """``match`` with :data:`REGEX_TIMEOUT` for all its ``$regex`` per document."""
    def budgeted(doc) -> bool:
        _regex_deadline[0] = time.monotonic() + REGEX_TIMEOUT
        try:
            return match(doc)
        finally:
            _regex_deadline[0] = float("inf")
    return budgeted


def match_all(doc) -> bool:
    """The match function of the empty selector."""
    return True
