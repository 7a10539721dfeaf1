"""
``GET /websocket/admin/summary`` (admin credentials): what the dashboard (``/admin``) needs
beyond ``/websocket/status`` and ``/metrics``, which describe only the process that answers.

Answer::

    {"process": <the id of the process that answered>,
     "processes": [{"id", "authenticated", "users"}, ...],   every live process, by id
     "connections": {"total", "authenticated"},               this process
     "topics": <topics with a subscriber on this process>}

``processes`` comes from presence: with Redis, each live process's share of the
authenticated connections and users (a process killed without a goodbye drops out when its
lease expires, ``REALTIME_PRESENCE_TTL_MS``); without Redis, this one process.  A user
connected to two processes counts in both.  503 when presence cannot answer (Redis away).
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from realtime.http.endpoint import Endpoint, HTTPError


class AdminSummary(Endpoint):
    @inlineCallbacks
    def handle_GET(self, request):
        api = self.api
        yield api.credentials.require_admin(request)
        gateway = api.gateway
        presence = gateway.presence
        try:
            counts = yield presence.process_counts()
        except Exception:
            raise HTTPError(503, "unavailable",
                            "the processes cannot be counted now; try again") from None
        return (200, {
            "process": presence.process_id,
            "processes": [{"id": pid, **share} for pid, share in sorted(counts.items())],
            "connections": {"total": gateway.open_connections,
                            "authenticated": len(gateway.registry)},
            "topics": gateway.registry.topic_count(),
        })
