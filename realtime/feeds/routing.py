"""
Routing: pure functions from a ``_changes`` row to (recipients, message).

``_users``: the document ``org.couchdb.user:NAME`` goes to user NAME only, as a
``user-change`` message, with every authentication field removed.  A deletion goes out as
``deleted: true`` with no document.  ``_design/`` and ``_local/`` documents, and any other
document of ``_users``, go to nobody.

Application databases (routing by configured fields of the doc) come later; a database with
no router returns no recipients.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Tuple

from realtime.vocabulary import utc_timestamp

USERS_DB = "_users"
USER_PREFIX = "org.couchdb.user:"

#: Fields of a ``_users`` document that never leave the server.
SECRET_USER_FIELDS = frozenset({
    "password", "password_sha", "password_scheme", "salt", "derived_key",
    "iterations", "pbkdf2_prf",
})


def sanitize_user_doc(doc: dict) -> dict:
    """A copy of a ``_users`` document without its authentication fields."""
    return {key: value for key, value in doc.items() if key not in SECRET_USER_FIELDS}


def is_internal(doc_id: str) -> bool:
    return doc_id.startswith("_design/") or doc_id.startswith("_local/")


def route_users_change(change: dict, now: float) -> Tuple[Tuple[str, ...], Optional[dict]]:
    """
    Route a change of the ``_users`` database.

    :return: ``(recipients, message)``; ``((), None)`` when nobody gets it.
    """
    doc_id = change.get("id")
    if not isinstance(doc_id, str) or not doc_id.startswith(USER_PREFIX) or is_internal(doc_id):
        return (), None
    name = doc_id[len(USER_PREFIX):]
    if not name:
        return (), None
    message = {"type": "user-change", "id": doc_id, "seq": change.get("seq")}
    doc = change.get("doc")
    if change.get("deleted") or (isinstance(doc, dict) and doc.get("_deleted")):
        message["deleted"] = True
    elif isinstance(doc, dict):
        message["doc"] = sanitize_user_doc(doc)
    else:
        # No document (include_docs off, or a conflict stub): nothing safe to send.
        return (), None
    message["timestamp"] = utc_timestamp(now)
    return (name,), message


Router = Callable[[dict, float], Tuple[Iterable[str], Optional[dict]]]


def router_for(db: str) -> Router:
    """The routing function for a watched database."""
    if db == USERS_DB:
        return route_users_change
    return _route_nothing


def _route_nothing(change: dict, now: float):
    return (), None
