"""
Who may subscribe to, publish on, and read what: every such decision in one place.

Topics (:func:`may_subscribe`, decided from the identity alone):

- ``user:<id>``: that user only;
- ``public:<name>``: any authenticated user;
- a topic granted by the JWT ``topics`` claim (:attr:`Identity.topics`): an exact name, or
  ``prefix*`` for every topic starting with ``prefix`` (``*`` alone grants every topic);
- the database topics ``doc:<db>/<docid>`` and ``db:<db>`` are never opened by a grant:
  they are decided by the document access rules, against CouchDB, at subscribe time
  (:func:`may_read_document`, used by :mod:`realtime.databases.application`).  A grant
  of ``*`` does not open them: a subscription is what tells a client that a document
  changed or was removed, so it must never exist for a document the user may not read.

Publishing (:func:`may_publish`): wherever the client may subscribe, except database
topics, which only the gateway writes to (a client cannot forge document changes).

Documents (:func:`may_read_document`): the database's rule gives the readers of the
revision (principals), matched with the roles the connection holds now; an ``access``
callable that fails means no.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

from realtime.databases.rules import AccessRuleFailed, DatabaseRule, may_read
from realtime.vocabulary import DB_PREFIX, DOC_PREFIX, PUBLIC_PREFIX, USER_PREFIX


def grant_matches(grant: str, topic: str) -> bool:
    """A ``topics`` claim entry: an exact name, or ``prefix*``."""
    if grant.endswith("*"):
        return topic.startswith(grant[:-1])
    return grant == topic


def is_database_topic(topic: str) -> bool:
    return topic.startswith(DOC_PREFIX) or topic.startswith(DB_PREFIX)


def may_subscribe(identity, topic: str) -> bool:
    """May this authenticated identity subscribe to a valid, non-database ``topic``?"""
    if identity is None or is_database_topic(topic):
        return False
    if topic.startswith(USER_PREFIX) and topic[len(USER_PREFIX):] == identity.user_id:
        return True
    if topic.startswith(PUBLIC_PREFIX) and len(topic) > len(PUBLIC_PREFIX):
        return True
    return any(grant_matches(grant, topic) for grant in identity.topics)


def may_publish(identity, topic: str) -> bool:
    """Where the client may subscribe, except database topics (never published to)."""
    return not is_database_topic(topic) and may_subscribe(identity, topic)


def may_read_document(rule: DatabaseRule, doc, user_id: str, roles) -> bool:
    """Whether the user, with these roles, may read this revision of a document."""
    try:
        readers = rule.readers(doc)
    except AccessRuleFailed:
        return False
    return may_read(readers, user_id, roles)


def parse_database_topic(topic: str, databases: Iterable[str]
                         ) -> Optional[Tuple[str, str, Optional[str]]]:
    """
    ``("doc", db, docid)`` or ``("db", db, None)`` for a database topic naming a followed
    database, None otherwise.  CouchDB database names may hold ``/``: the longest followed
    database name that fits wins (``doc:a/b/c`` with databases ``a`` and ``a/b`` is
    document ``c`` of ``a/b``).
    """
    if topic.startswith(DB_PREFIX):
        db = topic[len(DB_PREFIX):]
        return ("db", db, None) if db in set(databases) else None
    if not topic.startswith(DOC_PREFIX):
        return None
    rest = topic[len(DOC_PREFIX):]
    best = None
    for db in databases:
        if rest.startswith(db + "/") and len(rest) > len(db) + 1:
            if best is None or len(db) > len(best):
                best = db
    if best is None:
        return None
    return ("doc", best, rest[len(best) + 1:])
