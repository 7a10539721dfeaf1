"""
The words of the contract, defined once: close codes, message types, topic prefixes, the
timestamp format and the events that brokers carry between processes.

Close codes (Autobahn's ``sendClose`` takes 1000 or 3000-4999; the ranges tell a client
what to do, see docs/protocol.rst):

- 4000-4099, do not reconnect with the same credentials;
- 4100-4199, reconnect with backoff;
- 4200-4299, reconnect now, with jitter.

Events (the broker's payloads, dispatched by :meth:`realtime.hub.registry.Registry.dispatch`)
are plain dicts, so that a broker can carry them between processes unchanged; they are
built only by the constructors below.  ``msg`` is the JSON text of the message (encoded once
by the sender); ``type``, when present, is the message's type, for metrics only.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Iterable, Optional

# -- close codes -------------------------------------------------------------------------

CLOSE_NORMAL = 1000
#: failed, expired, revoked or timed-out credentials, or no auth in time
CLOSE_UNAUTHORIZED = 4001
#: disconnected by an admin
CLOSE_FORBIDDEN = 4003
#: replaced by a newer session (single-session mode)
CLOSE_REPLACED = 4004
#: policy violation: rate limit exceeded repeatedly, too much data before auth, ...
CLOSE_POLICY = 4008
#: over the per-user connection limit
CLOSE_TOO_MANY_CONNECTIONS = 4029
#: too slow: the outgoing queue is full
CLOSE_TOO_SLOW = 4100
#: CouchDB or Redis could not answer an auth question (the answer was no)
CLOSE_AUTH_UNAVAILABLE = 4101
#: the server is shutting down or restarting
CLOSE_SHUTDOWN = 4200

# -- message types -----------------------------------------------------------------------

#: Every message type the protocol itself uses, both ways.  REST messages may not take one
#: of them (:mod:`realtime.http.rest`); metrics label these and count any other as "other".
MESSAGE_TYPES = frozenset({
    "connected", "connection_established", "auth", "auth_failed", "user-change",
    "doc-change", "error", "ping", "pong", "subscribed", "unsubscribed", "publication",
    "notification", "subscribe", "unsubscribe", "publish", "resume", "resumed",
    "doc.create", "doc.update", "doc.delete", "doc.created", "doc.updated", "doc.deleted",
})

# -- topics ------------------------------------------------------------------------------

#: ``user:<id>``: that user only
USER_PREFIX = "user:"
#: ``public:<name>``: any authenticated user
PUBLIC_PREFIX = "public:"
#: ``doc:<db>/<id>``: a document's changes
DOC_PREFIX = "doc:"
#: ``db:<db>``: the changes of an application database a user may read
DB_PREFIX = "db:"

# -- change rows -------------------------------------------------------------------------

#: set (True) by a changes follower on a change row whose document was nested too deep to
#: parse: the row holds the fields before it (``seq``, ``id``, ``changes``, ``deleted``)
#: and no ``doc``; nobody is sent that revision
TOO_DEEP = "tooDeep"

#: set by a changes follower that tracks its backlog (:mod:`realtime.feeds.catchup`): a
#: connection holding its roles since this time (clock seconds) or earlier held them when
#: the change was made; for a later one, only its user id decides
ROLES_BEFORE = "rolesBefore"


# -- requests ----------------------------------------------------------------------------

#: the longest ``ref`` a client request may carry
MAX_REF_LENGTH = 64


def request_ref(message) -> Optional[str]:
    """
    The ``ref`` of a client request when it has one (a string of at most
    :data:`MAX_REF_LENGTH` characters), else None.  The direct answer to a request
    (``pong``, ``subscribed``, ``unsubscribed``, ``resumed``, ``doc.*``, ``error``) carries
    it; a ``ref`` of another type or longer is not echoed.
    """
    ref = message.get("ref") if isinstance(message, dict) else None
    if isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH:
        return ref
    return None


def with_ref(answer: dict, ref: Optional[str]) -> dict:
    """``answer`` with ``ref`` set when there is one."""
    if ref is not None:
        answer["ref"] = ref
    return answer


# -- timestamps --------------------------------------------------------------------------


def utc_timestamp(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds, as a browser's ``Date.toISOString()`` writes it."""
    whole = math.floor(seconds)
    micro = round((seconds - whole) * 1_000_000)  # as datetime.fromtimestamp rounds
    if micro >= 1_000_000:
        whole += 1
        micro -= 1_000_000
    if whole != _last_second[0]:  # strftime once per second (thousands of calls in a storm)
        moment = datetime.fromtimestamp(whole, tz=timezone.utc)
        _last_second[:] = [whole, moment.strftime("%Y-%m-%dT%H:%M:%S.")]
    return _last_second[1] + f"{micro // 1000:03d}Z"


_last_second = [None, ""]


# -- broker events -----------------------------------------------------------------------

EVENT_USERS = "users"
EVENT_ALL = "all"
EVENT_TOPIC = "topic"
EVENT_DISCONNECT = "disconnect"
EVENT_REVOKE = "revoke"


def users_event(to: Iterable[str], text: str, message_type: Optional[str] = None) -> dict:
    """``text`` to every connection of the users ``to``."""
    return _with_type({"t": EVENT_USERS, "to": list(to)}, text, message_type)


def all_event(text: str, message_type: Optional[str] = None) -> dict:
    """``text`` to every authenticated connection."""
    return _with_type({"t": EVENT_ALL}, text, message_type)


def topic_event(topic: str, text: str, message_type: Optional[str] = None) -> dict:
    """``text`` to the subscribers of ``topic``."""
    return _with_type({"t": EVENT_TOPIC, "topic": topic}, text, message_type)


def disconnect_event(user_id: str, code: int, reason: str, *, at: Optional[float] = None,
                     before: Optional[int] = None) -> dict:
    """
    Close the connections of ``user_id`` with ``code`` and ``reason``.  With ``at``: only
    those admitted at or before that time (an event replayed late, after a Redis blip,
    spares newer ones).  With ``before``: only those whose session number is below it
    (single-session mode: the newer session, numbered ``before``, stays).
    """
    event = {"t": EVENT_DISCONNECT, "user": user_id, "code": code, "reason": reason}
    if at is not None:
        event["at"] = at
    if before is not None:
        event["before"] = before
    return event


def revoke_event(token_id: str) -> dict:
    """``auth_failed`` ``revoked`` (4001) to the connections authenticated with that token."""
    return {"t": EVENT_REVOKE, "token_id": token_id}


def _with_type(event: dict, text: str, message_type: Optional[str]) -> dict:
    if message_type is not None:
        event["type"] = message_type
    event["msg"] = text
    return event
