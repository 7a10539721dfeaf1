"""
Topics: names, permissions, and the client's ``subscribe`` / ``unsubscribe`` / ``publish``.

Names (:func:`topic_error`): 1 to :data:`MAX_TOPIC_LENGTH` characters, none of them a
control character, whitespace or ``*`` (``*`` only ever appears in grants).  Any other
Unicode is allowed, since ``user:<id>`` carries CouchDB user names.

Who may subscribe and publish is decided in :mod:`realtime.auth.access`: ``user:<id>``
(that user), ``public:<name>`` (anyone), JWT ``topics`` grants; anything else is refused
with ``error`` ``forbidden``.  The database topics ``doc:<db>/<docid>`` and ``db:<db>``
are never opened by a grant: their subscriptions are checked against CouchDB and the
database's rule (:meth:`realtime.databases.application.ApplicationDatabases.subscribe`),
and nobody may publish on them.

Client messages and answers:

- ``{"type":"subscribe","topic":T}`` -> ``{"type":"subscribed","topic":T,"until":O}``;
  subscribing again to a topic already held answers ``subscribed`` again.  ``until`` is
  where the history stands (:meth:`realtime.hub.history.IHistory.head`; left out while it
  is not known): the client's position in T until its first publication, so that a drop
  before it loses nothing.  With ``since`` (an offset of a publication, or an ``until``),
  the publications after it come first (:mod:`realtime.hub.resume`).
  Past the per-connection limit (128 by default): ``error`` ``too_many_topics``.
- ``{"type":"unsubscribe","topic":T}`` -> ``{"type":"unsubscribed","topic":T}``, also
  when the connection was not subscribed (the state the client asked for holds).  From the
  moment the answer is queued, no publication of T reaches that connection.
- ``{"type":"publish","topic":T,"data":D}`` -> every subscriber of T (the publisher too,
  when subscribed) gets ``{"type":"publication","topic":T,"data":D,"from":<user id>,
  "timestamp":…,"offset":…}``; the publication is kept in the topic's history
  (:mod:`realtime.hub.history`) first.  There is no acknowledgement; a refusal is an ``error``
  (``forbidden``, ``bad_request``, or ``unavailable`` when the broker refused the event).

A client that re-authenticates (``auth`` with a fresh token for the same user) keeps only
the subscriptions its new identity allows: each one dropped is answered
``{"type":"unsubscribed","topic":T,"reason":"forbidden"}``.

Refusals carry the ``topic`` (when it was a string) besides ``code`` and ``message``.
Every answer (``subscribed``, ``unsubscribed``, ``error``) carries the request's ``ref``
when it had one (:func:`realtime.vocabulary.request_ref`).
"""

from __future__ import annotations

import unicodedata
from typing import Optional

from twisted.logger import Logger

from realtime import jsonutil
from realtime.auth.access import (  # noqa: F401 (grant_matches: part of this module's API)
    grant_matches,
    is_database_topic,
    may_publish,
    may_subscribe,
)
from realtime.hub import history, resume
from realtime.vocabulary import PUBLIC_PREFIX, USER_PREFIX, request_ref, topic_event, with_ref  # noqa: F401

MAX_TOPIC_LENGTH = 200


_log = Logger()


def topic_error(topic) -> Optional[str]:
    """Why ``topic`` is not a valid topic name, or None when it is."""
    if not isinstance(topic, str):
        return "topic must be a string"
    if not topic:
        return "topic must not be empty"
    if len(topic) > MAX_TOPIC_LENGTH:
        return f"topic is longer than {MAX_TOPIC_LENGTH} characters"
    for char in topic:
        if char == "*" or char.isspace() or unicodedata.category(char)[0] == "C":
            return "topic contains a character that is not allowed (control, space or *)"
    return None




def publication(topic: str, data, sender: str, timestamp: str) -> dict:
    return {"type": "publication", "topic": topic, "data": data, "from": sender,
            "timestamp": timestamp}


