"""The pure checks of document writes (realtime.databases.writes): no network."""

from __future__ import annotations

from twisted.trial import unittest

from realtime.databases import writes
from realtime.databases.rulefile import parse_rules
from realtime.databases.writes import WriteRefused

RULES = parse_rules("""
[databases.notes]
users  = ["owner", "members"]
write  = ["owner", "editors"]
fields = ["title", "body", "tags", "editors", "a.b"]
owner  = "owner"

[databases.nested]
users  = ["meta.owner"]
write  = ["meta.owner"]
fields = ["title", "meta"]
owner  = "meta.owner"

[databases.shared]
users  = ["members"]
write  = ["editors"]
fields = ["title", "editors"]

[databases.readonly]
users = ["owner"]
""", "rules.toml")
NOTES = RULES["notes"]


def refused(test, call, *args):
    """The WriteRefused that ``call(*args)`` raises."""
    return test.assertRaises(WriteRefused, call, *args)


def create(db="notes", ref="r1", **doc):
    return writes.parse_request({"type": "doc.create", "db": db, "doc": doc, "ref": ref})


def update(doc_id="n1", rev="1-a", db="notes", **changes):
    return writes.parse_request({"type": "doc.update", "db": db, "id": doc_id, "rev": rev,
                                 "changes": changes})


class RequestShapeTests(unittest.TestCase):
    def test_bad_shapes_are_invalid(self):
        """Each malformed request is refused with invalid, before any rule is looked at."""
        bad = [
            {"type": "doc.create", "db": "notes"},
            {"type": "doc.create", "db": "notes", "doc": []},
            {"type": "doc.create", "db": 5, "doc": {}},
            {"type": "doc.create", "db": "notes", "doc": {}, "ref": "x" * 65},
            {"type": "doc.create", "db": "notes", "doc": {}, "ref": 7},
            {"type": "doc.create", "db": "notes", "doc": {"_id": 12}},
            {"type": "doc.create", "db": "notes", "doc": {"_id": ""}},
            {"type": "doc.create", "db": "notes", "doc": {"_id": "x" * 257}},
            {"type": "doc.create", "db": "notes", "doc": {"_id": "_other"}},
            {"type": "doc.update", "db": "notes", "id": "n1", "rev": "1-a"},
            {"type": "doc.update", "db": "notes", "id": "n1", "rev": "1-a", "changes": {}},
            {"type": "doc.update", "db": "notes", "id": "n1", "changes": {"title": "t"}},
            {"type": "doc.update", "db": "notes", "rev": "1-a", "changes": {"title": "t"}},
            {"type": "doc.delete", "db": "notes", "id": "n1"},
            {"type": "doc.delete", "db": "notes", "id": "n1", "rev": ""},
            {"type": "doc.delete", "db": "notes", "id": ["n1"], "rev": "1-a"},
        ]
        for message in bad:
            self.assertEqual(refused(self, writes.parse_request, message).code, "invalid",
                             message)

    def test_reserved_ids_are_forbidden(self):
        """_design/ and _local/ ids are refused for every operation."""
        for message in [
            {"type": "doc.create", "db": "notes", "doc": {"_id": "_design/app"}},
            {"type": "doc.update", "db": "notes", "id": "_design/app", "rev": "1-a",
             "changes": {"title": "t"}},
            {"type": "doc.delete", "db": "notes", "id": "_local/x", "rev": "1-a"},
        ]:
            self.assertEqual(refused(self, writes.parse_request, message).code, "forbidden")

    def test_a_good_request(self):
        request = update(title="new")
        self.assertEqual((request.kind, request.db, request.doc_id, request.rev),
                         ("doc.update", "notes", "n1", "1-a"))
        self.assertEqual(request.changes, {"title": "new"})
        self.assertEqual(writes.valid_ref("r" * 64), "r" * 64)
        self.assertIsNone(writes.valid_ref("r" * 65))


class RuleTests(unittest.TestCase):
    def test_only_writable_databases(self):
        """An unknown database and one without write get the same forbidden."""
        unknown = refused(self, writes.writable_rule, RULES, "nope")
        readonly = refused(self, writes.writable_rule, RULES, "readonly")
        self.assertEqual((unknown.code, readonly.code), ("forbidden", "forbidden"))
        self.assertIs(writes.writable_rule(RULES, "notes"), NOTES)

    def test_field_outside_fields_is_forbidden_and_named(self):
        error = refused(self, writes.check_request, NOTES, update(title="t", secret="s"))
        self.assertEqual((error.code, error.extra), ("forbidden", {"field": "secret"}))

    def test_underscore_field_is_invalid(self):
        for field in ("_rev", "_deleted", "_attachments", "_id"):
            error = refused(self, writes.check_request, NOTES, update(**{field: 1}))
            self.assertEqual((error.code, error.extra["field"]), ("invalid", field))

    def test_dotted_change_names_a_top_level_field(self):
        """'a.b' is allowed because fields lists the top-level name 'a.b', not a path."""
        writes.check_request(NOTES, update(**{"a.b": 1}))
        error = refused(self, writes.check_request, NOTES, update(**{"title.x": 1}))
        self.assertEqual(error.extra["field"], "title.x")


