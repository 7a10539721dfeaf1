"""Transports: the Autobahn WebSocket adapter, the fast write path, the first-line listener,
per-connection rate limits and the ``reuseport:`` endpoint."""
