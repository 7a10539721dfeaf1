"""
The registry: which open, authenticated connections this process holds, by user and by
topic, and delivery of an event to the local connections it concerns.

An event's message is encoded to JSON once and framed as a WebSocket text frame once; each
connection it reaches then gets the same bytes (:meth:`Connection.deliver_frame`), however
many there are.

Events are plain dicts so that a broker can carry them between processes unchanged; they
are built by the constructors of :mod:`realtime.vocabulary` (``users_event`` ...):

==================  ==========================================================
``{"t": "users", "to": [id, ...], "msg": text}``   to every connection of those users
``{"t": "all", "msg": text}``                      to every authenticated connection
``{"t": "topic", "topic": name, "msg": text}``     to the topic's subscribers
``{"t": "disconnect", "user": id, "code": n, "reason": text}``  close that user's connections
``{"t": "revoke", "token_id": id}``                 ``auth_failed`` ``revoked`` (4001) to the
                                                   connections authenticated with that token
``{"t": "disconnect", "user": id, "code": n, "reason": text, "at": seconds}``
                    close only the connections admitted at or before ``at`` (an event
                    replayed late, after a Redis blip, spares newer ones)
``{"t": "disconnect", "user": id, "code": 4004, "reason": text, "before": n}``
                    single-session mode: close the user's connections whose
                    ``session_seq`` is below n (the newer session, numbered n, stays)
==================  ==========================================================

``msg`` is the JSON text of the message (a str), so it is encoded once by the sender.
An event may also carry ``"type"``: the message's type, for metrics only.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import Dict, Iterable, Iterator, List, Optional
from typing import Protocol as TypingProtocol

from twisted.logger import Logger

from realtime.auth.identity import AuthFailure
from realtime.vocabulary import EVENT_ALL, EVENT_DISCONNECT, EVENT_REVOKE, EVENT_TOPIC, EVENT_USERS


def frame_text(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame (server to client, RFC 6455 5.2)."""
    length = len(payload)
    if length <= 125:
        header = bytes((0x81, length))
    elif length <= 0xFFFF:
        header = struct.pack("!BBH", 0x81, 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 127, length)
    return header + payload


class Connection(TypingProtocol):
    """What the registry needs of a connection (a session provides it; tests/fakes.py too)."""

    connection_id: str
    user_id: Optional[str]
    roles: tuple  # the roles held now (they follow the user's _users document)
    topics: set
    token_id: Optional[str]  # of its credentials: a revocation closes it
    session_seq: int  # single-session mode: a disconnect ``before`` it spares it
    admitted_at: float  # a disconnect ``at`` a time before it spares it
    roles_since: float  # holds its roles since (databases.routing: changes made before)
    selections: Optional[dict]  # db -> its db: subscription with a selector (databases)

    def deliver_frame(self, frame: bytes) -> bool:
        """Queue a pre-framed message; False when the connection could not take it."""

    def close_with(self, code: int, reason: str) -> None:
        """Close the connection with a WebSocket close code."""

    def fail_auth(self, failure) -> None:
        """Tell the client its credentials ended (``auth_failed``) and close."""


#: the empty mapping shared by lookups that find nothing (never written to)
_NONE: Dict[str, "Connection"] = {}


