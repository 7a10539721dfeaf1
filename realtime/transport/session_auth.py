"""
How a :class:`realtime.transport.session.Session` authenticates: accepting an identity
(from the handshake or an ``auth`` message), admission by the gateway (per-user limit and
single session across processes; client messages that arrive while it waits for Redis are
held, a few, and handled once admitted), the ``connected`` answer, the end of credentials
(``auth_failed`` and close 4001, or 4101 when CouchDB or Redis could not answer), the auth
timeout, and a refreshed token for the same user.

A mixin of the session: it holds no state of its own (the session's slots hold it).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python.failure import Failure

from realtime.auth.authenticator import log_refusal
from realtime.auth.identity import AuthFailure, Identity
from realtime.auth.jwt_verifier import token_id_reference
from realtime.auth.signing import new_session_secret
from realtime.hub import resume, topics
from realtime.hub.gateway import ADMITTED, REPLACED
from realtime.vocabulary import CLOSE_REPLACED, CLOSE_TOO_MANY_CONNECTIONS, request_ref


class SessionAuthentication:
    """Authentication and admission steps of a session (see the module docstring)."""

    _log = Logger()

    __slots__ = ()

    def _accept(self, identity: Identity, revocation_pending: bool = False) -> None:
        """
        Admit an authenticated connection (per-user limit and single session, across every
        process: see :meth:`Gateway.admit`).  Admission may wait for Redis; client messages
        arriving meanwhile are held (a few) and handled once admitted.  With
        ``revocation_pending`` (a handshake's token, when the gateway checks revocation
        at admission) a revoked token is refused by the admission itself.
        """
        if self._auth_timer is not None and self._auth_timer.active():
            self._auth_timer.cancel()
        self._auth_timer = None
        self._admitting = True
        try:
            verdict = self.gateway.admit_now(self, identity, revocation_pending)
            if not isinstance(verdict, Deferred):  # one process: answered at once
                self._admitted(verdict, identity)
                return
        except Exception:
            self._admission_failed(Failure(), identity)
            return
        self.transport.cork()  # the 101 waits for the answer: one send for both
        verdict.addCallback(self._admitted, identity)
        verdict.addErrback(self._admission_failed, identity)

    def _admitted(self, verdict: str, identity: Identity) -> None:
        self._admitting = False
        self.transport.uncork()
        held, self._held = self._held, ()
        gateway = self.gateway
        config = gateway.config
        if verdict == REPLACED:
            self.close_with(CLOSE_REPLACED, "replaced by a newer session")
            return
        if verdict != ADMITTED:
            self.send_error("too_many_connections",
                            f"at most {config.ws_max_connections_per_user} connections per user")
            self.close_with(CLOSE_TOO_MANY_CONNECTIONS, "too many connections")
            return
        if not self.transport.still_open:  # closed while admission waited
            self.gateway.connection_left(self, identity.user_id)
            return
        if identity.token_id is not None and self.registry.revoked(identity.token_id):
            # revoked while admission waited: the revocation event found no connection
            self.gateway.connection_left(self, identity.user_id)
            self._refuse(AuthFailure("revoked", "token revoked"))
            return
        self._present_as = identity.user_id
        self.roles_since = self.admitted_at = gateway.now()
        self.identity = identity
        self.registry.add(self)
        self._registered = True
        self.transport.lift_auth_limits()
        self._watch = self.authenticator.watch(
            gateway.timers, self.fail_auth, config.ws_session_revalidate_ms / 1000.0)
        self._watch.watch(identity)
        connected = {
            "type": "connected",
            "user": identity.public(),
            "connectionId": self.connection_id,
            "timestamp": gateway.timestamp(),
            "seqs": resume.positions(gateway),
        }
        if config.ws_signed_messages:
            self._session_secret = new_session_secret()
            connected["sessionSecret"] = self._session_secret
        self.send_json(connected)
        for message in held:
            if self.transport.still_open:
                self._handle(message)

    def _admission_failed(self, failure, identity=None) -> None:
        self._admitting = False
        self.transport.uncork()
        self._held = ()
        if failure.check(AuthFailure):  # its token was revoked, or could not be checked
            refusal = failure.value
            log_refusal(self._log, refusal, token_id_reference(identity.token_id or "")
                        if identity is not None else "unknown")
        else:
            self._log.failure("admitting a connection failed", failure)
            refusal = AuthFailure("unavailable", "admission failed")
        if self.transport.still_open:
            self._refuse(refusal)

    def _refuse(self, failure: AuthFailure) -> None:
        if self._watch is not None:
            self._watch.stop()
        self.send_json({"type": "auth_failed", "reason": failure.reason})
        self.close_with(failure.close_code, failure.reason)

    def fail_auth(self, failure: AuthFailure) -> None:
        """The credentials ended (expired, revoked, session gone): ``auth_failed``, close."""
        if self.transport.still_open:
            self._log.info("closing connection {id}: {reason}", id=self.connection_id,
                           reason=failure.reason)
            self._refuse(failure)

    def _auth_timed_out(self) -> None:
        self._auth_timer = None
        if self.identity is None:
            self._refuse(AuthFailure("timeout"))

    @inlineCallbacks
    def handle_auth(self, message: dict):
        token = message.get("token")
        if not isinstance(token, str) or not token:
            self.send_error("bad_request", "auth needs a token", request_ref(message))
            return
        if self._authenticating or self._admitting:
            self.send_error("bad_request", "authentication already in progress",
                            request_ref(message))
            return
        self._authenticating = True
        try:
            identity = yield self.authenticator.verify_token(token)
        except AuthFailure as failure:
            if self.transport.still_open:
                self._refuse(failure)
            return
        except Exception:
            self._log.failure("verifying an auth token failed")
            if self.transport.still_open:
                self._refuse(AuthFailure("unavailable"))
            return
        finally:
            self._authenticating = False
        if not self.transport.still_open:
            return
        if self.identity is None:
            self._accept(identity)
        elif identity.user_id != self.identity.user_id:
            self.send_error("forbidden", "a refreshed token must name the same user",
                            request_ref(message))
        else:
            old_roles = self.roles
            self.identity = identity
            if self._watch is not None:
                self._watch.watch(identity)
            self.send_json({"type": "connected", "user": identity.public(),
                            "connectionId": self.connection_id,
                            "timestamp": self.gateway.timestamp(),
                            "seqs": resume.positions(self.gateway)})
            topics.recheck_subscriptions(self)
            if tuple(identity.roles) != tuple(old_roles):
                self.gateway.connection_roles_changed(self, old_roles)
