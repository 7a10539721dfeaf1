"""
The ``doc:`` and ``db:`` subscriptions of the application databases
(:class:`DatabaseSubscriptions`, used by
:class:`realtime.databases.application.ApplicationDatabases`).

- ``doc:<db>/<docid>``: the document is read from CouchDB (the winning revision); the
  subscription is allowed when it exists and the user may read it now, with the roles the
  connection holds.  A missing document, a deleted one, one the user may not read, a
  database that is not followed and a ``_design/`` or ``_local/`` id all get the same
  ``error`` ``forbidden`` (same message), so ids cannot be probed.  Every id starting
  with ``_`` is refused so, before CouchDB is asked: CouchDB keeps them for itself, and
  ``GET /db/_security``, ``/db/_all_docs`` or ``/db/_changes`` answer an object that is
  not a document (the security object, every id) and that a ``public`` rule or an
  ``access`` callable would let through.  The ids ``.`` and ``..`` are refused the same
  way (a URL normaliser between the gateway and CouchDB, a proxy, would make them ``/db``
  or ``/``: the database's or the server's information).  CouchDB not answering is
  ``error`` ``unavailable`` (whatever the id).  With ``snapshot: true`` the document
  comes first, as ``doc-change`` with ``"snapshot": true``, then ``subscribed``.  If the
  document changed while it was read (the readers index has a newer revision), it is read
  again (up to :data:`READ_ATTEMPTS` times) if the user may read that newer revision, else
  refused at once (a refused id costs one read, as a missing one does: no timing tells
  them apart); the subscription is made in the same reactor turn as the last check, so no
  change is missed and a snapshot never follows a newer live change.
- ``db:<db>``: any authenticated user may subscribe to a followed database; the routing
  gives each subscriber only what it may read.  The subscription (and its ``selector``)
  is in place before anything is read from CouchDB.  With ``snapshot: true`` every
  document the user may read (and that matches) comes first (read with ``_all_docs``,
  1000 at a time, the rule applied to each), then ``subscribed`` with ``"snapshot": N``,
  then live.  While the snapshot is sent, live messages for the connection are held (as
  during a resume: :mod:`realtime.hub.resume`) and sent after ``subscribed``, less those
  the snapshot already gave at that revision or a newer one (key (db, id, rev)).  A
  document whose revision in the page is not the one the feed last routed (the readers
  index knows it) is left out of the snapshot: the feed routed a newer one while the page
  was read (held, it comes next), or has yet to route the page's (it comes live): the
  latest revision wins.  (A document the index does not hold, changed just before its
  page was read while the feed lags CouchDB, may come once more, live, after the
  snapshot: the feed's position is opaque and cannot be compared with the read.)  An
  unsubscribe during the snapshot stops it (no ``subscribed``).  A snapshot CouchDB does
  not complete is ``error`` ``unavailable`` and puts back what the connection held
  before (subscribed or not, its earlier selector); live messages held meanwhile are
  still sent.
- Either kind counts against the per-connection topic limit (``too_many_topics``); every
  answer (``subscribed``, ``error``) carries the request's ``ref``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional
from urllib.parse import quote

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from realtime import jsonutil
from realtime.databases.routing import DatabaseRouter
from realtime.databases.rules import may_read
from realtime.databases.selector import BadSelector
from realtime.databases.selector import parse as parse_selector
from realtime.databases.topics import (
    Selection,
    doc_change_message,
    is_internal,
    parse_database_topic,
    selection_of,
)
from realtime.vocabulary import request_ref, with_ref

#: documents read per ``_all_docs`` request for a ``db:`` snapshot
SNAPSHOT_PAGE = 1000

FORBIDDEN_TEXT = "you may not subscribe to this topic"

#: reads of a doc: subscription's document while the feed routes newer revisions of it
READ_ATTEMPTS = 3

#: ids that are path segments of their own to HTTP: never asked of CouchDB
DOT_SEGMENTS = (".", "..")


def _generation(rev) -> int:
    """The generation of a CouchDB revision (``3-abc`` -> 3; CouchDB's own rule)."""
    try:
        return int(str(rev).split("-", 1)[0])
    except ValueError:
        return 0


class DatabaseSubscriptions:
    """
    :param routers: db -> :class:`DatabaseRouter` of each followed database.
    :param directory: the registry.
    :param revisions: a :class:`realtime.databases.readers.CouchRevisions`.
    :param timestamp: callable returning the current ISO timestamp.
    :param on_error: ``on_error(code)`` for each refusal sent (metrics), optional.
    """

    _log = Logger()

    def __init__(self, routers: Dict[str, DatabaseRouter], directory, revisions,
                 timestamp: Callable[[], str],
                 on_error: Optional[Callable[[str], None]] = None):
        self.routers = routers
        self.directory = directory
        self.revisions = revisions
        self._timestamp = timestamp
        self._on_error = on_error


    def _refuse(self, conn, code: str, text: str, topic: str, ref=None) -> None:
        conn.send_json(with_ref({"type": "error", "code": code, "message": text,
                                 "topic": topic}, ref))
        if self._on_error is not None:
            self._on_error(code)

    def _too_many(self, conn, topic: str, ref) -> None:
        self._refuse(conn, "too_many_topics", f"at most "
                     f"{self.directory.max_topics_per_connection} topics per connection",
                     topic, ref)

    def subscribe(self, conn, topic: str, message: dict):
        """Handle ``subscribe`` for a database topic; answers on ``conn`` (every answer
        with the request's ``ref``).  Returns a Deferred when CouchDB is asked (fires once
        answered), else None."""
        ref = request_ref(message)
        parsed = parse_database_topic(topic, self.routers)
        if parsed is None:
            self._refuse(conn, "forbidden", FORBIDDEN_TEXT, topic, ref)
            return None
        kind, db, doc_id = parsed
        selector = None
        if message.get("selector") is not None:
            if kind != "db":
                self._refuse(conn, "bad_request", "a selector is for db: topics", topic, ref)
                return None
            try:
                selector = parse_selector(message["selector"])
            except BadSelector as e:
                self._refuse(conn, "bad_selector", e.message, topic, ref)
                return None
        snapshot = message.get("snapshot", False)
        if not isinstance(snapshot, bool):
            self._refuse(conn, "bad_request", "snapshot must be true or false", topic, ref)
            return None
        if topic not in conn.topics and \
                len(conn.topics) >= self.directory.max_topics_per_connection:
            self._too_many(conn, topic, ref)
            return None
        if kind == "doc":
            if doc_id.startswith("_") or doc_id in DOT_SEGMENTS:
                # _design/, _local/ and CouchDB's own endpoints; "." and ".." would be
                # resolved by any URL normaliser on the way (a proxy) to /db or /
                self._refuse(conn, "forbidden", FORBIDDEN_TEXT, topic, ref)
                return None
            d = self._subscribe_doc(conn, topic, db, doc_id, snapshot, ref)
            d.addErrback(self._failed, conn, topic, ref)
            return d
        return self._subscribe_db(conn, topic, db, selector, snapshot, ref)

    def _failed(self, failure, conn, topic: str, ref) -> None:
        self._log.warn("a database subscription could not be checked: {error}",
                       error=failure.getErrorMessage())
        if conn in self.directory:
            self._refuse(conn, "unavailable", "CouchDB did not answer; try again", topic,
                         ref)

    @inlineCallbacks
    def _subscribe_doc(self, conn, topic: str, db: str, doc_id: str, snapshot: bool, ref):
        router = self.routers[db]
        for _ in range(READ_ATTEMPTS):
            try:
                doc = yield self.revisions.document(db, doc_id)
            except jsonutil.TooDeep:
                # not counted: /metrics is public, and the count would tell whoever names
                # an id that it exists (a missing one is refused the same, uncounted)
                doc = self._too_deep(router, counted=False)
                break
            entry = router.index.get(doc_id)
            if entry is None or (doc is not None and
                                 _generation(entry.rev) <= _generation(doc.get("_rev"))):
                break
            # The feed routed a newer revision while the document was read: read again
            # only for a user who may read that one (anyone else is refused at once, with
            # as many reads as for a missing id: the refusal's timing tells nothing).
            if not may_read(entry.principals, conn.user_id, conn.roles):
                doc = None
                break
        # Subscribed in the turn the read is checked in: every change routed from now on
        # reaches the connection, and none routed before is newer than the read.
        if conn not in self.directory:
            return  # gone meanwhile
        if doc is None or not router.rule.may_read(doc, conn.user_id, conn.roles):
            self._refuse(conn, "forbidden", FORBIDDEN_TEXT, topic, ref)
            return
        if not self.directory.subscribe(conn, topic):
            self._too_many(conn, topic, ref)
            return
        if snapshot:
            conn.send_json(doc_change_message(
                db, doc_id, doc.get("_rev"), router.last_seq, self._timestamp(),
                doc=router.rule.sanitise(doc), snapshot=True))
        conn.send_json(with_ref({"type": "subscribed", "topic": topic}, ref))

    def _subscribe_db(self, conn, topic: str, db: str, selector, snapshot: bool, ref):
        """
        ``db:<db>``: subscribed (and the selector in place) before anything is read, so
        no change is missed; with a snapshot, the live messages are held while it is
        sent (as during a resume) and those it already gave, or gave newer, are left out.
        A snapshot that fails puts back the subscription and selector held before.
        """
        before = (topic in conn.topics, (conn.selections or {}).get(db))
        if not self.directory.subscribe(conn, topic):
            self._too_many(conn, topic, ref)
            return None
        self._select(conn, db, selector)
        if not snapshot:
            conn.send_json(with_ref({"type": "subscribed", "topic": topic}, ref))
            return None
        hold = conn.begin_hold()
        d = self._db_snapshot(conn, hold, topic, db)

        def sent(count):
            if count is not None:
                conn.send_json(with_ref({"type": "subscribed", "topic": topic,
                                         "snapshot": count}, ref))

        def failed(failure):
            was_subscribed, selection = before
            if not was_subscribed:
                self.directory.unsubscribe(conn, topic)
            if selection is None:
                if conn.selections:
                    conn.selections.pop(db, None)
            else:
                conn.selections[db] = selection
            self._failed(failure, conn, topic, ref)

        d.addCallbacks(sent, failed)
        d.addBoth(lambda _: conn.end_hold())
        return d

    @staticmethod
    def _select(conn, db: str, selector) -> None:
        """Record (or drop) the connection's selector for ``db:<db>`` (subscribed): from
        now on the routing gives it only the documents that match."""
        if selector is None or selector.empty:
            if conn.selections:
                conn.selections.pop(db, None)
            return
        if conn.selections is None:
            conn.selections = {}
        selection = conn.selections[db] = Selection(selector)
        selection.pending = False  # subscribed already: an unsubscribe ends it

    def _too_deep(self, router: DatabaseRouter, counted: bool = True) -> None:
        """A document nested too deep to parse: nobody reads it (counted, no content
        logged)."""
        if counted:
            router.stats.undecidable += 1
        self._log.warn("a document of {db} is nested too deep to parse: left out of a "
                       "subscription", db=router.db)

    @inlineCallbacks
    def _page_doc_by_doc(self, router: DatabaseRouter, url: str):
        """An ``_all_docs`` page whose documents could not be parsed together: its ids,
        then each document on its own; one too deep to parse is left out."""
        ids = yield self.revisions.get_json(url.replace("include_docs=true",
                                                        "include_docs=false"))
        rows = ids.get("rows") if isinstance(ids, dict) else None
        if not isinstance(rows, list):
            raise IOError("CouchDB answered _all_docs without rows")
        page = []
        for row in rows:
            doc_id = row.get("id") if isinstance(row, dict) else None
            doc = None
            if isinstance(doc_id, str) and not is_internal(doc_id):
                try:
                    doc = yield self.revisions.document(router.db, doc_id)
                except jsonutil.TooDeep:
                    self._too_deep(router)
            page.append({"id": doc_id, "doc": doc})
        return {"rows": page}

    @inlineCallbacks
    def _db_snapshot(self, conn, hold, topic: str, db: str):
        """Send the snapshot; its count, or None when the subscription ended meanwhile."""
        router = self.routers[db]
        selection = selection_of(conn, db)
        seq = router.last_seq
        sent = 0
        startkey = None
        while True:
            query = f"include_docs=true&limit={SNAPSHOT_PAGE}"
            if startkey is not None:
                query += "&skip=1&startkey=" + quote(jsonutil.dumps_text(startkey), safe="")
            url = f"{self.revisions.base_url}/{quote(db, safe='')}/_all_docs?{query}"
            try:
                page = yield self.revisions.get_json(url)
            except jsonutil.TooDeep:  # a document of the page: read it doc by doc
                page = yield self._page_doc_by_doc(router, url)
            rows = page.get("rows") if isinstance(page, dict) else None
            if not isinstance(rows, list):
                raise IOError("CouchDB answered _all_docs without rows")
            if conn not in self.directory or topic not in conn.topics:
                return None  # gone, or unsubscribed meanwhile
            for row in rows:
                doc = row.get("doc") if isinstance(row, dict) else None
                if not isinstance(doc, dict) or not isinstance(doc.get("_id"), str):
                    continue
                doc_id = doc["_id"]
                if is_internal(doc_id):
                    continue
                entry = router.index.get(doc_id)
                if entry is not None and \
                        _generation(entry.rev) != _generation(doc.get("_rev")):
                    # The feed routed a newer revision since the page was read (held: it
                    # comes next), or has yet to route this one (it will, live).
                    continue
                if router.rule.may_read(doc, conn.user_id, conn.roles):
                    sanitised = router.rule.sanitise(doc)
                    if selection is not None:
                        if not selection.selector.matches(sanitised):
                            continue
                        selection.matched.add(doc_id)
                    message = doc_change_message(db, doc_id, doc.get("_rev"), seq,
                                                 self._timestamp(), doc=sanitised,
                                                 snapshot=True)
                    hold.replayed(message)
                    conn.send_json(message)
                    sent += 1
            if len(rows) < SNAPSHOT_PAGE:
                break
            startkey = rows[-1].get("id")
        return sent
