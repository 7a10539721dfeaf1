"""
Keeping a live connection's credentials valid: JWT expiry, revocation re-checks and cookie
revalidation.

One :class:`SessionWatch` per authenticated connection, on an injected clock.

- A JWT identity: at the token's ``exp`` (plus the same 5 s leeway for clock skew that was
  allowed when the token was accepted, so that an accepted token is never closed at once)
  the connection is told ``auth_failed`` reason ``token-expired`` and closed 4001, unless
  the client has sent ``auth`` with a fresh token for the same user first — :meth:`watch`
  with the new identity moves the timer.
- A JWT identity, when a revocation store is configured: besides the broker event that
  closes a revoked token's connections at once, the token is looked up in the store every
  ``revalidate_interval`` (5 minutes), so a revocation whose event was lost (Redis pub/sub
  is at-most-once) still closes the connection (``revoked``, 4001) within that period.
- A cookie identity: the CouchDB session is checked again every ``revalidate_interval``
  with ``GET /_session`` (adopting the refreshed cookie CouchDB may set, so an active
  session stays alive as it would in a browser).  CouchDB answering "no session" (or
  another user) closes 4001 with reason ``token-expired``: the session this connection was
  opened with has ended, and the client should log in again.
- CouchDB (or the revocation store) unreachable during a check: the connection is kept and
  the check retried every ``retry_interval`` (30 s); when no answer has come ``grace``
  (5 minutes) after the check became due, the connection is closed with ``unavailable``
  (4101, reconnect with backoff).  Decision: a short outage must not disconnect every
  client at once (they would all reconnect together, and fail, while it is down), but
  credentials are never trusted unchecked for much longer than one period.

``on_failure(AuthFailure)`` is called at most once; after it the watch is stopped.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from realtime.auth.identity import JWT_LEEWAY_SECONDS, AuthFailure, Identity

REVALIDATE_SECONDS = 300.0
RETRY_SECONDS = 30.0
GRACE_SECONDS = 300.0


class SessionWatch:
    _log = Logger()
    # one per connection: no per-instance __dict__
    __slots__ = ("_check_timer", "_clock", "_due_since", "_generation", "_on_failure",
                 "_revocations", "_session_checker", "_timer", "grace", "identity", "leeway",
                 "retry_interval", "revalidate_interval", "stopped")

    def __init__(self, clock, on_failure: Callable[[AuthFailure], None],
                 session_checker=None, revalidate_interval: float = REVALIDATE_SECONDS,
                 retry_interval: float = RETRY_SECONDS, grace: float = GRACE_SECONDS,
                 leeway: float = JWT_LEEWAY_SECONDS, revocations=None):
        self._clock = clock
        self._on_failure = on_failure
        self._session_checker = session_checker
        self._revocations = revocations
        self.revalidate_interval = revalidate_interval
        self.retry_interval = retry_interval
        self.grace = grace
        self.leeway = leeway
        self.identity: Optional[Identity] = None
        self._timer = None  # the expiry
        self._check_timer = None  # the next revalidation / revocation check
        self._due_since: Optional[float] = None
        self._generation = 0  # invalidates checks in flight when the identity changes
        self.stopped = False

    def watch(self, identity: Identity) -> None:
        """Start, or restart with a refreshed identity."""
        if self.stopped:
            return
        self._cancel()
        self._generation += 1
        self.identity = identity
        self._due_since = None
        if identity.method != "cookie" and identity.expires_at is not None:
            delay = identity.expires_at + self.leeway - self._clock.seconds()
            self._timer = self._clock.callLater(max(0.0, delay), self._expired)
        if self._checkable(identity):
            self._check_timer = self._clock.callLater(self.revalidate_interval, self._check)

    def stop(self) -> None:
        self.stopped = True
        self._cancel()
        self._generation += 1

    # -- internals ----------------------------------------------------------------------

    def _checkable(self, identity: Identity) -> bool:
        if identity.method == "cookie":
            return bool(identity.cookie) and self._session_checker is not None
        return identity.token_id is not None and self._revocations is not None

    def _cancel(self) -> None:
        for timer in (self._timer, self._check_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._check_timer = None

    def _fail(self, failure: AuthFailure) -> None:
        if self.stopped:
            return
        self.stop()
        try:
            self._on_failure(failure)
        except Exception:
            self._log.failure("closing a connection whose credentials ended failed")

    def _expired(self) -> None:
        self._timer = None
        self._fail(AuthFailure("token-expired", "token expired"))

    def _check(self) -> None:
        self._check_timer = None
        if self._due_since is None:
            self._due_since = self._clock.seconds()
        generation = self._generation
        identity = self.identity
        if identity.method == "cookie":
            d = maybeDeferred(self._session_checker.check, identity.cookie)
            d.addCallback(lambda fresh: self._session_checked(generation, identity, fresh))
        else:
            d = maybeDeferred(self._revocations.is_revoked, identity.token_id)
            d.addCallback(lambda revoked: self._revocation_checked(generation, revoked))
        d.addErrback(lambda f: self._check_failed(generation, f))
        d.addErrback(lambda f: self._log.failure("checking live credentials failed", f))

    def _current(self, generation: int) -> bool:
        return generation == self._generation and not self.stopped

    def _passed(self) -> None:
        self._due_since = None
        self._check_timer = self._clock.callLater(self.revalidate_interval, self._check)

    def _session_checked(self, generation: int, identity: Identity, fresh: Identity) -> None:
        if not self._current(generation):
            return
        if fresh.user_id != identity.user_id:
            self._fail(AuthFailure("auth-failed", "the session names another user"))
            return
        self.identity = fresh
        self._passed()

    def _revocation_checked(self, generation: int, revoked) -> None:
        if not self._current(generation):
            return
        if revoked:
            self._fail(AuthFailure("revoked", "token revoked"))
            return
        self._passed()

    def _check_failed(self, generation: int, failure) -> None:
        if not self._current(generation):
            return
        reason = failure.value.reason if failure.check(AuthFailure) else "unavailable"
        if reason != "unavailable":
            self._fail(AuthFailure("token-expired", "the CouchDB session has ended"))
            return
        if self._clock.seconds() - self._due_since >= self.grace:
            self._fail(AuthFailure("unavailable", "credentials cannot be checked"))
            return
        self._log.info("live credentials check unavailable; retrying")
        self._check_timer = self._clock.callLater(self.retry_interval, self._check)
