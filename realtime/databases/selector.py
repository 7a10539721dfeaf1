"""
CouchDB Mango selectors: validated, normalised and matched in Python, with no I/O.

Used by ``db:<db>`` subscriptions (``subscribe {topic, selector}``) to decide, for every
live change, whether a document matches, and by the resume replay.  A selector comes
from a client: :func:`parse` validates all of it before anything uses it, and refuses
what it does not support with :class:`BadSelector` (the protocol's ``bad_selector``
error), whose message names the operator or field at fault.

Semantics follow CouchDB's own matcher (``mango_selector.erl``), step for step:

- Normalisation: several keys in one object are an implicit ``$and``; a bare value is
  ``$eq``; ``{"a": {"b": 1}}`` is the field ``a.b``; field names are dotted paths
  (``\\.`` escapes a dot; an empty part is refused); a path part that is a decimal
  integer indexes an array (``"tags.0"``).  Field names are pushed down through
  ``$and``/``$or``/``$not``/``$nor``, and negations are pushed down to the terminals
  (De Morgan; ``$not`` of ``$gt`` is ``$lte``, of ``$in`` is ``$nin``, of ``$exists``
  its opposite) -- which is why ``{"$not": {"a": {"$gt": 1}}}`` does not match a
  document without ``a``, as in CouchDB.  Inside ``$elemMatch``, ``$allMatch`` and
  ``$keyMapMatch`` the negations stay plain boolean negations, as in CouchDB.
- A condition on a field that is missing fails, except ``{"$exists": false}``; a path
  through a value that is not an object (or an array, for an index) fails, even with
  ``$exists: false`` (CouchDB's ``bad_path``).
- Comparisons use CouchDB's collation across types (``null < false < true < numbers <
  strings < arrays < objects``): see :mod:`realtime.databases.collation`, where the
  one difference from CouchDB (strings by code point, not ICU) is stated.
- Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $type $and $or $nor $not $all
  $elemMatch $allMatch $keyMapMatch $size $regex $mod $beginsWith``.  Empty lists: ``$and
  []`` and ``$or []`` match, ``$nor []`` matches, ``$in []`` and ``$all []`` do not,
  ``$nin []`` does.  ``$all [[1, 2]]`` also matches the array ``[1, 2]`` itself.
  ``$mod [d, r]`` takes integers (``d`` not 0) and matches integers only, with the
  remainder's sign following the dividend (Erlang's ``rem``).  ``$type`` takes
  ``null``, ``boolean``, ``number``, ``string``, ``array`` or ``object``.
- Refused, by name: ``$text`` (needs a text index), ``$where``, the geo operators, and
  any unknown ``$`` key.

Decisions of our own:

- ``$regex`` uses the ``regex`` module (Perl-compatible syntax, closer to CouchDB's PCRE
  than ``re``) with a time limit per match
  (:data:`~realtime.databases.selector_match.REGEX_TIMEOUT`): a pattern that
  backtracks catastrophically cannot stall the server, nor can hundreds of them (the
  limit is for all the ``$regex`` of a selector on one document); a match that runs out
  of time counts as no match.  The pattern is compiled once, at parse time; longer than
  :data:`MAX_REGEX_LENGTH` characters is refused.
- Where CouchDB's matcher fails (``$nor`` inside ``$elemMatch``, which it cannot
  evaluate and so never matches), ``$nor`` is "none of"; ``$all`` compares elements with
  the collation (``1`` equals ``1.0``), like ``$in``, where CouchDB uses exact term
  equality.
- A selector may hold at most :data:`MAX_TERMS` conditions and list elements, so the
  cost of matching one document stays bounded whatever a client sends.
- No library was adopted: the Python Mango/Mongo matchers found (e.g. ``mongoquery``)
  implement MongoDB's semantics (no comparisons across types, no ``$allMatch`` /
  ``$keyMapMatch``, different ``$type`` names and missing-field rules), which is not
  what CouchDB's ``_find`` answers.

This module validates and normalises; :mod:`realtime.databases.selector_match` compiles
the result into a match function.  Matching is against the document as the user would
receive it (hidden fields removed): callers must match the sanitised document, so a
selector cannot probe a hidden field.
"""

from __future__ import annotations

import re

import regex

from realtime.databases.collation import TYPE_NAMES, is_integer
from realtime.databases.selector_match import (
    compile_selector,
    has_regex,
    match_all,
    with_regex_budget,
)

