"""
Roles a user lost while away, for ``resume`` (:mod:`realtime.feeds.replay`): the documents
they opened are ``removed`` in the replay, as they would have been live
(:meth:`realtime.databases.application.ApplicationDatabases.roles_changed`).

A client that was connected while its user held a role (``staff``) and comes back after the
user's ``_users`` document dropped it has documents that only that role opened.  Those
documents may not have changed at all while the client was away, so the changes since its
``seq`` do not name them; and those that did change were readable, before, only through the
role.  So:

- **Former roles.** When ``since`` names ``_users`` and the user's own document
  (``org.couchdb.user:NAME``) changed after that position, the roles of its previous
  revision (read back from CouchDB) that the connection does not hold now are the user's
  *former roles*.  Only the previous one: its latest revision came after ``since``, so the
  previous one was the user's at some moment since then (at ``since``, or later), and the
  documents unchanged since ``since`` were as they are now at that moment: the user could
  read them.  An older revision may predate ``since``, and a document written after the
  user lost that role (still before ``since``) was never theirs: its id must not be told.
  (So a role held at ``since`` and dropped in the second of two changes while away is not
  known: nothing is sent of it.)  Without ``_users`` in ``since`` (the JavaScript client
  always sends it: it keeps every ``seqs`` entry), or when the document did not change
  after it, there are none: a role lost before the client's position was told to it then
  (live), and is not told again.
- **Changed documents.** An earlier revision is judged with the current roles and the
  former ones: one the user could read through a former role makes a ``removed``.
- **Unchanged documents.** After the replay of a database, the documents whose role fields
  name a former role are found with CouchDB's ``_find`` (a selector built from the rule's
  ``roles`` paths, objects and lists alike); each one the user may not read now, but could
  with its former roles, and that the replay did not already give, is ``removed`` (at its
  current revision, ``seq`` the replay's ``until``).  A rule with an ``access`` function
  names no fields, so these cannot be found: each such resume counts one ``undecidable``
  and nothing is sent (the documentation says so); so does a ``_find`` that fails (the
  replay is still recovered).  At most :data:`MAX_FOUND` documents are read.

Nobody learns of a document that they could not read at some point: a ``removed`` is only
ever for a revision readable with roles the user's own document gave them.
"""

from __future__ import annotations

from typing import Iterable, List, Tuple

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from realtime.databases.routing import change_rev, doc_change_message, is_internal
from realtime.feeds.couchreads import CouchUnavailable, SeqRefused
from realtime.feeds.routing import USER_PREFIX, USERS_DB

_log = Logger()

#: documents read by ``_find`` for one database and one resume, at most
MAX_FOUND = 10_000

#: earlier revisions read back to decide ``removed`` / ``deleted`` for a document the user
#: may not read now, and to find a user's former roles
ANCESTORS_READ = 3


def ancestors(doc: dict):
    """The revisions before ``doc``'s, newest first, from its ``_revisions`` (the last
    :data:`ANCESTORS_READ`)."""
    revisions = doc.get("_revisions")
    if not isinstance(revisions, dict):
        return []
    start, ids = revisions.get("start"), revisions.get("ids")
    if not isinstance(start, int) or not isinstance(ids, list):
        return []
    return [f"{start - i}-{rev_id}" for i, rev_id in enumerate(ids)
            if i > 0 and isinstance(rev_id, str)][:ANCESTORS_READ]


def _revisions(answer: dict) -> List[dict]:
    """Every revision body of a ``_bulk_get`` answer (several per id when asked)."""
    out = []
    for result in answer.get("results") or ():
        for doc in (result.get("docs") or ()) if isinstance(result, dict) else ():
            ok = doc.get("ok") if isinstance(doc, dict) else None
            if isinstance(ok, dict):
                out.append(ok)
    return out


def _role_names(doc: dict) -> set:
    roles = doc.get("roles")
    if not isinstance(roles, list):
        return set()
    return {role for role in roles if isinstance(role, str) and role}