class CreateTests(unittest.TestCase):
    def test_owner_is_forced(self):
        """Whatever the client puts in the owner field, the writer is the owner."""
        doc_id, body, derived = writes.new_document(
            NOTES, "alice", create(title="hello", owner="mallory"))
        self.assertEqual(body, {"title": "hello", "owner": "alice"})
        self.assertTrue(derived)
        self.assertEqual(len(doc_id), 32)

    def test_derived_id_is_stable_per_request(self):
        """Same (db, user, ref, doc): same id; another user, ref or doc: another id."""
        first = writes.new_document(NOTES, "alice", create(title="a", tags=["x"]))[0]
        again = writes.new_document(NOTES, "alice", create(title="a", tags=["x"]))[0]
        self.assertEqual(first, again)
        others = {
            writes.new_document(NOTES, "bob", create(title="a", tags=["x"]))[0],
            writes.new_document(NOTES, "alice", create(ref="r2", title="a", tags=["x"]))[0],
            writes.new_document(NOTES, "alice", create(title="b", tags=["x"]))[0],
        }
        self.assertNotIn(first, others)
        self.assertEqual(len(others), 3)
        # key order of the client's JSON does not matter
        self.assertEqual(writes.derived_id("notes", "alice", "r", {"a": 1, "b": {"c": 2, "d": 3}}),
                         writes.derived_id("notes", "alice", "r", {"b": {"d": 3, "c": 2}, "a": 1}))

    def test_given_and_random_ids(self):
        doc_id, body, derived = writes.new_document(NOTES, "alice", create(_id="n-1", title="x"))
        self.assertEqual((doc_id, derived), ("n-1", False))
        self.assertNotIn("_id", body)
        one = writes.new_document(NOTES, "alice", create(ref=None, title="x"))
        two = writes.new_document(NOTES, "alice", create(ref=None, title="x"))
        self.assertFalse(one[2])
        self.assertNotEqual(one[0], two[0])

    def test_fields_are_checked(self):
        error = refused(self, writes.new_document, NOTES, "alice", create(title="x", rank=1))
        self.assertEqual((error.code, error.extra), ("forbidden", {"field": "rank"}))
        error = refused(self, writes.new_document, NOTES, "alice", create(_rev="1-a"))
        self.assertEqual(error.code, "invalid")

    def test_dotted_owner_creates_objects(self):
        _, body, _ = writes.new_document(RULES["nested"], "alice",
                                         create(db="nested", title="x", meta={"owner": "bob"}))
        self.assertEqual(body, {"title": "x", "meta": {"owner": "alice"}})
        _, body, _ = writes.new_document(RULES["nested"], "alice", create(db="nested"))
        self.assertEqual(body, {"meta": {"owner": "alice"}})
        error = refused(self, writes.new_document, RULES["nested"], "alice",
                        create(db="nested", meta="text"))
        self.assertEqual(error.code, "invalid")

    def test_the_writer_must_be_able_to_write_what_it_creates(self):
        """Without owner, the new doc must name the writer in a write field."""
        shared = RULES["shared"]
        error = refused(self, writes.new_document, shared, "alice",
                        create(db="shared", title="x", editors=["bob"]))
        self.assertEqual(error.code, "forbidden")
        _, body, _ = writes.new_document(shared, "alice",
                                         create(db="shared", title="x", editors=["alice"]))
        self.assertEqual(body["editors"], ["alice"])

    def test_size_is_bounded(self):
        writes.new_document(NOTES, "alice", create(body="x" * (60 * 1024)))
        error = refused(self, writes.new_document, NOTES, "alice",
                        create(body="x" * writes.MAX_DOCUMENT_BYTES))
        self.assertEqual(error.code, "invalid")


