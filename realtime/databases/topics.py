"""
The vocabulary of the application databases: their topics (``doc:<db>/<id>``,
``db:<db>``), a ``db:`` subscription's :class:`Selection`, and the ``doc-change`` message,
shared by the routing, the subscriptions and the replay.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

from realtime.vocabulary import DB_PREFIX, DOC_PREFIX

DOC_TOPIC_PREFIX = DOC_PREFIX
DB_TOPIC_PREFIX = DB_PREFIX

DOC_CHANGE = "doc-change"


def doc_topic(db: str, doc_id: str) -> str:
    return f"{DOC_TOPIC_PREFIX}{db}/{doc_id}"


def db_topic(db: str) -> str:
    return DB_TOPIC_PREFIX + db


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


class Selection:
    """A ``db:`` subscription's selector, and the ids it has given (bounded)."""

    __slots__ = ("selector", "matched", "pending")
    MAX_MATCHED = 100_000

    def __init__(self, selector):
        self.selector = selector
        self.matched = _BoundedSet(self.MAX_MATCHED)
        self.pending = True  # until subscribed (the snapshot is being read)


class _BoundedSet(set):
    """A set that stops growing at ``limit`` (beyond it, ``removed`` ``selector`` may be
    missed for the documents it could not hold; memory stays bounded)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def add(self, item) -> None:
        if len(self) < self.limit:
            super().add(item)


def selection_of(conn, db: str):
    """The connection's selector subscription to ``db:<db>``, if any (and still held)."""
    selections = conn.selections
    if not selections or db not in selections:
        return None
    if not selections[db].pending and db_topic(db) not in conn.topics:
        del selections[db]  # unsubscribed since
        return None
    return selections[db]


def is_internal(doc_id: str) -> bool:
    return doc_id.startswith("_design/") or doc_id.startswith("_local/")


def change_rev(change: dict) -> Optional[str]:
    doc = change.get("doc")
    if isinstance(doc, dict) and isinstance(doc.get("_rev"), str):
        return doc["_rev"]
    changes = change.get("changes")
    if isinstance(changes, list) and changes and isinstance(changes[0], dict):
        rev = changes[0].get("rev")
        if isinstance(rev, str):
            return rev
    return None


def doc_change_message(db: str, doc_id: str, rev: str, seq, timestamp: str, *,
                       doc: Optional[dict] = None, deleted: bool = False,
                       removed: bool = False, snapshot: bool = False) -> dict:
    """A ``doc-change`` message, its keys in the documented order."""
    message = {"type": DOC_CHANGE, "db": db, "id": doc_id, "rev": rev, "seq": seq}
    if deleted:
        message["deleted"] = True
    elif removed:
        message["removed"] = True
    else:
        message["doc"] = doc
    if snapshot:
        message["snapshot"] = True
    message["timestamp"] = timestamp
    return message
