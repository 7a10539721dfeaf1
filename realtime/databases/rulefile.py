"""
Reading the rule file: TOML in, a validated :class:`~realtime.databases.rules.RuleSet`
out (the rules themselves, and what they decide, are :mod:`realtime.databases.rules`).

The file is TOML (read with :mod:`tomllib`), named by ``REALTIME_CONFIG`` / ``--config``.
One table per followed database::

    [databases.notes]
    users  = ["owner", "members"]     # fields naming users who may read
    roles  = ["readers"]              # fields naming roles: any user holding one may read
    public = false                    # true: every authenticated user may read every doc
    hidden = ["secret", "acl.internal"]   # fields removed before a doc leaves the server
    access = "myapp.rules:notes"      # optional callable doc -> principals; replaces
                                      # users / roles / public
    push   = "all"                    # or "subscribed" (only to db:/doc: subscribers)
    write  = ["owner"]                # fields naming users who may write (document writes)
    fields = ["title", "body"]        # the fields a client may set
    owner  = "owner"                  # doc.create sets this field to the creating user

Validation (user-facing; also in ``docs/databases.rst``):

- Any problem raises one :class:`RuleFileError` whose text names the file, the
  table and the key (``rules.toml: [databases.notes] users: must be a string or a list of
  strings``); the server prints that one line and exits non-zero.  Unknown keys are
  errors (a typo must not silently open or close a database).  Database names follow
  CouchDB's rule (``^[a-z][a-z0-9_$()+/-]*$``), which also keeps ``_users`` and every
  system database out.
- ``access`` (``"module:callable"``, dots allowed in both parts) is imported here, when
  the file is loaded; a path that does not import, or names nothing callable, is an error.
- ``write`` and ``fields`` go together (one without the other is an error); ``fields``
  are top-level field names, none starting with ``_``; ``owner`` is one path and needs
  ``write``; ``access`` replaces ``users``, ``roles`` and ``public`` (giving both is an
  error).

API: :func:`load_rules(path) <load_rules>` / :func:`parse_rules(text, source)
<parse_rules>` -> :class:`~realtime.databases.rules.RuleSet`; :class:`RuleFileError`.
The only I/O is reading the file and importing ``access`` callables.
"""

from __future__ import annotations

import importlib
import re
import tomllib
from typing import Callable, Optional, Tuple

from realtime.databases.rules import PUSH_ALL, PUSH_SUBSCRIBED, DatabaseRule, Path, RuleSet

#: CouchDB's rule for database names (system databases start with ``_``: never followed
#: through a rule table; ``_users`` has its own routing).
DB_NAME = re.compile(r"^[a-z][a-z0-9_$()+/-]*$")

#: keys a ``[databases.NAME]`` table may hold
TABLE_KEYS = ("users", "roles", "public", "hidden", "access", "push", "write", "fields",
              "owner")

#: top-level keys of the file
TOP_LEVEL_KEYS = ("databases",)


class RuleFileError(ValueError):
    """The rule file cannot be used.  The text is one line naming file, table and key."""