@inlineCallbacks
def former_roles(reader, conn, since_users):
    """The roles the user's ``_users`` document gave before it changed after
    ``since_users`` (a seq already checked, or None: none), that the connection does not
    hold now: a frozenset (see the module docstring); none when CouchDB cannot tell."""
    if since_users is None:
        return frozenset()
    try:
        return (yield _former_roles(reader, conn.user_id, since_users, conn.roles))
    except (CouchUnavailable, SeqRefused) as e:
        _log.warn("resume: the user's former roles are unknown ({error})",
                  error=type(e).__name__)
        return frozenset()


@inlineCallbacks
def _former_roles(reader, user_id: str, since_users, roles_now: Iterable[str]):
    doc_id = USER_PREFIX + user_id
    answer = yield reader.changes(USERS_DB, since_users, 1, include_docs=False,
                                  doc_ids=[doc_id])
    changes = [c for c in answer.get("results") or ()
               if isinstance(c, dict) and c.get("id") == doc_id]
    if not changes or change_rev(changes[-1]) is None:
        return frozenset()
    current = _revisions((yield reader.bulk_get(
        USERS_DB, [(doc_id, change_rev(changes[-1]))], revs=True)))
    chain = ancestors(current[0])[:1] if current else []
    if not chain:
        return frozenset()
    earlier = _revisions((yield reader.bulk_get(USERS_DB, [(doc_id, chain[0])])))
    held = set()
    for doc in earlier:
        held |= _role_names(doc)
    return frozenset(held - set(roles_now))


def role_selectors(path: Tuple[str, ...], role: str) -> List[dict]:
    """Mango selectors matching a document whose field at ``path`` names ``role`` (a
    string or a list holding it), each step of the path an object or a list of them."""
    if len(path) == 1:
        return [{path[0]: role}, {path[0]: {"$elemMatch": {"$eq": role}}}]
    out = []
    for inner in role_selectors(path[1:], role):
        (key, value), = inner.items()
        out.append({f"{path[0]}.{key}": value})
        out.append({path[0]: {"$elemMatch": inner}})
    return out


@inlineCallbacks
def send_removed(replay, reader, conn, former: frozenset, seen, until, send,
                 timestamp: str):
    """
    After the replay of one database (``replay``: its
    :class:`realtime.feeds.replay.AppDatabaseReplay`): ``send`` a ``removed`` for each
    document only ``former`` roles opened that the replay did not decide (``seen``: the
    ids its changes named).  Returns how many were sent.
    """
    if replay.rule.access is not None:
        replay.undecidable += 1  # an access function names no field to look for
        return 0
    try:
        messages = yield _removed(reader, replay.db, replay.rule, conn, former, seen, until,
                                  timestamp)
    except (CouchUnavailable, SeqRefused) as e:  # (a CouchDB without _find): not known
        _log.warn("resume of {db}: documents of former roles unknown ({error})",
                  db=replay.db, error=type(e).__name__)
        replay.undecidable += 1
        return 0
    sent = 0
    for message in messages:
        if not conn.still_open or not send(message):
            break
        sent += 1
    return sent


@inlineCallbacks
def _removed(reader, db: str, rule, conn, former: frozenset, seen, until, timestamp: str):
    selectors = [s for path in rule.roles for role in sorted(former)
                 for s in role_selectors(path, role)]
    if not selectors:
        return []
    answer = yield reader.request("POST", reader.db_url(db) + "/_find",
                                  {"selector": {"$or": selectors}, "limit": MAX_FOUND})
    held = tuple(conn.roles) + tuple(former)
    out = []
    for doc in answer.get("docs") or ():
        if not isinstance(doc, dict):
            continue
        doc_id, rev = doc.get("_id"), doc.get("_rev")
        if not isinstance(doc_id, str) or is_internal(doc_id) or doc_id in seen or \
                not isinstance(rev, str):
            continue
        if rule.may_read(doc, conn.user_id, held) and \
                not rule.may_read(doc, conn.user_id, conn.roles):
            out.append(doc_change_message(db, doc_id, rev, until, timestamp, removed=True))
    return out