__all__ = ["BadSelector", "Selector", "parse", "parse_field"]

#: Most conditions plus list elements one selector may hold.
MAX_TERMS = 1000
#: Longest ``$regex`` pattern accepted, in characters.
MAX_REGEX_LENGTH = 1000

_COMBINATORS = ("$and", "$or", "$nor")
_COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
_SUBSELECTORS = ("$elemMatch", "$allMatch", "$keyMapMatch")
_NOT_SUPPORTED = {
    "$text": "needs a text index",
    "$where": "is not supported by CouchDB",
    "$geoWithin": "is not supported by CouchDB",
    "$geoIntersects": "is not supported by CouchDB",
    "$near": "is not supported by CouchDB",
    "$nearSphere": "is not supported by CouchDB",
}
_NEGATED = {"$lt": "$gte", "$lte": "$gt", "$gt": "$lte", "$gte": "$lt",
            "$eq": "$ne", "$ne": "$eq", "$in": "$nin", "$nin": "$in"}
_UNESCAPED_DOT = re.compile(r"(?<!\\)\.")


class BadSelector(ValueError):
    """A selector refused; ``operator`` names the operator at fault when there is one."""

    code = "bad_selector"

    def __init__(self, message: str, operator: str | None = None):
        super().__init__(message)
        self.message = message
        self.operator = operator



# -- parsing and normalisation --------------------------------------------------------------

def parse_field(name: str) -> tuple:
    """A dotted field name as its path: ``"a.b\\.c"`` is ``("a", "b.c")``."""
    if name == "":
        raise BadSelector("a field name is empty")
    if "\\" not in name:
        parts = name.split(".")
    else:
        parts = [p.replace("\\", "") for p in _UNESCAPED_DOT.split(name)]
    if "" in parts:
        raise BadSelector(f"field name {name!r} has an empty part")
    return tuple(parts)


class _Counter:
    def __init__(self):
        self.terms = 0

    def add(self, n: int = 1) -> None:
        self.terms += n
        if self.terms > MAX_TERMS:
            raise BadSelector(f"selector too large (more than {MAX_TERMS} conditions)")


def _norm_ops(node, counter):
    """Validate; make implicit ``$and`` / ``$eq`` explicit.  Nodes become tuples."""
    counter.add()
    if not isinstance(node, dict) or not node:
        return ("$eq", node)
    if len(node) > 1:
        return ("$and", [_norm_ops({k: v}, counter) for k, v in node.items()])
    ((key, arg),) = node.items()
    if not isinstance(key, str) or not key.startswith("$"):
        return ("field", parse_field(key), _norm_ops(arg, counter))
    if key in _COMBINATORS:
        if not isinstance(arg, list):
            raise BadSelector(f"{key} needs a list of selectors", key)
        return (key, [_norm_ops(a, counter) for a in arg])
    if key == "$not":
        if not isinstance(arg, dict):
            raise BadSelector("$not needs a selector (an object)", key)
        return (key, _norm_ops(arg, counter))
    if key in _SUBSELECTORS:
        if not isinstance(arg, dict):
            raise BadSelector(f"{key} needs a selector (an object)", key)
        return (key, _norm_ops(arg, counter))
    if key in _COMPARISONS:
        return (key, arg)
    if key in ("$in", "$nin", "$all"):
        if not isinstance(arg, list):
            raise BadSelector(f"{key} needs a list", key)
        counter.add(len(arg))
        return (key, arg)
    if key == "$exists":
        if not isinstance(arg, bool):
            raise BadSelector("$exists needs true or false", key)
        return (key, arg)
    if key == "$type":
        if arg not in TYPE_NAMES:
            raise BadSelector("$type needs one of " + ", ".join(TYPE_NAMES), key)
        return (key, arg)
    if key == "$size":
        if not is_integer(arg) or arg < 0:
            raise BadSelector("$size needs a non-negative integer", key)
        return (key, arg)
    if key == "$mod":
        if (not isinstance(arg, list) or len(arg) != 2 or not all(map(is_integer, arg))
                or arg[0] == 0):
            raise BadSelector("$mod needs [divisor, remainder], integers, divisor not 0",
                              key)
        return (key, (arg[0], arg[1]))
    if key == "$regex":
        if not isinstance(arg, str):
            raise BadSelector("$regex needs a string", key)
        if len(arg) > MAX_REGEX_LENGTH:
            raise BadSelector(f"$regex longer than {MAX_REGEX_LENGTH} characters", key)
        try:
            return (key, regex.compile(arg))
        except (regex.error, ValueError, OverflowError, RecursionError) as e:
            raise BadSelector(f"$regex is not a valid regular expression: {e}", key) \
                from None
    if key == "$beginsWith":
        if not isinstance(arg, str):
            raise BadSelector("$beginsWith needs a string", key)
        return (key, arg)
    if key in _NOT_SUPPORTED:
        raise BadSelector(f"{key} {_NOT_SUPPORTED[key]}", key)
    raise BadSelector(f"unknown operator {key}", key)


