"""
The application databases of a gateway: one router per database of the rule file, the
``doc:`` / ``db:`` subscriptions, and roles that change while a user is connected.

Subscriptions (``doc:<db>/<docid>`` and ``db:<db>``, with snapshots and selectors):
:mod:`realtime.databases.subscriptions`; :meth:`ApplicationDatabases.subscribe` hands
them over.

Roles (:meth:`ApplicationDatabases.roles_changed`): when a connection loses a role (its
user's ``_users`` document changed, or a refreshed token carries fewer roles), it gets
``removed`` for each document the readers index knows that role opened and the user may
no longer read (``rev`` of that revision, ``seq`` of the database's last change), and its
``doc:`` subscriptions are checked again (those the index does not know, against CouchDB):
one it may no longer read ends with ``removed`` and ``unsubscribed`` ``access_lost`` (with
the rev the old roles read, else none: a forbidden document looks as a missing one).
A lost role is announced only when it was held since the feed was last caught up
(``DatabaseRouter.caught_up``: the index may be stale while the feed is cut or behind).
Documents the index does not hold (evicted, or unchanged since the process started) are
not announced: the client sees its roles in ``user-change`` and reloads what depends on
them.  A role gained sends nothing by itself: the next change of each document it opens
does (or a ``db:`` snapshot).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.logger import Logger

from realtime import jsonutil
from realtime.databases.readers import DEFAULT_INDEX_SIZE, ReadersIndex
from realtime.databases.routing import DatabaseRouter
from realtime.databases.rules import RuleSet, may_read
from realtime.databases.subscriptions import DatabaseSubscriptions
from realtime.databases.topics import (
    DOC_CHANGE,
    db_topic,
    doc_change_message,
    doc_topic,
    parse_database_topic,
)
from realtime.vocabulary import TOO_DEEP


class ApplicationDatabases:
    """
    :param rules: the :class:`RuleSet` of the rule file.
    :param directory: the registry.
    :param revisions: a :class:`realtime.databases.readers.CouchRevisions`.
    :param timestamp: callable returning the current ISO timestamp.
    :param index_size: entries of each database's readers index.
    :param on_error: ``on_error(code)`` for each refusal sent (metrics), optional.
    """

    _log = Logger()

    def __init__(self, rules: RuleSet, directory, revisions, timestamp: Callable[[], str],
                 index_size: int = DEFAULT_INDEX_SIZE,
                 on_error: Optional[Callable[[str], None]] = None):
        self.rules = rules
        self.directory = directory
        self.revisions = revisions
        self._timestamp = timestamp
        self._on_error = on_error
        self.routers: Dict[str, DatabaseRouter] = {
            db: DatabaseRouter(rule, directory, revisions, timestamp,
                               ReadersIndex(index_size))
            for db, rule in rules.items()
        }
        self.subscriptions = DatabaseSubscriptions(self.routers, directory, revisions,
                                                   timestamp, on_error)

    def __contains__(self, db: str) -> bool:
        return db in self.routers

    def __iter__(self):
        return iter(self.routers)

    def __len__(self) -> int:
        return len(self.routers)

    def on_change(self, db: str, change: dict):
        """Route a change of a followed application database (see DatabaseRouter).  One
        whose document was nested too deep to parse (:data:`realtime.vocabulary.TOO_DEEP`)
        reaches nobody (its readers cannot be known) and counts as undecidable; a deletion
        needs no document and is routed as any."""
        router = self.routers[db]
        if change.get(TOO_DEEP) and not change.get("deleted"):
            router.last_seq = change.get("seq")
            router.stats.undecidable += 1
            return None
        return router.on_change(change)

    def stats(self) -> Dict[str, dict]:
        """Per database: the routing counters and the readers index size."""
        out = {}
        for db, router in self.routers.items():
            counters = router.stats.as_dict()
            counters["indexed"] = len(router.index)
            out[db] = counters
        return out

    # -- subscriptions -----------------------------------------------------------------

    def subscribe(self, conn, topic: str, message: dict):
        """Handle ``subscribe`` for a database topic (see
        :meth:`realtime.databases.subscriptions.DatabaseSubscriptions.subscribe`)."""
        return self.subscriptions.subscribe(conn, topic, message)

    # -- roles --------------------------------------------------------------------------

    def roles_changed(self, conn, old_roles: Iterable[str], old_since: Optional[float] = None):
        """
        The connection's roles changed from ``old_roles`` (held since ``old_since``, None:
        always) to ``conn.roles`` (already re-indexed in the registry): tell it what it
        lost (see the module docstring).  Returns a Deferred when ``doc:`` subscriptions
        are checked against CouchDB.
        """
        old_roles = tuple(old_roles)
        lost = set(old_roles) - set(conn.roles)
        pending = []
        for db, router in self.routers.items():
            checked = set()
            # The index holds what was current when the feed was last caught up: the
            # old roles read it then only if held since (docs/security.rst).
            if lost and (old_since is None or old_since <= router.caught_up()):
                candidates = set()
                for role in lost:
                    candidates.update(router.index.docs_opened_by(role))
                for doc_id in sorted(candidates):
                    checked.add(doc_id)
                    entry = router.index.get(doc_id)
                    if entry is None:
                        continue
                    if may_read(entry.principals, conn.user_id, old_roles) and \
                            not may_read(entry.principals, conn.user_id, conn.roles):
                        self._lost(conn, router, doc_id, entry.rev)
            for topic in list(conn.topics):
                parsed = parse_database_topic(topic, (db,))
                if parsed is None or parsed[0] != "doc" or parsed[2] in checked:
                    continue
                doc_id = parsed[2]
                entry = router.index.get(doc_id)
                if entry is not None:
                    if not may_read(entry.principals, conn.user_id, conn.roles):
                        # its rev only if the old roles read it (missing looks the same)
                        known = may_read(entry.principals, conn.user_id, old_roles)
                        self._lost(conn, router, doc_id, entry.rev if known else None)
                else:
                    pending.append(self._recheck(conn, router, doc_id))
        if pending:
            return DeferredList(pending, consumeErrors=True)
        return None

    def _lost(self, conn, router: DatabaseRouter, doc_id: str, rev: str) -> None:
        topic = doc_topic(router.db, doc_id)
        subscribed = topic in conn.topics
        if router.rule.push_all or subscribed or db_topic(router.db) in conn.topics:
            message = doc_change_message(router.db, doc_id, rev, router.last_seq,
                                         self._timestamp(), removed=True)
            sent = self.directory.deliver([conn], jsonutil.dumps_text(message), DOC_CHANGE)
            router.stats.removals += sent
            router.stats.deliveries += sent
        if subscribed:
            router.end_subscriptions([conn], topic)

    @inlineCallbacks
    def _recheck(self, conn, router: DatabaseRouter, doc_id: str):
        try:
            doc = yield self.revisions.document(router.db, doc_id)
        except Exception as e:
            self._log.warn("re-checking a doc: subscription failed: {error}",
                           error=type(e).__name__)
            return
        topic = doc_topic(router.db, doc_id)
        if conn not in self.directory or topic not in conn.topics:
            return
        if doc is None or not router.rule.may_read(doc, conn.user_id, conn.roles):
            # no rev: a forbidden document looks as a missing one (docs/security.rst)
            self._lost(conn, router, doc_id, None)
