"""
The rules of the application databases: which are followed, and who may read (and write)
their documents.

The rule file (TOML, named by ``REALTIME_CONFIG`` / ``--config``; one
``[databases.NAME]`` table per followed database) is read and validated by
:mod:`realtime.databases.rulefile`; this module holds what it becomes and what the rules
decide.

Decisions (user-facing; also in ``docs/databases.rst``):

- **Paths.**  ``users``, ``roles``, ``hidden``, ``write`` and ``owner`` name fields by
  dotted paths (``acl.readers``): each segment reaches into an object.  When a value on
  the way is a list, the path continues into each object of the list
  (``members.name`` over ``{"members": [{"name": "a"}, {"name": "b"}]}`` names a and b).
  A field naming users or roles may hold a string or a list of strings; anything else
  (numbers, objects, empty strings, a missing field) names nobody.  Each key takes a list
  of paths or a single path string.
- **Principals.**  The readers of a document are a frozenset of principals:
  ``"user:NAME"``, ``"role:NAME"`` and ``"public"`` (every authenticated user).  They are
  what the readers index stores: a user is matched against them with the roles the user
  holds *now* (:func:`may_read`), so a role granted or taken away applies to every
  document at once, without touching the index.
- **access.**  ``"module:callable"`` (dots allowed in both parts: ``pkg.mod:Class.fn``),
  imported when the file is loaded.  It is called with the document (a copy: it cannot
  change what is sent) and returns an iterable of principals; it replaces ``users``,
  ``roles`` and ``public`` (giving both is an error).  A result that is not an iterable of
  valid principals, or an exception, raises :class:`AccessRuleFailed`: the caller treats
  that revision as readable by nobody (never as readable by everyone).
- **Admins.**  Nothing special: ``_admin`` is a role like any other, so an admin reads a
  document only when a rule names that role (or the user).
- **hidden.**  Removed from every document that leaves the server, at any depth (through
  lists of objects too).  The document's ``_revisions`` / ``_revs_info`` (present when the
  gateway read it with ``?revs=true``) are removed as well.
- **Writes** (``write``, ``fields``, ``owner``) are validated with the file and used by
  :mod:`realtime.databases.writes`.

API (pure: no I/O):

- :class:`RuleSet` (a mapping db -> :class:`DatabaseRule`);
- :meth:`DatabaseRule.readers` (doc -> principals), :func:`may_read` (principals, user,
  roles -> bool), :meth:`DatabaseRule.sanitise` (doc -> copy without hidden fields),
  :meth:`DatabaseRule.writers` (doc -> principals of users who may write),
  :meth:`DatabaseRule.may_write`, :func:`principals_of` (a user's own principals).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, Mapping, Optional, Tuple

PUBLIC = "public"
USER = "user:"
ROLE = "role:"

PUSH_ALL = "all"
PUSH_SUBSCRIBED = "subscribed"

#: metadata CouchDB adds when asked (``?revs=true``, ``?revs_info=true``): never sent on
_META_REMOVED = ("_revisions", "_revs_info")

Path = Tuple[str, ...]
Principals = FrozenSet[str]

NOBODY: Principals = frozenset()


class AccessRuleFailed(Exception):
    """An ``access`` callable raised, or returned something that is not principals."""


# -- principals ---------------------------------------------------------------------------

def user_principal(name: str) -> str:
    return USER + name


def role_principal(name: str) -> str:
    return ROLE + name


def principals_of(user_id: str, roles: Iterable[str]) -> Principals:
    """Every principal a user holds: ``public``, ``user:<id>`` and one ``role:`` per role."""
    return frozenset((PUBLIC, USER + user_id, *(ROLE + role for role in roles)))


def may_read(principals: Principals, user_id: str, roles: Iterable[str]) -> bool:
    """
    Whether a user with these (current) roles is one of ``principals`` (the readers of a
    revision).  ``public`` means any authenticated user.
    """
    if not principals:
        return False
    if PUBLIC in principals or USER + user_id in principals:
        return True
    return any(ROLE + role in principals for role in roles)


def valid_principal(value) -> bool:
    if not isinstance(value, str):
        return False
    if value == PUBLIC:
        return True
    for prefix in (USER, ROLE):
        if value.startswith(prefix) and len(value) > len(prefix):
            return True
    return False


# -- paths --------------------------------------------------------------------------------

def values_at(doc, path: Path) -> Iterator[Any]:
    """Every value a dotted path reaches in ``doc`` (into objects, and across lists)."""
    if not path:
        yield doc
        return
    if isinstance(doc, dict):
        if path[0] in doc:
            yield from values_at(doc[path[0]], path[1:])
    elif isinstance(doc, list):
        for item in doc:
            if isinstance(item, dict):
                yield from values_at(item, path)


def names_at(doc, path: Path) -> Iterator[str]:
    """The non-empty strings a field holds (a string, or the strings of a list)."""
    for value in values_at(doc, path):
        if isinstance(value, str):
            if value:
                yield value
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str) and item:
                    yield item


def _add_names(found: set, prefix: str, doc: dict, path: Path) -> None:
    """Add ``prefix + name`` for each name the field at ``path`` holds."""
    if len(path) == 1:  # the common case, without the generators
        value = doc.get(path[0])
        if isinstance(value, str):
            if value:
                found.add(prefix + value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str) and item:
                    found.add(prefix + item)
        return
    for name in names_at(doc, path):
        found.add(prefix + name)


def without_paths(value, paths: Tuple[Path, ...]):
    """A copy of ``value`` without the given paths (depth-first; lists crossed)."""
    if not paths:
        return value
    if isinstance(value, list):
        return [without_paths(item, paths) if isinstance(item, (dict, list)) else item
                for item in value]
    if not isinstance(value, dict):
        return value
    here = {path[0] for path in paths if len(path) == 1}
    deeper: Dict[str, list] = {}
    for path in paths:
        if len(path) > 1:
            deeper.setdefault(path[0], []).append(path[1:])
    out = {}
    for key, item in value.items():
        if key in here:
            continue
        rest = deeper.get(key)
        out[key] = without_paths(item, tuple(rest)) if rest else item
    return out


# -- the rule of one database ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DatabaseRule:
    """The rule of one followed database (see the module docstring)."""

    db: str
    users: Tuple[Path, ...] = ()
    roles: Tuple[Path, ...] = ()
    public: bool = False
    hidden: Tuple[Path, ...] = ()
    access: Optional[Callable[[dict], Iterable[str]]] = None
    access_name: Optional[str] = None
    push: str = PUSH_ALL
    write: Tuple[Path, ...] = ()
    fields: Tuple[str, ...] = ()
    owner: Optional[Path] = None

    def __post_init__(self):
        # sanitise's fast path: the top-level names to drop (revision metadata included)
        # when no hidden path goes deeper; None otherwise
        top = None
        if all(len(path) == 1 for path in self.hidden):
            top = frozenset(path[0] for path in self.hidden) | frozenset(_META_REMOVED)
        object.__setattr__(self, "_hidden_top", top)

    def readers(self, doc) -> Principals:
        """
        The principals who may read this revision.  A deletion (``_deleted``) or a missing
        document has no readers.  Raises :class:`AccessRuleFailed` when ``access`` fails.
        """
        if not isinstance(doc, dict) or doc.get("_deleted"):
            return NOBODY
        if self.access is not None:
            return self._call_access(doc)
        if self.public:
            return frozenset((PUBLIC,))
        found: set = set()
        for path in self.users:
            _add_names(found, USER, doc, path)
        for path in self.roles:
            _add_names(found, ROLE, doc, path)
        return frozenset(found) if found else NOBODY

    def _call_access(self, doc: dict) -> Principals:
        try:
            result = self.access(copy.deepcopy(doc))
            principals = frozenset(result)
        except Exception as e:
            raise AccessRuleFailed(f"{self.access_name} raised {type(e).__name__}") from e
        for value in principals:
            if not valid_principal(value):
                raise AccessRuleFailed(
                    f"{self.access_name} returned {value!r}: principals are 'user:NAME', "
                    "'role:NAME' or 'public'")
        return principals

    def sanitise(self, doc: dict) -> dict:
        """A copy of ``doc`` as it may leave the server: hidden fields (at any depth) and
        revision metadata removed."""
        if self._hidden_top is not None:  # every hidden path is a top-level field
            hidden = self._hidden_top
            return {key: value for key, value in doc.items() if key not in hidden}
        out = without_paths(doc, self.hidden) if self.hidden else dict(doc)
        for key in _META_REMOVED:
            out.pop(key, None)
        return out

    # sanitize: the spelling of the rest of the code base (realtime.feeds' users routing)
    sanitize = sanitise

    def may_read(self, doc, user_id: str, roles: Iterable[str]) -> bool:
        """Whether the user, with these roles, may read this revision (an ``access``
        callable that fails means no)."""
        try:
            readers = self.readers(doc)
        except AccessRuleFailed:
            return False
        return may_read(readers, user_id, roles)

    def writers(self, doc) -> Principals:
        """``user:NAME`` principals of the users named in ``write`` fields of ``doc``."""
        if not isinstance(doc, dict) or doc.get("_deleted"):
            return NOBODY
        return frozenset(USER + name for path in self.write for name in names_at(doc, path))

    def may_write(self, doc, user_id: str) -> bool:
        """Whether ``user_id`` is named in a ``write`` field of ``doc``."""
        return USER + user_id in self.writers(doc)

    @property
    def writable(self) -> bool:
        """Whether clients may write documents of this database through the gateway."""
        return bool(self.write) and bool(self.fields)

    @property
    def push_all(self) -> bool:
        return self.push == PUSH_ALL

    def describe(self) -> dict:
        """A JSON-able summary (for status and logs): no callable objects."""
        return {
            "users": [".".join(p) for p in self.users],
            "roles": [".".join(p) for p in self.roles],
            "public": self.public,
            "hidden": [".".join(p) for p in self.hidden],
            "access": self.access_name,
            "push": self.push,
            "writable": self.writable,
        }


class RuleSet(Mapping[str, DatabaseRule]):
    """The rules of every followed application database, by database name."""

    def __init__(self, rules: Mapping[str, DatabaseRule] = (), source: Optional[str] = None):
        self._rules = dict(rules)
        self.source = source

    def __getitem__(self, db: str) -> DatabaseRule:
        return self._rules[db]

    def __iter__(self):
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"RuleSet({sorted(self._rules)!r}, source={self.source!r})"


EMPTY = RuleSet()


# -- parsing -----------------------------------------------------------------------------