def load_rules(path: str) -> RuleSet:
    """Read and validate a rule file; raises :class:`RuleFileError` (one line)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise RuleFileError(f"{path}: cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RuleFileError(f"{path}: not UTF-8 text") from None
    return parse_rules(text, path)


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Parse and validate the text of a rule file (``source`` names it in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RuleFileError(f"{source}: not valid TOML: {_one_line(str(e))}") from None
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise RuleFileError(f"{source}: unknown top-level key {key!r} "
                                f"(expected [databases.NAME] tables)")
    databases = data.get("databases", {})
    if not isinstance(databases, dict):
        raise RuleFileError(f"{source}: databases: must be a table of [databases.NAME] tables")
    rules = {}
    for db, table in databases.items():
        rules[db] = _parse_table(source, db, table)
    return RuleSet(rules, source)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _Where:
    def __init__(self, source: str, db: str):
        self.source = source
        self.db = db

    def error(self, key: Optional[str], problem: str) -> RuleFileError:
        where = f"{self.source}: [databases.{self.db}]"
        if key is not None:
            where += f" {key}"
        return RuleFileError(f"{where}: {problem}")


def _parse_table(source: str, db: str, table) -> DatabaseRule:
    where = _Where(source, db)
    if not DB_NAME.match(db):
        raise where.error(None, "not a CouchDB database name (lower case letter first, then "
                                "a-z 0-9 _ $ ( ) + - /)")
    if not isinstance(table, dict):
        raise where.error(None, "must be a table")
    for key in table:
        if key not in TABLE_KEYS:
            raise where.error(key, f"unknown key (known: {', '.join(TABLE_KEYS)})")
    users = _paths(where, table, "users")
    roles = _paths(where, table, "roles")
    hidden = _paths(where, table, "hidden")
    write = _paths(where, table, "write")
    public = table.get("public", False)
    if not isinstance(public, bool):
        raise where.error("public", "must be true or false")
    push = table.get("push", PUSH_ALL)
    if push not in (PUSH_ALL, PUSH_SUBSCRIBED):
        raise where.error("push", f'must be "{PUSH_ALL}" or "{PUSH_SUBSCRIBED}"')
    access, access_name = None, None
    if "access" in table:
        for other in ("users", "roles", "public"):
            if other in table:
                raise where.error("access", f"replaces users, roles and public: give "
                                            f"access or {other}, not both")
        access_name = table["access"]
        access = _import_access(where, access_name)
    fields = _field_names(where, table)
    if write and not fields:
        raise where.error("write", "needs fields (the fields a client may set)")
    if fields and not write:
        raise where.error("fields", "needs write (the fields naming users who may write)")
    owner = None
    if "owner" in table:
        owner_paths = table["owner"]
        if not isinstance(owner_paths, str):
            raise where.error("owner", "must be a string (one field)")
        owner = _path(where, "owner", owner_paths)
        if not write:
            raise where.error("owner", "needs write and fields (document writes)")
    return DatabaseRule(db=db, users=users, roles=roles, public=public, hidden=hidden,
                        access=access, access_name=access_name, push=push, write=write,
                        fields=fields, owner=owner)


def _path(where: _Where, key: str, text) -> Path:
    if not isinstance(text, str) or not text:
        raise where.error(key, "must be a string or a list of strings, none empty")
    parts = tuple(text.split("."))
    if any(not part for part in parts):
        raise where.error(key, f"{text!r} is not a dotted path (an empty segment)")
    return parts


def _paths(where: _Where, table: dict, key: str) -> Tuple[Path, ...]:
    value = table.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise where.error(key, "must be a string or a list of strings")
    return tuple(_path(where, key, item) for item in value)


def _field_names(where: _Where, table: dict) -> Tuple[str, ...]:
    value = table.get("fields", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise where.error("fields", "must be a string or a list of strings")
    for item in value:
        if not isinstance(item, str) or not item:
            raise where.error("fields", "must be a string or a list of strings, none empty")
        if item.startswith("_"):
            raise where.error("fields", f"{item!r}: fields starting with _ belong to CouchDB")
    return tuple(value)


def _import_access(where: _Where, name) -> Callable:
    if not isinstance(name, str) or name.count(":") != 1:
        raise where.error("access", 'must be "module:callable"')
    module_name, attribute = name.split(":")
    if not module_name or not attribute:
        raise where.error("access", 'must be "module:callable"')
    try:
        target = importlib.import_module(module_name)
    except Exception as e:
        raise where.error("access", f"cannot import {module_name}: "
                                    f"{type(e).__name__}: {_one_line(str(e))}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise where.error("access", f"{module_name} has no {attribute}") from None
    if not callable(target):
        raise where.error("access", f"{name} is not callable")
    return target
