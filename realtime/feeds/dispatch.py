"""
Dispatch of CouchDB changes: what each followed database's change becomes, delivered to
this process's connections.

Every process follows CouchDB itself, so changes never cross the broker: a change is routed
and handed to the local registry (``registry.dispatch``), which frames it once for all its
recipients.

- An application database of the rule file (``databases``, a
  :class:`realtime.databases.application.ApplicationDatabases`) routes its own changes;
  its answer may be a Deferred (the previous readers are read from CouchDB: the feed waits
  for it).
- ``_users`` (and any other followed database without a rule): :mod:`realtime.feeds.routing`
  decides the recipients and the message.  A ``_users`` change also carries the user's
  roles to that user's live connections (:meth:`ChangeDispatch.user_roles_changed`): they
  replace the roles of its token or session for reading application documents.

The registry and the application databases are given, never imported: this module sits
below ``hub`` and ``databases`` (docs/DEVELOPING.rst, "Layout of the code").
"""

from __future__ import annotations

import dataclasses

from twisted.logger import Logger

from realtime import jsonutil
from realtime.feeds.routing import USERS_DB, router_for
from realtime.vocabulary import users_event


class ChangeDispatch:
    """
    ``on_change(db, change)`` for every followed database (the changes followers' callback).

    :param registry: the process's connections (``dispatch``, ``connections_of``,
        ``reindex_roles``).
    :param clock: gives the timestamps of the messages.
    :param databases: the application databases, or None when the rule file names none.
    """

    _log = Logger()

    def __init__(self, registry, clock, databases=None):
        self._registry = registry
        self._clock = clock
        self._databases = databases

    def on_change(self, db: str, change: dict):
        """
        Route one change and deliver it to this process's connections.  An application
        database's change may return a Deferred; otherwise the deliveries made are returned.
        """
        databases = self._databases
        if databases is not None and db in databases:
            return databases.on_change(db, change)
        recipients, message = router_for(db)(change, self._clock.seconds())
        recipients = list(recipients)
        delivered = 0
        if message is not None and recipients:
            event = users_event(recipients, jsonutil.dumps_text(message), message["type"])
            delivered = self._registry.dispatch(event)  # counted by the registry hook
        if db == USERS_DB and message is not None:
            doc = change.get("doc")
            roles = ()
            if "doc" in message and isinstance(doc, dict) and isinstance(doc.get("roles"), list):
                roles = tuple(r for r in doc["roles"] if isinstance(r, str))
            self.user_roles_changed(recipients[0], roles)
        return delivered

    def user_roles_changed(self, user_id: str, roles) -> None:
        """
        The user's ``_users`` document now gives these roles (none when it was deleted):
        every live connection of the user holds them from now on (they replace the roles
        of its token or session), for reading application documents; a role lost is
        answered as :meth:`ApplicationDatabases.roles_changed` says.
        """
        roles = tuple(roles)
        for conn in self._registry.connections_of(user_id):
            if tuple(conn.roles) == roles:
                continue
            old = tuple(conn.roles)
            conn.identity = dataclasses.replace(conn.identity, roles=roles)
            self.connection_roles_changed(conn, old)

    def connection_roles_changed(self, conn, old_roles) -> None:
        """A connection's roles changed (``_users`` document, refreshed token): it holds
        them from now on (``roles_since``: see :mod:`realtime.databases.routing`)."""
        old_since, conn.roles_since = conn.roles_since, self._clock.seconds()
        self._registry.reindex_roles(conn)
        if self._databases is not None:
            try:
                self._databases.roles_changed(conn, old_roles, old_since)
            except Exception:
                self._log.failure("applying a change of roles failed")
