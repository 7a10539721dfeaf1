"""
Pure tests of the rule file (realtime.databases.rulefile: parsing, validation errors) and
of the rules (realtime.databases.rules: the readers of a document, matching users with
their current roles, sanitising, writers).
"""

import os
import sys
import types

from twisted.trial import unittest

from realtime.databases import rulefile
from realtime.databases.rulefile import RuleFileError, parse_rules
from realtime.databases.rules import NOBODY, AccessRuleFailed, may_read, principals_of

NOTES = """
[databases.notes]
users  = ["owner", "members"]
roles  = ["readers"]
hidden = ["secret", "acl.internal"]
write  = ["owner"]
fields = ["title", "body"]
owner  = "owner"

[databases.wiki]
public = true
push = "subscribed"
"""


def _module(name, **attributes):
    """Install a throwaway module for ``access`` imports."""
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


class ParseTests(unittest.TestCase):
    def test_example(self):
        """The example parses into one rule per database, paths split on dots."""
        ruleset = parse_rules(NOTES, "rules.toml")
        self.assertEqual(sorted(ruleset), ["notes", "wiki"])
        notes = ruleset["notes"]
        self.assertEqual(notes.users, (("owner",), ("members",)))
        self.assertEqual(notes.roles, (("readers",),))
        self.assertEqual(notes.hidden, (("secret",), ("acl", "internal")))
        self.assertEqual(notes.push, "all")
        self.assertTrue(notes.push_all)
        self.assertTrue(notes.writable)
        self.assertEqual(notes.owner, ("owner",))
        self.assertEqual(notes.fields, ("title", "body"))
        wiki = ruleset["wiki"]
        self.assertTrue(wiki.public)
        self.assertEqual(wiki.push, "subscribed")
        self.assertFalse(wiki.writable)

    def test_single_string_is_one_path(self):
        """A key holding one string is a list of one path."""
        rule = parse_rules('[databases.a]\nusers = "acl.readers"\n')["a"]
        self.assertEqual(rule.users, (("acl", "readers"),))

    def test_empty_file(self):
        """An empty file follows no application database."""
        self.assertEqual(len(parse_rules("", "empty.toml")), 0)

    def test_load_from_file(self):
        """load_rules reads a file; the RuleSet remembers where it came from."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(NOTES)
        ruleset = rulefile.load_rules(path)
        self.assertEqual(ruleset.source, path)
        self.assertIn("notes", ruleset)

    def assertError(self, text, *fragments, source="rules.toml"):
        with self.assertRaises(RuleFileError) as caught:
            parse_rules(text, source)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith(source + ":"), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_errors_name_file_table_and_key(self):
        """Each invalid value names the file, the table and the key, in one line."""
        cases = [
            ('[databases.notes]\nuser = ["owner"]\n', "[databases.notes] user", "unknown key"),
            ('[databases.notes]\nusers = 3\n', "[databases.notes] users", "list of strings"),
            ('[databases.notes]\nusers = ["a", 3]\n', "[databases.notes] users"),
            ('[databases.notes]\nusers = ["a..b"]\n', "[databases.notes] users", "a..b"),
            ('[databases.notes]\nroles = [""]\n', "[databases.notes] roles"),
            ('[databases.notes]\nhidden = {a = 1}\n', "[databases.notes] hidden"),
            ('[databases.notes]\npublic = "yes"\n', "[databases.notes] public", "true or false"),
            ('[databases.notes]\npush = "some"\n', "[databases.notes] push", '"subscribed"'),
            ('[databases.notes]\nwrite = ["owner"]\n', "[databases.notes] write", "fields"),
            ('[databases.notes]\nfields = ["title"]\n', "[databases.notes] fields", "write"),
            ('[databases.notes]\nwrite = "o"\nfields = ["_id"]\n', "[databases.notes] fields",
             "_id"),
            ('[databases.notes]\nowner = ["o"]\nwrite = "o"\nfields = "t"\n',
             "[databases.notes] owner", "one field"),
            ('[databases.notes]\nowner = "o"\n', "[databases.notes] owner", "write"),
            ('[databases.Notes]\nusers = "o"\n', "[databases.Notes]", "database name"),
            ('[databases._users]\nusers = "o"\n', "[databases._users]", "database name"),
            ('databases = 3\n', "databases", "table"),
            ('[databases]\nnotes = 3\n', "[databases.notes]", "must be a table"),
            ('[other]\nx = 1\n', "'other'", "top-level"),
            ('[databases.notes\n', "not valid TOML"),
        ]
        for text, *fragments in cases:
            self.assertError(text, *fragments)

    def test_access_errors(self):
        """An access path that does not import, is not callable, or is given with
        users/roles/public stops the load with the key named."""
        _module("rt_test_access_ok", rule=lambda doc: ["public"], value=3)
        self.assertError('[databases.a]\naccess = "no_such_module_xyz:f"\n',
                         "[databases.a] access", "cannot import no_such_module_xyz")
        self.assertError('[databases.a]\naccess = "rt_test_access_ok:missing"\n',
                         "[databases.a] access", "has no missing")
        self.assertError('[databases.a]\naccess = "rt_test_access_ok:value"\n',
                         "[databases.a] access", "not callable")
        self.assertError('[databases.a]\naccess = "rt_test_access_ok"\n',
                         "[databases.a] access", "module:callable")
        self.assertError('[databases.a]\naccess = 3\n', "[databases.a] access")
        self.assertError('[databases.a]\naccess = "rt_test_access_ok:rule"\nusers = "o"\n',
                         "[databases.a] access", "not both")

    def test_access_module_that_raises_on_import(self):
        """An access module failing at import is one line too (no traceback)."""
        path = self.mktemp()
        os.makedirs(path)
        with open(os.path.join(path, "rt_test_broken_rules.py"), "w") as f:
            f.write("raise RuntimeError('boom\\nsecond line')\n")
        sys.path.insert(0, path)
        self.addCleanup(sys.path.remove, path)
        message = self.assertError('[databases.a]\naccess = "rt_test_broken_rules:f"\n',
                                   "[databases.a] access", "RuntimeError", "boom")
        self.assertIn("second line", message)

    def test_missing_file(self):
        """A file that cannot be read is named."""
        with self.assertRaises(RuleFileError) as caught:
            rulefile.load_rules("/nonexistent/rules.toml")
        self.assertIn("/nonexistent/rules.toml: cannot be read", str(caught.exception))

    def test_not_utf8(self):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"[databases.a]\nusers = \"\xff\"\n")
        with self.assertRaises(RuleFileError) as caught:
            rulefile.load_rules(path)
        self.assertIn("not UTF-8", str(caught.exception))


def notes_rule():
    return parse_rules(NOTES)["notes"]


class ReadersTests(unittest.TestCase):
    def test_users_and_roles_fields(self):
        """Fields holding a string or a list of strings name users and roles."""
        doc = {"_id": "n1", "owner": "alice", "members": ["bob", "carol"],
               "readers": "staff"}
        self.assertEqual(notes_rule().readers(doc),
                         {"user:alice", "user:bob", "user:carol", "role:staff"})

    def test_other_values_name_nobody(self):
        """Numbers, objects, empty strings, nulls and missing fields name nobody."""
        rule = notes_rule()
        for doc in ({"owner": 3}, {"owner": {"name": "a"}}, {"owner": ""},
                    {"members": [None, 1, "", {"x": "y"}]}, {}, {"owner": None}):
            self.assertEqual(rule.readers(doc), NOBODY, doc)

    def test_dotted_paths_into_objects_and_lists(self):
        """Dotted paths reach into objects, and into each object of a list."""
        rule = parse_rules('[databases.a]\nusers = ["acl.readers", "team.name"]\n'
                           'roles = "acl.roles"\n')["a"]
        doc = {"acl": {"readers": ["x"], "roles": "r"},
               "team": [{"name": "y"}, {"name": ["z"]}, "not-an-object", {"other": "w"}]}
        self.assertEqual(rule.readers(doc), {"user:x", "user:y", "user:z", "role:r"})
        self.assertEqual(rule.readers({"acl": "readers"}), NOBODY)

    def test_deleted_and_missing(self):
        """A tombstone or no document has no readers."""
        rule = notes_rule()
        self.assertEqual(rule.readers({"_id": "n", "_deleted": True, "owner": "a"}), NOBODY)
        self.assertEqual(rule.readers(None), NOBODY)

    def test_public(self):
        rule = parse_rules(NOTES)["wiki"]
        self.assertEqual(rule.readers({"_id": "w"}), {"public"})

    def test_access_callable(self):
        """access replaces the fields; its result is a set of principals."""
        seen = []

        def rule_fn(doc):
            seen.append(doc)
            doc["mutated"] = True
            return ["user:" + doc["who"], "role:ops", "public"]

        _module("rt_test_access_fn", rule=rule_fn)
        rule = parse_rules('[databases.a]\naccess = "rt_test_access_fn:rule"\n')["a"]
        doc = {"who": "ann"}
        self.assertEqual(rule.readers(doc), {"user:ann", "role:ops", "public"})
        self.assertNotIn("mutated", doc, "access gets a copy")
        self.assertEqual(rule.describe()["access"], "rt_test_access_fn:rule")

    def test_access_nested_attribute(self):
        """module:Class.method is accepted."""
        class Rules:
            @staticmethod
            def notes(doc):
                return ("user:x",)
        _module("rt_test_access_cls", Rules=Rules)
        rule = parse_rules('[databases.a]\naccess = "rt_test_access_cls:Rules.notes"\n')["a"]
        self.assertEqual(rule.readers({}), {"user:x"})

    def test_access_failures(self):
        """A raising callable, or one returning non-principals, raises AccessRuleFailed."""
        def boom(doc):
            raise KeyError("x")
        _module("rt_test_access_bad", boom=boom, number=lambda doc: 3,
                bad=lambda doc: ["alice"], empty_user=lambda doc: ["user:"],
                mixed=lambda doc: ["public", 4])
        for name in ("boom", "number", "bad", "empty_user", "mixed"):
            rule = parse_rules(f'[databases.a]\naccess = "rt_test_access_bad:{name}"\n')["a"]
            self.assertRaises(AccessRuleFailed, rule.readers, {"_id": "d"})


class MayReadTests(unittest.TestCase):
    def test_user_role_public(self):
        self.assertTrue(may_read(frozenset({"user:a"}), "a", ()))
        self.assertFalse(may_read(frozenset({"user:a"}), "b", ()))
        self.assertTrue(may_read(frozenset({"role:r"}), "b", ("x", "r")))
        self.assertFalse(may_read(frozenset({"role:r"}), "b", ("x",)))
        self.assertTrue(may_read(frozenset({"public"}), "anyone", ()))
        self.assertFalse(may_read(NOBODY, "a", ("_admin",)))

    def test_no_prefix_confusion(self):
        """A user named like a role, or a role named like a user, matches nothing else."""
        self.assertFalse(may_read(frozenset({"user:r"}), "x", ("r",)))
        self.assertFalse(may_read(frozenset({"role:a"}), "a", ()))
        self.assertFalse(may_read(frozenset({"user:role:r"}), "x", ("r",)))

    def test_admins_read_nothing_unless_granted(self):
        """_admin is a role like any other."""
        rule = notes_rule()
        readers = rule.readers({"owner": "alice"})
        self.assertFalse(may_read(readers, "root", ("_admin",)))
        self.assertTrue(may_read(rule.readers({"readers": "_admin"}), "root", ("_admin",)))

    def test_principals_of(self):
        self.assertEqual(principals_of("a", ("r",)), {"public", "user:a", "role:r"})


class SanitiseTests(unittest.TestCase):
    def test_hidden_removed_nested(self):
        """Hidden fields go at any depth, through lists; the input is not changed."""
        rule = parse_rules('[databases.a]\nusers = "o"\n'
                           'hidden = ["secret", "acl.internal", "items.cost"]\n')["a"]
        doc = {"_id": "d", "_rev": "1-x", "o": "a", "secret": 1, "title": "t",
               "acl": {"internal": 2, "readers": ["a"]},
               "items": [{"cost": 3, "name": "n"}, "plain", [{"cost": 4}]],
               "_revisions": {"start": 1, "ids": ["x"]}}
        out = rule.sanitise(doc)
        self.assertEqual(out, {"_id": "d", "_rev": "1-x", "o": "a", "title": "t",
                               "acl": {"readers": ["a"]},
                               "items": [{"name": "n"}, "plain", [{}]]})
        self.assertEqual(doc["secret"], 1)
        self.assertEqual(doc["acl"]["internal"], 2)
        self.assertEqual(doc["items"][0]["cost"], 3)

    def test_no_hidden(self):
        """With nothing hidden the copy is equal (revision metadata aside)."""
        rule = parse_rules(NOTES)["wiki"]
        doc = {"_id": "w", "a": {"b": 1}, "_revs_info": []}
        self.assertEqual(rule.sanitise(doc), {"_id": "w", "a": {"b": 1}})
        self.assertIn("_revs_info", doc)


class WritersTests(unittest.TestCase):
    def test_writers(self):
        rule = notes_rule()
        doc = {"owner": "alice", "members": ["bob"]}
        self.assertEqual(rule.writers(doc), {"user:alice"})
        self.assertTrue(rule.may_write(doc, "alice"))
        self.assertFalse(rule.may_write(doc, "bob"))
        self.assertEqual(rule.writers({"_deleted": True, "owner": "alice"}), NOBODY)
        self.assertEqual(parse_rules(NOTES)["wiki"].writers(doc), NOBODY)


class StartupTests(unittest.TestCase):
    def test_invalid_file_stops_the_server_with_one_line(self):
        """`python -m realtime` with an invalid rule file exits non-zero, printing one line
        naming the file, the table and the key (no usage text, no traceback)."""
        import subprocess
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write('[databases.notes]\nusers = ["owner"]\npush = "sometimes"\n')
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, REALTIME_CONFIG=path, REALTIME_EMBEDDED_COUCHDB="no",
                   REALTIME_LISTEN="tcp:0:interface=127.0.0.1")
        result = subprocess.run([sys.executable, "-m", "realtime"], cwd=root, env=env,
                                capture_output=True, text=True, timeout=60)
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(f"{path}: [databases.notes] push:", lines[0])
        self.assertEqual(result.stdout, "")