def _norm_fields(node, path=()):
    """Push field names down through combinators: ``("field", path, terminal)`` leaves."""
    tag = node[0]
    if tag in _COMBINATORS:
        return (tag, [_norm_fields(a, path) for a in node[1]])
    if tag == "$not":
        return (tag, _norm_fields(node[1], path))
    if tag == "field":
        return _norm_fields(node[2], path + node[1])
    if tag in _SUBSELECTORS:
        return ("field", path, (tag, _norm_fields(node[1])))
    return ("field", path, node)


def _norm_negations(node):
    tag = node[0]
    if tag == "$not":
        return _negate(node[1])
    if tag == "$nor":
        return ("$and", [_negate(a) for a in node[1]])
    if tag in ("$and", "$or"):
        return (tag, [_norm_negations(a) for a in node[1]])
    return node


def _negate(node):
    tag = node[0]
    if tag == "$not":
        return _norm_negations(node[1])
    if tag == "$nor":
        return ("$or", [_norm_negations(a) for a in node[1]])
    if tag == "$and":
        return ("$or", [_negate(a) for a in node[1]])
    if tag == "$or":
        return ("$and", [_negate(a) for a in node[1]])
    if tag == "field":
        return ("field", node[1], _negate(node[2]))
    if tag in _NEGATED:
        return (_NEGATED[tag], node[1])
    if tag == "$exists":
        return (tag, not node[1])
    return ("$not", node)


def _check_fields(node, inside: bool = False) -> None:
    """Outside a sub-selector, every condition needs a field."""
    tag = node[0]
    if tag in _COMBINATORS:
        for a in node[1]:
            _check_fields(a, inside)
    elif tag == "$not":
        _check_fields(node[1], inside)
    elif tag == "field":
        if not node[1] and not inside:
            operator = node[2][0]
            raise BadSelector(f"{operator} needs a field", operator)
        if node[2][0] in _SUBSELECTORS:
            _check_fields(node[2][1], True)



def _paths(node, out) -> None:
    tag = node[0]
    if tag in _COMBINATORS:
        for a in node[1]:
            _paths(a, out)
    elif tag == "$not":
        _paths(node[1], out)
    elif tag == "field":
        out.add(node[1])


class Selector:
    """
    A parsed selector.  ``matches(doc)`` answers for one document; ``source`` is the
    selector as the client sent it (validated: safe to pass on to CouchDB); ``paths``
    the field paths it tests at the top level (inside ``$elemMatch`` and the like, paths
    are relative to the elements, and not listed).
    """

    __slots__ = ("matches", "normalized", "paths", "source")

    def __init__(self, source, normalized):
        self.source = source
        self.normalized = normalized
        paths = set()
        if normalized is not None:
            _paths(normalized, paths)
        self.paths = frozenset(paths)
        if normalized is None:
            self.matches = match_all
        else:
            match = compile_selector(normalized)
            self.matches = with_regex_budget(match) if has_regex(normalized) else match

    @property
    def empty(self) -> bool:
        """Whether the selector matches every document (``{}`` or none)."""
        return self.normalized is None

    def __repr__(self):
        return f"Selector({self.source!r})"


def parse(selector) -> Selector:
    """
    Validate and compile a selector (``None`` or ``{}``: every document).  Raises
    :class:`BadSelector` for anything refused.
    """
    if selector is None or selector == {}:
        return Selector({} if selector is None else selector, None)
    if not isinstance(selector, dict):
        raise BadSelector("a selector must be a JSON object")
    node = _norm_negations(_norm_fields(_norm_ops(selector, _Counter())))
    _check_fields(node)
    return Selector(selector, node)
