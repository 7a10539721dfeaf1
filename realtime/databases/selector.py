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
- Comparisons use CouchDB's collation across types: ``null < false < true < numbers <
  strings < arrays < objects``; numbers by value (``1 == 1.0``); arrays element by
  element, then by length; objects key by key (in document order), then by size.
  Strings are compared by Unicode code points, as pouchdb-server does, whereas CouchDB
  uses ICU collation for strings (``"a" < "B"`` there, ``"B" < "a"`` here): ranges over
  mixed-case or accented text can differ from CouchDB's ``_find``; equality does not
  (see docs/resume.rst).  ``_id`` compares raw, as in CouchDB (Erlang term order across
  types).
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
  than ``re``) with a time limit per match (:data:`REGEX_TIMEOUT`): a pattern that
  backtracks catastrophically cannot stall the server; a match that runs out of time
  counts as no match.  The pattern is compiled once, at parse time; longer than
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

Matching is against the document as the user would receive it (hidden fields removed):
callers must match the sanitised document, so a selector cannot probe a hidden field.
"""

from __future__ import annotations

import re

import regex

__all__ = ["BadSelector", "Selector", "collate", "parse", "parse_field", "type_name"]

#: Most conditions plus list elements one selector may hold.
MAX_TERMS = 1000
#: Longest ``$regex`` pattern accepted, in characters.
MAX_REGEX_LENGTH = 1000
#: Seconds one ``$regex`` match may take before it counts as no match.
REGEX_TIMEOUT = 0.01

TYPE_NAMES = ("null", "boolean", "number", "string", "array", "object")
_TYPE_OF_RANK = ("null", "boolean", "boolean", "number", "string", "array", "object")

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
_INDEX = re.compile(r"[+-]?[0-9]+\Z")
_UNESCAPED_DOT = re.compile(r"(?<!\\)\.")


class BadSelector(ValueError):
    """A selector refused; ``operator`` names the operator at fault when there is one."""

    code = "bad_selector"

    def __init__(self, message: str, operator: str | None = None):
        super().__init__(message)
        self.message = message
        self.operator = operator


# -- collation ------------------------------------------------------------------------------

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


def _collate_raw(a, b) -> int:
    ra, rb = _raw_rank(a), _raw_rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    return collate(a, b)


def type_name(value) -> str:
    """The ``$type`` name of a JSON value."""
    return _TYPE_OF_RANK[_rank(value)]


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


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
        if not _is_int(arg) or arg < 0:
            raise BadSelector("$size needs a non-negative integer", key)
        return (key, arg)
    if key == "$mod":
        if (not isinstance(arg, list) or len(arg) != 2 or not all(map(_is_int, arg))
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


# -- matching -----------------------------------------------------------------------------

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


def _compile(node, cmp=collate):
    """A normalised node as a function of one value -> bool."""
    tag = node[0]
    if tag == "field":
        path, cond = node[1], node[2]
        sub = _compile(cond, _collate_raw if path == ("_id",) else collate)
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
        parts = [_compile(a, cmp) for a in node[1]]
        return lambda v: all(p(v) for p in parts)
    if tag == "$or":
        parts = [_compile(a, cmp) for a in node[1]]
        if not parts:
            return lambda v: True
        return lambda v: any(p(v) for p in parts)
    if tag == "$nor":
        parts = [_compile(a, cmp) for a in node[1]]
        return lambda v: not any(p(v) for p in parts)
    if tag == "$not":
        part = _compile(node[1], cmp)
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
            if not _is_int(v):
                return False
            r = abs(v) % abs(divisor)
            return (-r if v < 0 else r) == remainder
        return mod
    if tag == "$regex":
        def regex_match(v):
            if not isinstance(v, str):
                return False
            try:
                return arg.search(v, timeout=REGEX_TIMEOUT) is not None
            except TimeoutError:
                return False
        return regex_match
    if tag == "$beginsWith":
        return lambda v: isinstance(v, str) and v.startswith(arg)
    if tag == "$elemMatch":
        part = _compile(arg)
        return lambda v: isinstance(v, list) and any(part(x) for x in v)
    if tag == "$allMatch":
        part = _compile(arg)
        return lambda v: isinstance(v, list) and bool(v) and all(part(x) for x in v)
    if tag == "$keyMapMatch":
        part = _compile(arg)
        return lambda v: isinstance(v, dict) and any(part(k) for k in v)
    raise AssertionError(f"unnormalised selector node {tag}")  # pragma: no cover


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
        self.matches = _compile(normalized) if normalized is not None else _match_all

    @property
    def empty(self) -> bool:
        """Whether the selector matches every document (``{}`` or none)."""
        return self.normalized is None

    def __repr__(self):
        return f"Selector({self.source!r})"


def _match_all(doc) -> bool:
    return True


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
