"""
Who may subscribe to, publish on, and read what: every such decision in one place.

Topics (:func:`may_subscribe`, decided from the identity alone):

- ``user:<id>``: that user only, whatever the grants (a ``*`` or ``user:*`` grant, as a
  moderator's token might carry, does not open another user's: what an application
  publishes there, and its history, is that user's);
- ``public:<name>``: any authenticated user;
- a topic granted by the JWT ``topics`` claim (:attr:`Identity.topics`): an exact name, or
  ``prefix*`` for every topic starting with ``prefix`` (``*`` alone grants every topic);
- the database topics ``doc:<db>/<docid>`` and ``db:<db>`` are never opened by a grant:
  they are decided by the document access rules, against CouchDB, at subscribe time
  (:meth:`realtime.databases.rules.DatabaseRule.may_read`, by
  :mod:`realtime.databases.application`).  A grant
  of ``*`` does not open them: a subscription is what tells a client that a document
  changed or was removed, so it must never exist for a document the user may not read.

Publishing (:func:`may_publish`): wherever the client may subscribe, except database
topics, which only the gateway writes to (a client cannot forge document changes).

Documents: the database's rule gives the readers of each revision (principals), matched
with the roles the connection holds at that moment (:mod:`realtime.databases.rules`; an
``access`` callable that fails means no).
"""

from __future__ import annotations

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
    if topic.startswith(USER_PREFIX):
        return topic[len(USER_PREFIX):] == identity.user_id
    if topic.startswith(PUBLIC_PREFIX) and len(topic) > len(PUBLIC_PREFIX):
        return True
    return any(grant_matches(grant, topic) for grant in identity.topics)


def may_publish(identity, topic: str) -> bool:
    """Where the client may subscribe, except database topics (never published to)."""
    return not is_database_topic(topic) and may_subscribe(identity, topic)
