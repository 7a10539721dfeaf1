"""
Mango selectors (realtime.databases.selector, selector_match, collation): CouchDB's
semantics, checked three ways.

- Against pouchdb-server's own ``_find`` on the same documents, for every selector where
  pouchdb-server follows CouchDB; where it does not (its matcher mishandles ``null``,
  missing fields under ``$ne``/``$nin``/``$not``, ``$or: []``, floats under ``$mod`` and
  lacks ``$keyMapMatch``/``$beginsWith``/``$not`` on a field), the expected CouchDB answer
  is written out with the reason.
- Unit cases for the rules of CouchDB's matcher (``mango_selector.erl``), and refusals.
- Properties (hypothesis): collation is a total order; negation is the complement where
  the field exists; parsing any JSON either compiles or raises ``BadSelector``, and
  matching never raises.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from realtime.databases import selector as S
from realtime.databases.collation import collate
from tests import harness

DOCS = [
    {"_id": "d01", "n": 1, "s": "apple", "tags": ["a", "b"], "o": {"x": 1, "y": "z"}},
    {"_id": "d02", "n": 2.5, "s": "Banana", "tags": ["b"], "o": {"x": 2}},
    {"_id": "d03", "n": 0, "s": "", "tags": [], "o": {}},
    {"_id": "d04", "n": -7, "s": "cherry", "tags": ["c", "a", "b"], "o": {"x": None}},
    {"_id": "d05", "n": None, "s": None, "tags": None, "o": None},
    {"_id": "d06", "n": True, "s": False, "tags": "a", "o": [1, 2]},
    {"_id": "d07", "n": "5", "s": 5, "tags": [["a", "b"]], "o": {"x": [1, 2, 3]}},
    {"_id": "d08"},
    {"_id": "d09", "n": 10, "s": "apricot", "tags": ["a"], "arr": [{"k": 1}, {"k": 5}],
     "m": {"red": 1, "blue": 2}},
    {"_id": "d10", "n": 100, "s": "Zebra", "tags": ["z", "a"], "arr": [{"k": 5}],
     "m": {"green": 1}},
    {"_id": "d11", "n": 3, "s": "apple pie", "tags": ["a", "a"], "arr": [], "m": {}},
    {"_id": "d12", "n": 21, "s": "éclair", "tags": [1, 2, 3], "arr": [{"k": 2}, {"j": 1}],
     "deep": {"a": {"b": {"c": 1}}}},
    {"_id": "d13", "n": -21, "s": "a.b", "tags": [False, None], "deep": {"a": 5}, "a.b": 1},
    {"_id": "d14", "n": 1.0, "s": "apple", "tags": ["b", "a"], "o": {"y": "z", "x": 1}},
    {"_id": "d15", "n": [1], "s": ["apple"], "tags": {"a": 1}, "o": "str"},
]

# Selectors on which pouchdb-server's _find and CouchDB agree.
AGREED = [
    {"n": 1}, {"n": {"$eq": 1}}, {"n": {"$gt": 2}}, {"n": {"$gte": 2.5}},
    {"n": {"$lt": 3}}, {"n": {"$lte": 0}}, {"n": {"$gt": None}}, {"n": {"$lt": "a"}},
    {"n": {"$gt": True}}, {"n": {"$gte": False}}, {"n": {"$lt": []}}, {"n": {"$gt": {}}},
    {"s": {"$gt": "apple"}}, {"s": {"$lt": "b"}}, {"s": {"$gte": ""}},
    {"tags": {"$in": ["a"]}}, {"tags": {"$in": [["a", "b"]]}}, {"tags": "a"},
    {"n": {"$exists": True}}, {"n": {"$exists": False}}, {"o.x": 1},
    {"n": {"$type": "number"}}, {"n": {"$type": "string"}}, {"n": {"$type": "null"}},
    {"n": {"$type": "boolean"}}, {"n": {"$type": "array"}}, {"tags": {"$type": "object"}},
    {"$and": [{"n": {"$gt": 0}}, {"n": {"$lt": 50}}]}, {"n": {"$gt": 0, "$lt": 50}},
    {"$or": [{"n": 1}, {"s": "Zebra"}]},
    {"tags": {"$all": ["a", "b"]}}, {"tags": {"$all": ["a"]}},
    {"arr": {"$elemMatch": {"k": {"$gt": 1}}}}, {"tags": {"$elemMatch": {"$eq": "a"}}},
    {"arr": {"$allMatch": {"k": {"$gt": 1}}}}, {"tags": {"$allMatch": {"$eq": "a"}}},
    {"tags": {"$size": 2}}, {"tags": {"$size": 0}},
    {"s": {"$regex": "^ap"}}, {"s": {"$regex": "e$"}},
    {"n": {"$mod": [7, 0]}}, {"n": {"$mod": [2, -1]}},
    {"deep.a.b.c": 1}, {"deep.a": {"$type": "number"}}, {"a\\.b": 1},
    {"o": {"$eq": {"x": 1, "y": "z"}}}, {"o": {"$eq": {}}},
    {"_id": {"$gt": "d10"}}, {"_id": {"$in": ["d01", "d02"]}}, {"_id": {"$regex": "1$"}},
    {"n": {"$in": []}}, {"$and": []}, {"n": None},
    {"s": {"$in": ["apple", 5]}}, {"n": {"$gt": 1, "$type": "number"}},
    {"$or": [{"tags": {"$size": 1}}, {"arr": {"$elemMatch": {"j": {"$exists": True}}}}]},
]

ALL_IDS = sorted(d["_id"] for d in DOCS)


def but(*ids):
    return sorted(set(ALL_IDS) - set(ids))


# (selector, the ids CouchDB matches, why pouchdb-server answers otherwise)
DIVERGES = [
    ({"n": {"$ne": 1}}, but("d01", "d08", "d14"),
     "CouchDB: a missing field fails every condition but $exists:false"),
    ({"$not": {"n": 1}}, but("d01", "d08", "d14"), "negation pushed down: n $ne 1"),
    ({"$not": {"n": {"$gt": 2}}}, ["d01", "d03", "d04", "d05", "d06", "d13", "d14"],
     "negation pushed down: n $lte 2 (d08 has no n)"),
    ({"n": {"$not": {"$gt": 2}}}, ["d01", "d03", "d04", "d05", "d06", "d13", "d14"],
     "pouchdb refuses $not under a field"),
    ({"n": {"$not": {"$in": [1, 2.5]}}},
     ["d03", "d04", "d05", "d06", "d07", "d09", "d10", "d11", "d12", "d13"],
     "pouchdb refuses $not under a field; $not $in is $nin (d15's [1] contains 1)"),
    ({"$nor": [{"n": 1}, {"s": "Zebra"}]}, but("d01", "d14", "d10", "d08"),
     "$nor pushed down: n $ne 1 and s $ne Zebra"),
    ({"s": {"$in": ["apple", 5, None]}}, ["d01", "d05", "d07", "d14", "d15"],
     "pouchdb never matches null"),
    ({"s": {"$nin": ["apple", 5]}},
     ["d02", "d03", "d04", "d05", "d06", "d09", "d10", "d11", "d12", "d13"],
     "pouchdb never matches null"),
    ({"tags": {"$nin": ["a"]}}, ["d02", "d03", "d05", "d07", "d12", "d13", "d15"],
     "pouchdb never matches null"),
    ({"n": {"$nin": []}}, but("d08"), "pouchdb never matches null"),
    ({"n": {"$ne": None}}, but("d05", "d08"), "pouchdb fails on null"),
    ({"o.x": None}, ["d04"], "pouchdb reads a path through null as null"),
    ({"o.x": {"$exists": True}}, ["d01", "d02", "d04", "d07", "d14"],
     "pouchdb reads a path through null as existing"),
    ({"o.x": {"$exists": False}}, ["d03", "d08", "d09", "d10", "d11", "d12", "d13"],
     "CouchDB: a path through a non-object is bad_path, which fails (d05, d06, d15)"),
    ({"tags.0": "a"}, ["d01", "d09", "d11"], "pouchdb indexes into strings"),
    ({"tags.1": {"$exists": True}}, ["d01", "d04", "d10", "d11", "d12", "d13", "d14"],
     "pouchdb indexes into null"),
    ({"tags": ["a", "b"]}, ["d01"], "pouchdb fails on null"),
    ({"o": {"x": 1}}, ["d01", "d14"], "nested object = dotted field; pouchdb fails on null"),
    ({"o": {"x": 1, "y": "z"}}, ["d01", "d14"], "pouchdb fails on null"),
    ({"deep": {"a": {"b": {"c": {"$gte": 1}}}}}, ["d12"], "pouchdb fails on a missing field"),
    ({"tags": {"$all": [["a", "b"]]}}, ["d01", "d07"],
     "CouchDB: $all [[...]] also matches the array itself"),
    ({"n": {"$mod": [2, 1]}}, ["d01", "d11", "d12"],
     "CouchDB: $mod matches integers only (1.0 is a float)"),
    ({"$or": []}, ALL_IDS, "CouchDB 3: an empty $or matches"),
    ({"m": {"$keyMapMatch": {"$eq": "red"}}}, ["d09"], "pouchdb lacks $keyMapMatch"),
    ({"s": {"$beginsWith": "ap"}}, ["d01", "d09", "d11", "d14"],
     "pouchdb lacks $beginsWith (CouchDB 3.4)"),
    ({"s": {"$regex": "(?i)^a"}}, ["d01", "d09", "d11", "d13", "d14"],
     "JavaScript regular expressions lack inline flags; CouchDB's PCRE has them"),
]


def ours(selector):
    compiled = S.parse(selector)
    return sorted(d["_id"] for d in DOCS if compiled.matches(d))


class AgainstPouchDB(unittest.TestCase):
    """Our matcher against pouchdb-server's _find on the same documents."""

    _db = None

    def setUp(self):
        # One database for the module (trial has no setUpClass); its name is unique.
        self.server = harness.pouchdb()
        if AgainstPouchDB._db is None:
            db = "/" + harness.unique("sel")
            status, body = self.server.request("PUT", db)
            self.assertEqual(status, 201, body)
            status, body = self.server.request("POST", db + "/_bulk_docs",
                                               json.dumps({"docs": DOCS}))
            self.assertEqual(status, 201, body)
            AgainstPouchDB._db = db
        self.db = AgainstPouchDB._db

    def find(self, selector):
        status, body = self.server.request(
            "POST", self.db + "/_find", json.dumps({"selector": selector, "limit": 1000}))
        self.assertEqual(status, 200, f"{selector}: {body[:200]!r}")
        return sorted(d["_id"] for d in json.loads(body)["docs"])

    def test_agreed(self):
        """Every selector where pouchdb-server follows CouchDB: the same documents."""
        for selector in AGREED:
            self.assertEqual(ours(selector), self.find(selector), selector)

    def test_divergences(self):
        """Where pouchdb-server departs from CouchDB, CouchDB's answer (and pouchdb's
        really differs, so that the list stays honest)."""
        for selector, expected, why in DIVERGES:
            self.assertEqual(ours(selector), expected, f"{selector}: {why}")
            status, body = self.server.request(
                "POST", self.db + "/_find",
                json.dumps({"selector": selector, "limit": 1000}))
            if status == 200:
                theirs = sorted(d["_id"] for d in json.loads(body)["docs"])
                self.assertNotEqual(theirs, expected, f"{selector} agrees now: move it")


