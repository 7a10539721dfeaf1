"""
Document writes: the pure checks behind ``doc.create``, ``doc.update`` and ``doc.delete``.

No I/O here: :mod:`realtime.databases.writer` reads the current revision from CouchDB,
calls these checks, and writes.  Every refusal is a :class:`WriteRefused` carrying the
``error`` code the client gets.

Requests (client -> server), each with an optional ``ref`` (a string of at most 64
characters, echoed in the answer)::

    {"type": "doc.create", "db": D, "doc": {...}, "ref": R}
    {"type": "doc.update", "db": D, "id": I, "rev": V, "changes": {field: value}, "ref": R}
    {"type": "doc.delete", "db": D, "id": I, "rev": V, "ref": R}

Decisions:

- **Writable databases.**  Only a database whose rule has ``write`` and ``fields``
  (:attr:`DatabaseRule.writable`) takes writes; any other database name (unknown, or
  read-only) gets the same ``forbidden``.
- **Fields.**  ``fields`` are top-level field names (as the rule file defines them), and
  a change names a top-level field literally: ``"a.b"`` in ``changes`` is the field called
  ``a.b``, not a path (a change replaces a field's whole value; ``null`` stores ``null``,
  it does not remove the field).  A top-level field starting with ``_`` is ``invalid``
  (CouchDB's own: ``_rev``, ``_deleted``, ``_attachments``...), except ``_id`` in
  ``doc.create``; a field outside ``fields`` is ``forbidden``, and the error names it
  (``field``).  These checks need no document, so they come first: they tell a stranger
  nothing about any document.
- **Owner.**  ``doc.create`` sets the ``owner`` field to the writer's user id, whatever
  the client sent there (the client may send it; its value is replaced).  A dotted owner
  path (``meta.owner``) creates the objects on the way; a non-object on the way is
  ``invalid``.
- **Creating what you can write.**  The created document must name the writer in one of
  its ``write`` fields (the ``owner`` field does it when ``owner`` is one of them);
  otherwise ``forbidden``: a client cannot create a document it could not change or
  delete afterwards (nor one that only others may write, on their behalf).
- **Ids.**  Ids are strings of 1 to :data:`MAX_ID_LENGTH` characters.  ``_design/`` and
  ``_local/`` ids are ``forbidden`` (the gateway never writes them); any other id starting
  with ``_`` is ``invalid`` (CouchDB reserves them), and so are ``.`` and ``..`` (a URL
  normaliser between the gateway and CouchDB, a proxy, would turn ``/db/.`` into the
  database itself).  Without ``_id``, ``doc.create``
  derives the id from ``(db, user, ref, the document as sent)`` (:func:`derived_id`): a
  retried create with the same ``ref`` meets the document the first one wrote, and is
  answered ``doc.created`` again, with no second document (while that document is
  unchanged: see :mod:`realtime.databases.writer`).  With no ``ref`` either, the id is
  random (and a retry is not recognised).
- **Size.**  The document as written (the merged document for an update), as compact JSON
  without its ``_``-fields, is at most :data:`MAX_DOCUMENT_BYTES` (64 KiB); more is
  ``invalid``.  An update is measured without the rule's ``hidden`` fields (written by
  other means than the gateway): a writer who may not read them could otherwise find
  their length, from the size in the refusal or by growing a field of its own until
  refused.  The WebSocket message limit (1 MiB) bounds the request before that.
  Objects and lists nest at most :data:`MAX_DEPTH` levels deep (the document itself is
  level 1); deeper is ``invalid``: the gateway's own JSON and the checks are recursive,
  and a document it could not encode again would fail every reader's delivery.
- **Update and delete** are allowed when the writer is named in a ``write`` field of the
  *current* revision (read from CouchDB by the gateway).  A missing (or deleted) document
  and one the writer may not write get the same ``forbidden``, with the same text and no
  ``rev``: ids cannot be probed.  Only a writer of the current revision learns of a stale
  ``rev``: ``conflict`` with the current ``rev``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from typing import Any, Mapping, Optional, Tuple

from realtime import jsonutil
from realtime.databases.rules import DatabaseRule, Path

CREATE = "doc.create"
UPDATE = "doc.update"
DELETE = "doc.delete"
WRITE_TYPES = (CREATE, UPDATE, DELETE)

#: the answer to each request type
ANSWERS = {CREATE: "doc.created", UPDATE: "doc.updated", DELETE: "doc.deleted"}

#: error codes of refused writes
FORBIDDEN = "forbidden"
CONFLICT = "conflict"
INVALID = "invalid"
UNAVAILABLE = "unavailable"

MAX_REF_LENGTH = 64
MAX_ID_LENGTH = 256
MAX_REV_LENGTH = 128
#: the largest document a client may write, as compact JSON without its ``_`` fields
MAX_DOCUMENT_BYTES = 64 * 1024
#: the deepest nesting of objects and lists in a written document (the document is 1)
MAX_DEPTH = 64

RESERVED_PREFIXES = ("_design/", "_local/")

#: the one text for "missing" and "not yours": the two must not be told apart
NO_WRITE_RIGHT = "you may not write this document (or it does not exist)"

#: CouchDB fields kept from the current revision in an update (attachment stubs stay)
_KEPT_META = ("_id", "_rev", "_attachments")


class WriteRefused(Exception):
    """A refused write: ``code`` and ``message`` for the client, plus ``extra`` fields."""

    def __init__(self, code: str, message: str, **extra):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.extra = extra


@dataclasses.dataclass(frozen=True)
class WriteRequest:
    """A write request whose shape has been checked (:func:`parse_request`)."""

    kind: str  # CREATE, UPDATE or DELETE
    db: str
    ref: Optional[str] = None
    doc_id: Optional[str] = None  # given by the client (always, for update and delete)
    rev: Optional[str] = None
    doc: Optional[Mapping[str, Any]] = None  # create: the document as sent
    changes: Optional[Mapping[str, Any]] = None  # update


# -- the request's shape -------------------------------------------------------------------

def valid_ref(ref) -> Optional[str]:
    """The request's ``ref`` when it is one (a string of at most 64 characters), else None."""
    if isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH:
        return ref
    return None