def publication_event(topic: str, data, sender: str, timestamp: str) -> dict:
    """The broker event for a publication, its message encoded once (no offset)."""
    return publication_event_text(
        topic, jsonutil.dumps_text(publication(topic, data, sender, timestamp)))


def publication_event_text(topic: str, text: str) -> dict:
    """The broker event for a publication already encoded (with its history offset)."""
    return topic_event(topic, text, "publication")


# -- client requests (called by the protocol with itself as ``conn``) ---------------------

def _refuse(conn, code: str, text: str, topic, ref=None) -> None:
    message = {"type": "error", "code": code, "message": text}
    if isinstance(topic, str) and len(topic) <= MAX_TOPIC_LENGTH:
        message["topic"] = topic
    conn.send_json(with_ref(message, ref))
    conn.gateway.metrics.error(code)


def handle_subscribe(conn, message: dict) -> None:
    topic = message.get("topic")
    ref = request_ref(message)
    problem = topic_error(topic)
    if problem is not None:
        _refuse(conn, "bad_request", problem, topic, ref)
        return
    if is_database_topic(topic):
        conn.gateway.subscribe_database_topic(conn, topic, message)
        return
    if not may_subscribe(conn.identity, topic):
        _refuse(conn, "forbidden", "you may not subscribe to this topic", topic, ref)
        return
    registry = conn.gateway.registry
    if not registry.subscribe(conn, topic):
        _refuse(conn, "too_many_topics",
                f"at most {registry.max_topics_per_connection} topics per connection", topic,
                ref)
        return
    if message.get("since") is not None:  # replay the topic's history first
        resume.resume_topic(conn, topic, message["since"], ref)
        return
    answer = {"type": "subscribed", "topic": topic}
    head = conn.gateway.history.head()
    if head is not None:
        # where the topic stands: a client that drops before its first publication
        # resumes from here, and gets what was published while it was away
        answer["until"] = head
    conn.send_json(with_ref(answer, ref))


def handle_unsubscribe(conn, message: dict) -> None:
    topic = message.get("topic")
    ref = request_ref(message)
    problem = topic_error(topic)
    if problem is not None:
        _refuse(conn, "bad_request", problem, topic, ref)
        return
    conn.gateway.registry.unsubscribe(conn, topic)
    conn.send_json(with_ref({"type": "unsubscribed", "topic": topic}, ref))


def recheck_subscriptions(conn) -> None:
    """After the identity changed: leave the topics it no longer allows.  Database topics
    stay: each change re-checks them with the connection's roles of that moment."""
    registry = conn.gateway.registry
    for topic in sorted(conn.topics):
        if not is_database_topic(topic) and not may_subscribe(conn.identity, topic):
            registry.unsubscribe(conn, topic)
            conn.send_json({"type": "unsubscribed", "topic": topic, "reason": "forbidden"})


def handle_publish(conn, message: dict) -> None:
    topic = message.get("topic")
    ref = request_ref(message)
    problem = topic_error(topic)
    if problem is not None:
        _refuse(conn, "bad_request", problem, topic, ref)
        return
    if "data" not in message:
        _refuse(conn, "bad_request", "publish needs data", topic, ref)
        return
    if not may_publish(conn.identity, topic):
        _refuse(conn, "forbidden", "you may not publish to this topic", topic, ref)
        return
    gateway = conn.gateway
    d = gateway.history.append(
        [history.topic_stream(topic)],
        publication(topic, message["data"], conn.user_id, gateway.timestamp()))
    d.addCallback(lambda stored: gateway.broker.publish(publication_event_text(topic, stored[1])))

    def failed(failure):
        _log.warn("a client publication was refused by the broker: {error}",
                  error=failure.getErrorMessage())
        _refuse(conn, "unavailable", "the publication could not be delivered; try again",
                topic, ref)

    d.addErrback(failed)
