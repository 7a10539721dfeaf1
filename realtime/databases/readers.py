"""
Who could read the revision before: the readers index, and CouchDB as its fallback.

To tell a user ``removed`` (or ``deleted``), the gateway must know who could read the
document before the change.  CouchDB's ``_changes`` gives only the new revision.

Decision:

- **The index** (:class:`ReadersIndex`, one per followed database, per process): doc id
  -> (rev, principals) of the revision of that document the gateway last routed.  That is
  exactly who was told about the document (who got ``doc-change`` with it), which is what
  "who could read the previous revision" must mean when CouchDB folds several quick
  updates into one change.  Principals are stored, not users: a user is matched with the
  roles held at the time of the change.  Each process keeps its own: every process follows
  every feed itself, in order, so no process needs another's index, and there is nothing
  to keep consistent across processes (and no Redis round trip per change).
- **The fallback** (:class:`CouchRevisions`), when the index does not know the document
  (after a restart, a document not changed since the process started, or evicted from a
  full index): ``GET /db/id?rev=NEW&revs=true`` gives the revision's ancestry, then
  ``GET /db/id?rev=PARENT`` the previous revision, whose readers the rule computes.  A
  first revision (``1-…``) has no previous one and costs nothing.  The fallback needs the
  body of the previous revision: CouchDB keeps it until the database is compacted.
- **Undecidable**: the index does not know the document and CouchDB no longer has the
  previous revision (compacted, purged, or CouchDB did not answer within the timeout).
  The gateway then does not know who lost access; it tells nobody ``removed`` (or
  ``deleted``) except the connections subscribed to ``doc:<db>/<id>`` (they were allowed
  to read it when they subscribed, and know the id), and counts the case in
  ``realtime_db_undecidable_total{db}``.  Not leaking wins over telling.  It can only
  happen for a document's first change seen by a process whose index does not hold it.
- **Memory**: the index is bounded (``REALTIME_READERS_INDEX_SIZE`` entries per database,
  least recently changed evicted first); equal principal sets are shared (interned), so a
  database whose documents name few distinct reader sets costs about one dict entry per
  document.  ``benchmarks/readers_index.py`` measures the bytes per document and the cost
  per change.
- **Roles**: the index also keeps, for each ``role:`` principal, the ids of the documents
  it opens, so that a role taken away from a connected user can be answered with
  ``removed`` for those documents (``docs_opened_by``).

The fetcher talks to CouchDB with the gateway's admin credentials, through a treq client
with a timeout on every request; it never logs a document or credentials.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, FrozenSet, Iterable, NamedTuple, Optional, Set
from urllib.parse import quote

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from realtime import jsonutil
from realtime.couchheaders import couch_headers

Principals = FrozenSet[str]

#: answer of :meth:`CouchRevisions.previous_readers` when it cannot be known
UNKNOWN = None

DEFAULT_INDEX_SIZE = 100_000

_ROLE = "role:"


class Entry(NamedTuple):
    rev: str
    principals: Principals


class ReadersIndex:
    """
    doc id -> :class:`Entry` of the revision last routed, bounded (LRU by change).

    :param max_entries: most documents remembered; past it the least recently changed one
        is forgotten (its next change then asks CouchDB).
    """

    def __init__(self, max_entries: int = DEFAULT_INDEX_SIZE):
        self.max_entries = max_entries
        self._entries: "OrderedDict[str, Entry]" = OrderedDict()
        self._interned: Dict[Principals, Principals] = {}
        self._interned_uses: Dict[Principals, int] = {}
        self._by_role: Dict[str, Set[str]] = {}
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._entries

    def get(self, doc_id: str) -> Optional[Entry]:
        return self._entries.get(doc_id)

    def put(self, doc_id: str, rev: str, principals: Principals) -> None:
        """Remember the readers of the revision just routed (nobody: forget the doc)."""
        if not principals:
            self.forget(doc_id)
            return
        old = self._entries.pop(doc_id, None)
        if old is not None:
            self._release(doc_id, old.principals)
        principals = self._intern(doc_id, principals)
        self._entries[doc_id] = Entry(rev, principals)
        while len(self._entries) > self.max_entries:
            evicted_id, evicted = self._entries.popitem(last=False)
            self._release(evicted_id, evicted.principals)
            self.evictions += 1

    def forget(self, doc_id: str) -> None:
        old = self._entries.pop(doc_id, None)
        if old is not None:
            self._release(doc_id, old.principals)

    def docs_opened_by(self, role: str) -> Iterable[str]:
        """Ids of the indexed documents whose readers include ``role:<role>``."""
        return tuple(self._by_role.get(role, ()))

    def _intern(self, doc_id: str, principals: Principals) -> Principals:
        shared = self._interned.get(principals)
        if shared is None:
            shared = self._interned[principals] = principals
            self._interned_uses[shared] = 0
        self._interned_uses[shared] += 1
        for principal in shared:
            if principal.startswith(_ROLE):
                self._by_role.setdefault(principal[len(_ROLE):], set()).add(doc_id)
        return shared

    def _release(self, doc_id: str, principals: Principals) -> None:
        uses = self._interned_uses.get(principals, 0) - 1
        if uses <= 0:
            self._interned.pop(principals, None)
            self._interned_uses.pop(principals, None)
        else:
            self._interned_uses[principals] = uses
        for principal in principals:
            if principal.startswith(_ROLE):
                role = principal[len(_ROLE):]
                docs = self._by_role.get(role)
                if docs is not None:
                    docs.discard(doc_id)
                    if not docs:
                        del self._by_role[role]


def parent_rev(revisions) -> Optional[str]:
    """The parent revision named by a ``_revisions`` object (``None`` for a first one)."""
    if not isinstance(revisions, dict):
        return None
    start, ids = revisions.get("start"), revisions.get("ids")
    if not isinstance(start, int) or isinstance(start, bool) or not isinstance(ids, list):
        return None
    if start < 2 or len(ids) < 2 or not isinstance(ids[1], str):
        return None
    return f"{start - 1}-{ids[1]}"


def is_first_rev(rev) -> bool:
    return isinstance(rev, str) and rev.startswith("1-")


class CouchRevisions:
    """
    Reads documents and older revisions from CouchDB for the routing.

    :param http: a treq ``HTTPClient``.
    :param couchdb_url: CouchDB's base URL.
    :param admin_auth: base64 of ``admin:password`` (or None).
    :param timeout: seconds to wait for each answer.
    """

    _log = Logger()

    def __init__(self, http, couchdb_url: str, admin_auth: Optional[str] = None,
                 timeout: float = 10.0, clock=None):
        self._http = http
        self._base = couchdb_url.rstrip("/")
        self._headers = couch_headers(admin_auth)
        self._timeout = timeout
        self._clock = clock
        self.requests = 0

    @property
    def base_url(self) -> str:
        return self._base

    def doc_url(self, db: str, doc_id: str, query: str = "") -> str:
        url = f"{self._base}/{quote(db, safe='')}/{quote(doc_id, safe='')}"
        return url + ("?" + query if query else "")

    @inlineCallbacks
    def get_json(self, url: str):
        """The JSON body of a GET, or None for a 404; raises on any other failure."""
        self.requests += 1
        kwargs = {"headers": self._headers, "timeout": self._timeout}
        if self._clock is not None:
            kwargs["reactor"] = self._clock
        response = yield self._http.get(url, **kwargs)
        body = yield response.content()
        if response.code == 404:
            return None
        if response.code != 200:
            raise IOError(f"CouchDB answered {response.code}")
        return jsonutil.loads(body)

    @inlineCallbacks
    def document(self, db: str, doc_id: str, rev: Optional[str] = None):
        """
        The document (the winning revision, or ``rev``) or None when missing or deleted.
        Raises when CouchDB cannot answer.
        """
        query = "rev=" + quote(rev, safe="") if rev else ""
        doc = yield self.get_json(self.doc_url(db, doc_id, query))
        if not isinstance(doc, dict) or doc.get("_deleted"):
            return None
        return doc

    @inlineCallbacks
    def previous_revision(self, db: str, doc_id: str, rev: str):
        """
        The revision before ``rev``, as ``(known, doc)``: ``(True, doc)`` when CouchDB has
        its body; ``(True, None)`` when there is none (``rev`` is a first revision) or it
        was a tombstone (nobody could read it); ``(False, None)`` when it cannot be known
        (compacted or purged, ancestry stemmed, CouchDB not answering).
        """
        if is_first_rev(rev):
            return True, None
        try:
            current = yield self.get_json(
                self.doc_url(db, doc_id, "revs=true&rev=" + quote(rev, safe="")))
            if not isinstance(current, dict):
                return False, None
            parent = parent_rev(current.get("_revisions"))
            if parent is None:
                # The revision is known but its ancestry is not (stemmed): undecidable.
                return False, None
            previous = yield self.get_json(
                self.doc_url(db, doc_id, "rev=" + quote(parent, safe="")))
        except Exception as e:
            self._log.warn("reading an older revision from {db} failed: {error}",
                           db=db, error=type(e).__name__)
            return False, None
        if not isinstance(previous, dict):
            return False, None  # compacted away (or purged)
        if previous.get("_deleted"):
            return True, None  # it was a tombstone: nobody could read it
        return True, previous