class Rules(unittest.TestCase):
    """CouchDB's matching rules, one by one."""

    def check(self, selector, doc, expected=True):
        self.assertIs(S.parse(selector).matches(doc), expected, (selector, doc))

    def test_empty_matches_all(self):
        """{} and None match every document."""
        self.check({}, {"a": 1})
        self.check(None, {})
        self.assertTrue(S.parse({}).empty)

    def test_implicit_and_and_eq(self):
        """Several keys are an $and; a bare value is $eq; a nested object a dotted path."""
        self.check({"a": 1, "b": 2}, {"a": 1, "b": 2})
        self.check({"a": 1, "b": 2}, {"a": 1, "b": 3}, False)
        self.check({"a": {"b": {"c": 1}}}, {"a": {"b": {"c": 1}}})
        self.check({"a": {"b": 1, "$exists": True}}, {"a": {"b": 1}})
        self.check({"a": {}}, {"a": {}})
        self.check({"a": {}}, {"a": {"b": 1}}, False)

    def test_collation_across_types(self):
        """null < false < true < numbers < strings < arrays < objects."""
        ordered = [None, False, True, -1, 0, 1.5, 2, "", "A", "a", "b", [], [1], [1, 2],
                   [2], {}, {"a": 1}, {"a": 2}, {"b": 0}, {"b": 0, "c": 0}]
        for i, a in enumerate(ordered):
            for j, b in enumerate(ordered):
                self.assertEqual(collate(a, b), (i > j) - (i < j), (a, b))
        self.assertEqual(collate(1, 1.0), 0)
        self.check({"n": {"$lt": "0"}}, {"n": 10**30})
        self.check({"n": {"$gt": 9}}, {"n": "1"})

    def test_missing_and_bad_paths(self):
        """A missing field fails all but $exists:false; a path through a scalar fails all."""
        for cond in ({"$ne": 1}, {"$nin": [1]}, {"$lt": 5}, {"$not": {"$eq": 1}}):
            self.check({"a": cond}, {}, False)
        self.check({"a": {"$exists": False}}, {})
        self.check({"a.b": {"$exists": False}}, {"a": {}})
        self.check({"a.b": {"$exists": False}}, {"a": 3}, False)
        self.check({"a.b": {"$exists": False}}, {"a": None}, False)

    def test_array_index(self):
        """A decimal path part indexes an array; out of range fails."""
        self.check({"a.1.b": 2}, {"a": [{"b": 1}, {"b": 2}]})
        self.check({"a.2": {"$exists": False}}, {"a": [1, 2]}, False)
        self.check({"a.x": {"$exists": False}}, {"a": [1, 2]}, False)

    def test_escaped_dot(self):
        """\\. is a dot in a field name."""
        self.check({"a\\.b": 1}, {"a.b": 1})
        self.check({"a\\.b": 1}, {"a": {"b": 1}}, False)

    def test_negation_pushdown(self):
        """$not and $nor follow De Morgan down to the terminals, as in CouchDB."""
        self.check({"$not": {"$and": [{"a": 1}, {"b": 1}]}}, {"a": 1, "b": 2})
        self.check({"$not": {"$and": [{"a": 1}, {"b": 1}]}}, {"a": 1}, False)
        self.check({"$not": {"$not": {"a": 1}}}, {"a": 1})
        self.check({"$not": {"a": {"$exists": True}}}, {})
        self.check({"$not": {"a": {"$regex": "x"}}}, {"a": "y"})
        self.check({"$not": {"a": {"$regex": "x"}}}, {}, False)
        self.check({"$nor": [{"a": 1}]}, {"a": 2})

    def test_negation_inside_elem_match_is_plain(self):
        """Inside $elemMatch, $not is a plain negation (CouchDB does not push it down)."""
        self.check({"xs": {"$elemMatch": {"$not": {"k": 1}}}}, {"xs": [{"j": 1}]})
        self.check({"xs": {"$elemMatch": {"$nor": [{"k": 1}]}}}, {"xs": [{"k": 2}]})

    def test_list_operators(self):
        """$in/$nin look into arrays; $all, $size, $elemMatch, $allMatch; empty lists."""
        self.check({"t": {"$in": [2, 9]}}, {"t": [1, 2]})
        self.check({"t": {"$nin": [2, 9]}}, {"t": [1, 2]}, False)
        self.check({"t": {"$all": [1, 2]}}, {"t": [2, 3, 1]})
        self.check({"t": {"$all": []}}, {"t": [1]}, False)
        self.check({"t": {"$all": [1]}}, {"t": 1}, False)
        self.check({"t": {"$allMatch": {"$gt": 0}}}, {"t": []}, False)
        self.check({"t": {"$elemMatch": {"$gt": 0}}}, {"t": 5}, False)
        self.check({"t": {"$size": 0}}, {"t": []})
        self.check({"t": {"$size": 1}}, {"t": "x"}, False)

    def test_key_map_match(self):
        """$keyMapMatch: some key of the object matches."""
        self.check({"m": {"$keyMapMatch": {"$regex": "^r"}}}, {"m": {"red": 1}})
        self.check({"m": {"$keyMapMatch": {"$regex": "^r"}}}, {"m": {"blue": 1}}, False)
        self.check({"m": {"$keyMapMatch": {"$eq": "red"}}}, {"m": ["red"]}, False)

    def test_mod(self):
        """$mod: integers only, remainder's sign follows the dividend."""
        self.check({"n": {"$mod": [3, -1]}}, {"n": -7})
        self.check({"n": {"$mod": [3, 2]}}, {"n": -7}, False)
        self.check({"n": {"$mod": [-3, 1]}}, {"n": 7})
        self.check({"n": {"$mod": [2, 0]}}, {"n": 4.0}, False)
        self.check({"n": {"$mod": [2, 1]}}, {"n": True}, False)

    def test_type_and_booleans(self):
        """true is not the number 1."""
        self.check({"b": 1}, {"b": True}, False)
        self.check({"b": True}, {"b": 1}, False)
        self.check({"b": {"$type": "boolean"}}, {"b": False})
        self.check({"b": {"$type": "number"}}, {"b": False}, False)

    def test_id_compares_raw(self):
        """_id compares in Erlang term order, as CouchDB does (a string after an array)."""
        self.check({"_id": {"$gt": []}}, {"_id": "x"})
        self.check({"x": {"$gt": []}}, {"x": "x"}, False)

    def test_regex(self):
        """$regex searches (not anchored), strings only; a runaway pattern times out."""
        self.check({"s": {"$regex": "b"}}, {"s": "abc"})
        self.check({"s": {"$regex": "1"}}, {"s": 1}, False)
        self.check({"s": {"$regex": "(.*a){25}x"}}, {"s": "a" * 60}, False)

    def test_paths(self):
        """paths lists the fields tested at the top level."""
        parsed = S.parse({"a.b": 1, "$or": [{"c": 1}, {"d": {"$elemMatch": {"e": 1}}}]})
        self.assertEqual(parsed.paths, {("a", "b"), ("c",), ("d",)})