class UpdateDeleteTests(unittest.TestCase):
    current = {"_id": "n1", "_rev": "2-b", "_revisions": {"start": 2, "ids": ["b", "a"]},
               "_attachments": {"f": {"stub": True}}, "owner": "alice", "editors": ["carol"],
               "members": ["dave"], "title": "old", "body": "text"}

    def test_writer_updates_allowed_fields(self):
        for user in ("alice", "carol"):
            body = writes.updated_document(NOTES, user, self.current,
                                           update(rev="2-b", title="new"))
            self.assertEqual(body, {"_id": "n1", "_rev": "2-b",
                                    "_attachments": {"f": {"stub": True}}, "owner": "alice",
                                    "editors": ["carol"], "members": ["dave"],
                                    "title": "new", "body": "text"})

    def test_missing_and_not_writable_are_the_same_forbidden(self):
        """A reader, a stranger and a missing doc: one code, one text, no rev."""
        errors = [
            refused(self, writes.updated_document, NOTES, "dave", self.current,
                    update(rev="2-b", title="x")),
            refused(self, writes.updated_document, NOTES, "eve", self.current,
                    update(rev="1-zzz", title="x")),
            refused(self, writes.updated_document, NOTES, "alice", None,
                    update(rev="2-b", title="x")),
            refused(self, writes.updated_document, NOTES, "alice",
                    dict(self.current, _deleted=True), update(rev="2-b", title="x")),
            refused(self, writes.check_delete, NOTES, "eve", self.current,
                    writes.parse_request({"type": "doc.delete", "db": "notes", "id": "n1",
                                          "rev": "1-zzz"})),
        ]
        self.assertEqual({(e.code, e.message, tuple(e.extra)) for e in errors},
                         {("forbidden", writes.NO_WRITE_RIGHT, ())})

    def test_stale_rev_is_a_conflict_with_the_current_rev(self):
        error = refused(self, writes.updated_document, NOTES, "alice", self.current,
                        update(rev="1-a", title="x"))
        self.assertEqual((error.code, error.extra), ("conflict", {"rev": "2-b"}))

    def test_owner_cannot_be_changed_unless_in_fields(self):
        error = refused(self, writes.updated_document, NOTES, "alice", self.current,
                        update(rev="2-b", owner="bob"))
        self.assertEqual((error.code, error.extra), ("forbidden", {"field": "owner"}))

    def test_merged_size_is_bounded(self):
        big = dict(self.current, body="x" * (writes.MAX_DOCUMENT_BYTES - 100))
        error = refused(self, writes.updated_document, NOTES, "alice", big,
                        update(rev="2-b", title="y" * 200))
        self.assertEqual(error.code, "invalid")

    def test_refused_size_tells_nothing_of_the_document(self):
        """The same too-large update of documents of different sizes: the same text (a
        writer who may not read would learn the document's size from a number)."""
        too_big = update(rev="2-b", title="y" * writes.MAX_DOCUMENT_BYTES)
        texts = {refused(self, writes.updated_document, NOTES, "alice",
                         dict(self.current, body="x" * n), too_big).message
                 for n in (10, 5000)}
        self.assertEqual(len(texts), 1, texts)

    def test_delete_needs_the_write_right_and_the_current_rev(self):
        def delete(rev):
            return writes.parse_request({"type": "doc.delete", "db": "notes", "id": "n1",
                                         "rev": rev})
        writes.check_delete(NOTES, "carol", self.current, delete("2-b"))
        error = refused(self, writes.check_delete, NOTES, "carol", self.current, delete("1-a"))
        self.assertEqual((error.code, error.extra), ("conflict", {"rev": "2-b"}))

    def test_same_content(self):
        self.assertTrue(writes.same_content({"_id": "x", "_rev": "1-a", "t": 1}, {"t": 1}))
        self.assertFalse(writes.same_content({"_id": "x", "t": 1, "u": 2}, {"t": 1}))


HIDDEN = parse_rules("""
[databases.notes]
users  = ["owner"]
hidden = ["secret", "meta.token"]
write  = ["owner"]
fields = ["title"]
""", "rules.toml")["notes"]


class HiddenFieldsTests(unittest.TestCase):
    def test_update_size_tells_nothing_of_hidden_fields(self):
        """An update is measured without the hidden fields: the same update is accepted,
        or refused with the same text, whatever their length."""
        def current(hidden_bytes):
            return {"_id": "n1", "_rev": "1-a", "owner": "alice", "title": "t",
                    "secret": "s" * hidden_bytes, "meta": {"token": "k" * hidden_bytes}}

        fits = update(rev="1-a", title="y" * (writes.MAX_DOCUMENT_BYTES // 2))
        for hidden_bytes in (10, writes.MAX_DOCUMENT_BYTES // 2):
            body = writes.updated_document(HIDDEN, "alice", current(hidden_bytes), fits)
            self.assertEqual(len(body["secret"]), hidden_bytes)  # kept as it was
        too_big = update(rev="1-a", title="y" * writes.MAX_DOCUMENT_BYTES)
        texts = {refused(self, writes.updated_document, HIDDEN, "alice", current(n),
                         too_big).message for n in (10, 20000)}
        self.assertEqual(len(texts), 1, texts)
