"""
The document-write messages of one connection: ``doc.create``, ``doc.update``,
``doc.delete``.

A connection hands each such message (once authenticated) to its :class:`DocWrites`,
made on the first write (an idle connection carries none), which passes it to the
gateway's :class:`realtime.databases.writer.DocumentWriter` with the connection's
identity at that moment, and sends the answer (``doc.created`` / ``doc.updated`` /
``doc.deleted`` or ``error``, each with the request's ``ref``) when CouchDB has answered.
Answers may come in another order than the requests: match them by ``ref``.

Limits: each write is a client message and already counted by the connection's rate
limit; besides, at most :data:`MAX_PENDING_WRITES` writes of one connection may wait for
CouchDB at once, and one more is refused at once with ``error`` ``rate_limited`` (so a
client cannot pile requests up against a slow CouchDB).  A connection that closes before
its answers arrive does not get them; its writes still complete (or not) in CouchDB, and
the feed tells every reader.
"""

from __future__ import annotations

from twisted.logger import Logger

from realtime.databases.writes import valid_ref

#: writes of one connection that may wait for CouchDB at once
MAX_PENDING_WRITES = 16


class DocWrites:
    """
    The pending writes of one connection.

    :param writer: a ``DocumentWriter`` (``write(user_id, roles, message)`` -> Deferred of
        the answer, never failing), or None when no database takes writes.
    :param send: sends a message (dict) to the connection.
    :param count_error: called with the code of every ``error`` answer (metrics).
    """

    __slots__ = ("_writer", "_send", "_count_error", "pending")

    _log = Logger()

    def __init__(self, writer, send, count_error=lambda code: None):
        self._writer = writer
        self._send = send
        self._count_error = count_error
        self.pending = 0

    def handle(self, user_id: str, roles, message: dict) -> None:
        """Start one write for the user (with the roles held now); answered when known."""
        if self._writer is None:
            self._answer(_error("forbidden", "no database takes writes through the gateway",
                                message))
            return
        if self.pending >= MAX_PENDING_WRITES:
            self._answer(_error("rate_limited", f"at most {MAX_PENDING_WRITES} writes may "
                                "wait for CouchDB at once", message))
            return
        self.pending += 1
        d = self._writer.write(user_id, roles, message)
        d.addErrback(self._failed, message)
        d.addCallback(self._done)

    def _done(self, answer: dict) -> None:
        self.pending -= 1
        self._answer(answer)

    def _failed(self, failure, message):
        self._log.failure("a document write failed", failure)
        return _error("unavailable", "the write failed", message, written="unknown")

    def _answer(self, answer: dict) -> None:
        if answer.get("type") == "error":
            self._count_error(answer.get("code"))
        self._send(answer)


def _error(code: str, text: str, message: dict, **extra) -> dict:
    answer = {"type": "error", "code": code, "message": text, **extra}
    ref = valid_ref(message.get("ref"))
    if ref is not None:
        answer["ref"] = ref
    return answer