class Refusals(unittest.TestCase):
    """bad_selector, naming the operator or field at fault."""

    def refused(self, selector, operator=None, text=None):
        with self.assertRaises(S.BadSelector) as caught:
            S.parse(selector)
        self.assertEqual(caught.exception.code, "bad_selector")
        self.assertEqual(caught.exception.operator, operator)
        if operator:
            self.assertIn(operator, str(caught.exception))
        if text:
            self.assertIn(text, str(caught.exception))

    def test_unknown_and_unsupported(self):
        self.refused({"a": {"$foo": 1}}, "$foo", "unknown operator")
        self.refused({"$where": "x"}, "$where")
        self.refused({"$text": "x"}, "$text", "text index")
        self.refused({"a": {"$near": [0, 0]}}, "$near")

    def test_bad_arguments(self):
        self.refused({"a": {"$in": 1}}, "$in")
        self.refused({"a": {"$nin": {}}}, "$nin")
        self.refused({"a": {"$all": "x"}}, "$all")
        self.refused({"$and": {}}, "$and")
        self.refused({"$or": 1}, "$or")
        self.refused({"$nor": "x"}, "$nor")
        self.refused({"$not": []}, "$not")
        self.refused({"a": {"$exists": 1}}, "$exists")
        self.refused({"a": {"$type": "int"}}, "$type")
        self.refused({"a": {"$size": -1}}, "$size")
        self.refused({"a": {"$size": True}}, "$size")
        self.refused({"a": {"$mod": [0, 1]}}, "$mod")
        self.refused({"a": {"$mod": [2]}}, "$mod")
        self.refused({"a": {"$mod": [2.0, 1]}}, "$mod")
        self.refused({"a": {"$regex": "("}}, "$regex")
        self.refused({"a": {"$regex": 1}}, "$regex")
        self.refused({"a": {"$regex": "x" * 2000}}, "$regex")
        self.refused({"a": {"$elemMatch": 1}}, "$elemMatch")
        self.refused({"a": {"$allMatch": []}}, "$allMatch")
        self.refused({"a": {"$keyMapMatch": "x"}}, "$keyMapMatch")
        self.refused({"a": {"$beginsWith": 1}}, "$beginsWith")

    def test_shape(self):
        self.refused([], text="object")
        self.refused("x", text="object")
        self.refused({"": 1}, text="empty")
        self.refused({"a..b": 1}, text="empty part")
        self.refused({"$gt": 1}, "$gt", "needs a field")
        self.refused({"a": {"$in": list(range(S.MAX_TERMS + 1))}}, text="too large")