def parse_request(message: Mapping[str, Any]) -> WriteRequest:
    """Check a request's shape (no rule, no document); raises ``invalid`` or ``forbidden``."""
    kind = message.get("type")
    if kind not in WRITE_TYPES:
        raise WriteRefused(INVALID, f"not a write request: {str(kind)[:40]!r}")
    ref = message.get("ref")
    if ref is not None and valid_ref(ref) is None:
        raise WriteRefused(INVALID, f"ref must be a string of at most {MAX_REF_LENGTH} "
                                    "characters")
    db = message.get("db")
    if not isinstance(db, str) or not db:
        raise WriteRefused(INVALID, "db must be a database name")
    if kind == CREATE:
        doc = message.get("doc")
        if not isinstance(doc, dict):
            raise WriteRefused(INVALID, "doc must be an object")
        doc_id = doc.get("_id")
        if doc_id is not None:
            check_id(doc_id)
        return WriteRequest(CREATE, db, ref, doc_id=doc_id, doc=doc)
    doc_id = message.get("id")
    check_id(doc_id)
    rev = message.get("rev")
    if not isinstance(rev, str) or not rev or len(rev) > MAX_REV_LENGTH:
        raise WriteRefused(INVALID, "rev must be the document's current revision (a string)")
    if kind == DELETE:
        return WriteRequest(DELETE, db, ref, doc_id=doc_id, rev=rev)
    changes = message.get("changes")
    if not isinstance(changes, dict) or not changes:
        raise WriteRefused(INVALID, "changes must be an object naming at least one field")
    return WriteRequest(UPDATE, db, ref, doc_id=doc_id, rev=rev, changes=changes)


def check_id(doc_id) -> None:
    if not isinstance(doc_id, str) or not doc_id:
        raise WriteRefused(INVALID, "id must be a non-empty string")
    if len(doc_id) > MAX_ID_LENGTH:
        raise WriteRefused(INVALID, f"id is longer than {MAX_ID_LENGTH} characters")
    if doc_id.startswith(RESERVED_PREFIXES):
        raise WriteRefused(FORBIDDEN, "design and local documents cannot be written "
                                      "through the gateway")
    if doc_id.startswith("_"):
        raise WriteRefused(INVALID, "an id must not start with _")
    if doc_id in (".", ".."):  # a URL normaliser on the way would make /db/.. of it /
        raise WriteRefused(INVALID, "an id must not be . or ..")


# -- the rule -------------------------------------------------------------------------------

def writable_rule(rules: Mapping[str, DatabaseRule], db: str) -> DatabaseRule:
    """The rule of a database that takes writes; ``forbidden`` for any other name."""
    rule = rules.get(db)
    if rule is None or not rule.writable:
        raise WriteRefused(FORBIDDEN, f"database {db[:64]!r} does not take writes "
                                      "through the gateway")
    return rule


def check_fields(rule: DatabaseRule, names, allowed_extra: Tuple[str, ...] = ()) -> None:
    """
    Every name is a field a client may set: ``invalid`` for a ``_`` field, ``forbidden``
    (naming it) for one outside ``fields``.  Checked in sorted order, so the field named
    does not depend on the client's key order.
    """
    allowed = set(rule.fields) | set(allowed_extra)
    ordered = sorted(names)
    for name in ordered:
        if name.startswith("_"):
            raise WriteRefused(INVALID, f"field {name[:64]!r}: fields starting with _ "
                                        "belong to CouchDB", field=name[:64])
    for name in ordered:
        if name not in allowed:
            raise WriteRefused(FORBIDDEN, f"field {name[:64]!r} may not be set by clients",
                               field=name[:64])