class Registry:
    _log = Logger()

    def __init__(self, max_topics_per_connection: int = 128, on_delivered=None):
        self._by_id: Dict[str, Connection] = {}
        self._by_user: Dict[str, Dict[str, Connection]] = {}
        self._by_topic: Dict[str, Dict[str, Connection]] = {}
        # role -> connections holding it, and what was indexed for each connection (so
        # that a connection whose roles changed is re-indexed exactly: see reindex_roles)
        self._by_role: Dict[str, Dict[str, Connection]] = {}
        self._indexed_roles: Dict[str, tuple] = {}
        self.max_topics_per_connection = max_topics_per_connection
        self.deliveries = 0
        self.on_delivered = on_delivered  # optional callable(event, count), for metrics
        # user -> highest ``before`` of a single-session disconnect seen (bounded, LRU):
        # a connection still being admitted when its replacement was announced learns it
        # here (see :meth:`replaced`).
        self._replaced_before: "OrderedDict[str, int]" = OrderedDict()
        self.max_replaced_remembered = 10000
        # token ids revoked lately (bounded, oldest dropped first): a connection still being
        # admitted when its token's revocation came learns it here (see :meth:`revoked`)
        self._recently_revoked: "OrderedDict[str, None]" = OrderedDict()
        #: the latest ``roles_since`` of a connection registered or re-indexed (a change
        #: stamped later is judged with everyone's roles: databases.routing)
        self.newest_roles_since = float("-inf")

    # -- membership ---------------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        assert conn.user_id is not None, "only authenticated connections are registered"
        self._roles_given(conn)
        self._by_id[conn.connection_id] = conn
        self._by_user.setdefault(conn.user_id, {})[conn.connection_id] = conn
        self._index_roles(conn)

    def remove(self, conn: Connection) -> None:
        """Forget a connection and all its subscriptions (idempotent)."""
        if self._by_id.pop(conn.connection_id, None) is None:
            return
        mine = self._by_user.get(conn.user_id)
        if mine is not None:
            mine.pop(conn.connection_id, None)
            if not mine:
                del self._by_user[conn.user_id]
        self._unindex_roles(conn)
        for topic in list(conn.topics):
            self._drop_subscription(conn, topic)
        conn.topics.clear()

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, conn) -> bool:
        return self._by_id.get(conn.connection_id) is conn

    def connections(self) -> Iterator[Connection]:
        return iter(list(self._by_id.values()))

    def connections_of(self, user_id: str) -> List[Connection]:
        """The user's connections, oldest first."""
        return list(self._by_user.get(user_id, {}).values())

    def user_connections(self, user_id: str):
        """The user's connections as a read-only view (no copy: iterate it at once, before
        anything can register or remove a connection)."""
        return self._by_user.get(user_id, _NONE).values()

    def role_connections(self, role: str):
        """The connections holding ``role``, as a view (see :meth:`user_connections`)."""
        return self._by_role.get(role, _NONE).values()

    def count_of(self, user_id: str) -> int:
        return len(self._by_user.get(user_id, ()))

    def users(self) -> Dict[str, int]:
        """user id -> number of connections."""
        return {user: len(conns) for user, conns in self._by_user.items()}

    # -- roles (recipients of application documents named by role) --------------------

    def _index_roles(self, conn: Connection) -> None:
        roles = tuple(conn.roles)
        self._indexed_roles[conn.connection_id] = roles
        for role in roles:
            self._by_role.setdefault(role, {})[conn.connection_id] = conn

    def _unindex_roles(self, conn: Connection) -> None:
        for role in self._indexed_roles.pop(conn.connection_id, ()):
            holders = self._by_role.get(role)
            if holders is not None:
                holders.pop(conn.connection_id, None)
                if not holders:
                    del self._by_role[role]

    def reindex_roles(self, conn: Connection) -> None:
        """The connection's ``roles`` changed: index it under its new ones."""
        if self._by_id.get(conn.connection_id) is not conn:
            return
        self._roles_given(conn)
        self._unindex_roles(conn)
        self._index_roles(conn)

    def _roles_given(self, conn: Connection) -> None:
        if conn.roles_since > self.newest_roles_since:
            self.newest_roles_since = conn.roles_since

    def connections_with_role(self, role: str) -> List[Connection]:
        return list(self._by_role.get(role, {}).values())

    # -- topics -------------------------------------------------------------------------

    def subscribe(self, conn: Connection, topic: str) -> bool:
        """Subscribe; False when the connection already holds its maximum of topics."""
        if topic in conn.topics:
            return True
        if len(conn.topics) >= self.max_topics_per_connection:
            return False
        conn.topics.add(topic)
        self._by_topic.setdefault(topic, {})[conn.connection_id] = conn
        return True

    def unsubscribe(self, conn: Connection, topic: str) -> bool:
        """Unsubscribe; False when the connection was not subscribed."""
        if topic not in conn.topics:
            return False
        conn.topics.discard(topic)
        self._drop_subscription(conn, topic)
        return True

    def _drop_subscription(self, conn: Connection, topic: str) -> None:
        subscribers = self._by_topic.get(topic)
        if subscribers is not None:
            subscribers.pop(conn.connection_id, None)
            if not subscribers:
                del self._by_topic[topic]

    def subscribers(self, topic: str) -> List[Connection]:
        return list(self._by_topic.get(topic, {}).values())

    def topic_count(self) -> int:
        return len(self._by_topic)

    # -- delivery -----------------------------------------------------------------------

    def dispatch(self, event: dict) -> int:
        """
        Act on an event for the local connections; return how many connections it reached.
        Unknown or malformed events are logged and ignored.
        """
        kind = event.get("t")
        try:
            if kind == EVENT_USERS:
                return self._delivered(event, self._send(self._targets_users(event["to"]),
                                                         event["msg"]))
            if kind == EVENT_ALL:
                return self._delivered(event, self._send(list(self._by_id.values()),
                                                         event["msg"]))
            if kind == EVENT_TOPIC:
                return self._delivered(event, self._send(self.subscribers(event["topic"]),
                                                         event["msg"]))
            if kind == EVENT_DISCONNECT:
                conns = self.connections_of(event["user"])
                if event.get("before") is not None:
                    before = int(event["before"])
                    self._remember_replacement(str(event["user"]), before)
                    conns = [c for c in conns if c.session_seq < before]
                if event.get("at") is not None:
                    at = float(event["at"])
                    conns = [c for c in conns if c.admitted_at <= at]
                for conn in conns:
                    conn.close_with(int(event.get("code", 4000)), str(event.get("reason", "")))
                return len(conns)
            if kind == EVENT_REVOKE:
                return self._revoke(event["token_id"])
        except (KeyError, TypeError, ValueError):
            self._log.warn("malformed event of kind {kind} ignored", kind=kind)
            return 0
        self._log.warn("unknown event kind {kind} ignored", kind=kind)
        return 0

    def deliver(self, conns: Iterable[Connection], message_text: str, kind: str) -> int:
        """Deliver one message (JSON text, framed once) to the given local connections;
        counted like an event of type ``kind``."""
        return self._delivered({"type": kind}, self._send(list(conns), message_text))

    def _delivered(self, event: dict, count: int) -> int:
        if self.on_delivered is not None and count:
            try:
                self.on_delivered(event, count)
            except Exception:
                self._log.failure("the delivery hook failed")
        return count

    def _revoke(self, token_id: str) -> int:
        if not isinstance(token_id, str):
            raise TypeError("token_id must be a string")
        self._recently_revoked[token_id] = None
        while len(self._recently_revoked) > self.max_replaced_remembered:
            self._recently_revoked.popitem(last=False)
        conns = [c for c in self._by_id.values() if c.token_id == token_id]
        for conn in conns:
            conn.fail_auth(AuthFailure("revoked", "token revoked"))
        return len(conns)
    def _remember_replacement(self, user_id: str, before: int) -> None:
        known = self._replaced_before.pop(user_id, 0)
        self._replaced_before[user_id] = max(known, before)
        while len(self._replaced_before) > self.max_replaced_remembered:
            self._replaced_before.popitem(last=False)

    def revoked(self, token_id: str) -> bool:
        """Whether a revocation of ``token_id`` was seen (recently: bounded memory)."""
        return token_id in self._recently_revoked

    def replaced(self, user_id: str, session_seq: int) -> bool:
        """Whether a session of the user newer than ``session_seq`` was announced."""
        return session_seq < self._replaced_before.get(user_id, 0)

    def _targets_users(self, user_ids: Iterable[str]) -> List[Connection]:
        if isinstance(user_ids, str):
            raise TypeError("to must be a list")
        targets = []
        for user_id in user_ids:
            targets.extend(self._by_user.get(user_id, {}).values())
        return targets

    def _send(self, targets: List[Connection], message_text: str) -> int:
        if not targets:
            return 0
        frame = frame_text(message_text.encode("utf-8"))
        sent = 0
        for conn in targets:
            if conn.deliver_frame(frame):
                sent += 1
        self.deliveries += sent
        return sent