# -- properties -----------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(
    -5, 5, allow_nan=False) | st.sampled_from(["", "a", "B", "ab", "é"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from(["a", "b", "c"]), inner, max_size=3), max_leaves=8)
docs = st.dictionaries(st.sampled_from(["a", "b", "c"]), values, max_size=3)
comparisons = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"])


class Properties(unittest.TestCase):

    @settings(max_examples=300, deadline=None)
    @given(values, values, values)
    def test_collation_is_a_total_order(self, a, b, c):
        """Antisymmetric, transitive, and 0 exactly for equal JSON (1 == 1.0)."""
        self.assertEqual(collate(a, b), -collate(b, a))
        if collate(a, b) <= 0 and collate(b, c) <= 0:
            self.assertLessEqual(collate(a, c), 0)
        self.assertEqual(collate(a, a), 0)

    @settings(max_examples=300, deadline=None)
    @given(docs, st.sampled_from(["a", "b"]), comparisons, values)
    def test_not_is_the_complement_where_the_field_exists(self, doc, field, op, value):
        """{$not: {f: {op: v}}} matches exactly the docs having f that {f: {op: v}} misses."""
        plain = S.parse({field: {op: value}}).matches(doc)
        negated = S.parse({"$not": {field: {op: value}}}).matches(doc)
        if field in doc:
            self.assertNotEqual(plain, negated)
        else:
            self.assertFalse(plain or negated)

    @settings(max_examples=300, deadline=None)
    @given(docs, st.sampled_from(["a", "b"]), values)
    def test_in_one_is_eq(self, doc, field, value):
        """{f: {$in: [v]}} is {f: v} for a field that is not an array."""
        if not isinstance(doc.get(field), list):
            self.assertEqual(S.parse({field: {"$in": [value]}}).matches(doc),
                             S.parse({field: {"$eq": value}}).matches(doc))

    @settings(max_examples=500, deadline=None)
    @given(st.recursive(
        scalars | st.sampled_from(["$gt", "$in", "$and", "$or", "$not", "$elemMatch"]),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
            st.sampled_from(["a", "b.c", "$eq", "$gt", "$in", "$and", "$or", "$nor",
                             "$not", "$exists", "$elemMatch", "$allMatch", "$size",
                             "$mod", "$all", "$type", "$regex", "$keyMapMatch", "$zz"]),
            inner, max_size=3), max_leaves=10), docs)
    def test_any_json_parses_or_is_refused_and_never_crashes(self, selector, doc):
        """Whatever a client sends: BadSelector or a selector whose matching never raises."""
        try:
            parsed = S.parse(selector)
        except S.BadSelector as e:
            self.assertTrue(str(e))
            return
        self.assertIn(parsed.matches(doc), (True, False))