def check_depth(doc) -> None:
    """``invalid`` when objects and lists nest deeper than :data:`MAX_DEPTH` (iterative:
    a deep document cannot exhaust the stack here)."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise WriteRefused(INVALID, f"the document nests deeper than {MAX_DEPTH} "
                                        "levels of objects and lists")
        items = value.values() if isinstance(value, dict) else value
        stack.extend((item, depth + 1) for item in items if isinstance(item, (dict, list)))


def check_size(doc: Mapping[str, Any]) -> None:
    check_depth(doc)
    body = {key: value for key, value in doc.items() if not key.startswith("_")}
    size = len(jsonutil.dumps(body))
    if size > MAX_DOCUMENT_BYTES:
        # the size itself is not told: a writer who may not read the document would
        # learn from it how much the document holds
        raise WriteRefused(INVALID, f"the document would be over {MAX_DOCUMENT_BYTES} "
                                    "bytes, the most that may be written")


def check_request(rule: DatabaseRule, request: WriteRequest) -> None:
    """The checks that need the rule but no document (fields of a create or update)."""
    if request.kind == CREATE:
        names = [key for key in request.doc if key != "_id"]
        extra = (rule.owner[0],) if rule.owner is not None and len(rule.owner) == 1 else ()
        check_fields(rule, names, allowed_extra=extra)
    elif request.kind == UPDATE:
        check_fields(rule, list(request.changes))


# -- create -----------------------------------------------------------------------------------

def derived_id(db: str, user_id: str, ref: str, doc: Mapping[str, Any]) -> str:
    """
    The id of a created document when the client gives none but a ``ref``: a hash of
    (db, user, ref, the document as sent), 32 hex characters like CouchDB's own uuids.
    A retry of the same request meets the same id; another document sent with a reused
    ref (a client that restarted its counter) gets another id.
    """
    canonical = jsonutil.dumps([db, user_id, ref, _canonical(doc)])
    return hashlib.sha256(b"realtime-doc-create\0" + canonical).hexdigest()[:32]


def _canonical(value):
    if isinstance(value, dict):
        return [[key, _canonical(value[key])] for key in sorted(value)]
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    return value


def random_id() -> str:
    return uuid.uuid4().hex


def new_document(rule: DatabaseRule, user_id: str, request: WriteRequest) -> Tuple[str, dict, bool]:
    """
    The document to create: ``(id, body, derived)``, ``derived`` telling whether the id
    came from :func:`derived_id` (so that an existing document with it is this very
    create, retried).  Raises :class:`WriteRefused`.
    """
    check_request(rule, request)
    body = {key: value for key, value in request.doc.items() if key != "_id"}
    if rule.owner is not None:
        body = set_path(body, rule.owner, user_id)
    check_size(body)
    if not rule.may_write(body, user_id):
        raise WriteRefused(FORBIDDEN, "the new document would not name you in a write field "
                                      f"({', '.join('.'.join(p) for p in rule.write)})")
    if request.doc_id is not None:
        return request.doc_id, body, False
    if request.ref is not None:
        return derived_id(request.db, user_id, request.ref, request.doc), body, True
    return random_id(), body, False


def set_path(doc: dict, path: Path, value) -> dict:
    """A copy of ``doc`` with ``value`` at ``path``, creating objects on the way."""
    out = dict(doc)
    here = out
    for depth, key in enumerate(path[:-1]):
        inner = here.get(key)
        if inner is None:
            inner = {}
        elif not isinstance(inner, dict):
            raise WriteRefused(INVALID, f"field {'.'.join(path[:depth + 1])!r} must be an "
                                        "object (it holds the owner)")
        else:
            inner = dict(inner)
        here[key] = inner
        here = inner
    here[path[-1]] = value
    return out


def same_content(current: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether a stored document holds exactly ``body`` (its ``_`` fields aside)."""
    stored = {key: value for key, value in current.items() if not key.startswith("_")}
    return stored == dict(body)


# -- update and delete --------------------------------------------------------------------------

def check_write_right(rule: DatabaseRule, user_id: str, current) -> None:
    """``forbidden`` unless ``current`` is a live document naming the user in ``write``."""
    if not isinstance(current, dict) or current.get("_deleted") or \
            not rule.may_write(current, user_id):
        raise WriteRefused(FORBIDDEN, NO_WRITE_RIGHT)


def check_rev(current: Mapping[str, Any], rev: str) -> None:
    """``conflict`` with the current rev (call only for a writer: the rev is revealed)."""
    if current.get("_rev") != rev:
        raise WriteRefused(CONFLICT, "the document has changed since that revision",
                           rev=current.get("_rev"))


def updated_document(rule: DatabaseRule, user_id: str, current, request: WriteRequest) -> dict:
    """The revision to write for an update, after every check; raises WriteRefused."""
    check_request(rule, request)
    check_write_right(rule, user_id, current)
    check_rev(current, request.rev)
    body = {key: value for key, value in current.items()
            if not key.startswith("_") or key in _KEPT_META}
    body.update(request.changes)
    check_size(rule.sanitise(body))  # hidden fields: not measured (see the docstring)
    return body


def check_delete(rule: DatabaseRule, user_id: str, current, request: WriteRequest) -> None:
    check_write_right(rule, user_id, current)
    check_rev(current, request.rev)
