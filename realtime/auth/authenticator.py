"""
Who is connecting: credentials from a WebSocket handshake, checked.

Order (first match wins, and a match that fails does not fall through to the next):

1. ``Authorization: Bearer <JWT>`` header;
2. ``token=<JWT>`` query parameter;
3. ``AuthSession`` cookie, checked with ``GET /_session`` on CouchDB: valid only when
   ``userCtx.name`` is a string.  Refused at the handshake (HTTP 403) when the request has
   an ``Origin`` that is neither the gateway's own (the ``Host`` the request was sent to:
   a page the gateway serves itself, such as ``/demo``) nor in the allowed origins: a
   browser sends cookies on cross-site WebSocket requests, so this is the guard against
   cross-site WebSocket hijacking.  A request with no ``Origin`` is not from a browser and
   is not subject to it;
4. none of these: no identity yet (the client may send an ``auth`` message).

Every failure is an :class:`AuthFailure` with the reason the client is told
(``auth-failed``, ``token-expired``, ``revoked``, ``timeout``, ``unavailable``) and the close
code (4001; 4101 when CouchDB or Redis cannot answer: the answer is then no).

JWTs are verified by :class:`realtime.auth.jwt_verifier.JWTVerifier`, cookies by
:class:`realtime.auth.couchsession.CouchSessionChecker`.
Revocation (:mod:`realtime.auth.revocation`) is checked after the signature, for every way a
token arrives (handshake, ``auth`` message, refresh); a revocation store that cannot answer
refuses (``unavailable``, 4101).  Credentials that end on a live connection:
:mod:`realtime.auth.expiry`.

Nothing here logs a token or cookie.  A refused JWT is logged once, at info level, by
:meth:`Authenticator.verify_token` (every way a token arrives goes through it), with the
reason in words and the token named by
:func:`~realtime.auth.jwt_verifier.token_reference`, never shown.
"""

from __future__ import annotations

from typing import Iterable, Optional, Tuple

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from realtime.auth.expiry import SessionWatch
from realtime.auth.identity import AuthFailure, Identity, OriginRefused
from realtime.auth.jwt_verifier import token_reference
from realtime.auth.origins import cookie_value, origin_allowed, same_origin


def log_refusal(log: Logger, refusal: AuthFailure, reference: str) -> None:
    """The one log line of a refused JWT: its reason, in words, and the token named by
    ``reference`` (:func:`~realtime.auth.jwt_verifier.token_reference`, or
    ``token_id_reference`` of a verified token refused later, at its admission)."""
    log.info("JWT refused ({reason}): {detail}; token {token}",
             reason=refusal.reason, detail=refusal.detail or refusal.reason, token=reference)


class Authenticator:
    """
    Turns handshake credentials into an :class:`Identity`.

    :param jwt_verifier: a :class:`~realtime.auth.jwt_verifier.JWTVerifier` (or anything
        with ``verify(token)``), or None when JWT auth is off.
    :param session_checker: a :class:`~realtime.auth.couchsession.CouchSessionChecker`, or None.
    :param revocations: optional object with ``is_revoked(token_id) -> Deferred[bool]``.
    """

    def __init__(self, jwt_verifier=None, session_checker=None,
                 allowed_origins: Iterable[str] = (), revocations=None):
        self.jwt_verifier = jwt_verifier
        self.session_checker = session_checker
        self.allowed_origins = tuple(allowed_origins)
        self.revocations = revocations

    def watch(self, clock, on_failure, revalidate_interval: float) -> SessionWatch:
        """
        A watch on one connection's credentials (:class:`SessionWatch`: expiry, the CouchDB
        session's revalidation, and the periodic revocation re-check when this store needs
        one: see its ``recheck_live_connections``).
        """
        revocations = self.revocations
        if revocations is not None and not revocations.recheck_live_connections:
            revocations = None
        return SessionWatch(clock, on_failure, self.session_checker,
                            revalidate_interval=revalidate_interval, revocations=revocations)

    def credentials(self, headers: dict, params: dict) -> Tuple[Optional[str], Optional[str]]:
        """
        ``(kind, secret)`` from handshake headers (lower-case names) and query parameters
        (name -> list of values): kind is ``"jwt"``, ``"cookie"`` or None.
        """
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, value = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return "jwt", value.strip()
        tokens = params.get("token") if params else None
        if tokens:
            return "jwt", tokens[0]
        cookie = cookie_value(headers.get("cookie"))
        if cookie:
            return "cookie", cookie
        return None, None

    def authenticate(self, headers: dict, params: dict, origin: Optional[str]) -> Deferred:
        """
        Fires with an Identity, or None when no credentials were given; fails with
        AuthFailure, or OriginRefused (synchronously checked, before any I/O).
        """
        return maybeDeferred(self.authenticate_now, headers, params, origin)

    def authenticate_now(self, headers: dict, params: dict, origin: Optional[str],
                         revocation_later: bool = False):
        """
        :meth:`authenticate`, answered at once when no I/O is needed: the Identity, or None
        (no credentials); raises AuthFailure or OriginRefused.  When the answer needs I/O
        (a CouchDB session, a JWKS key, a revocation store that must be asked) it returns a
        Deferred, as :meth:`authenticate` does.  Connection setup uses it: the handshake of
        a JWT checked with the static key then makes no Deferred at all.

        ``revocation_later``: a JWT's revocation is not looked up here; the caller has it
        checked by the connection's admission, in the same Redis round trip
        (``Gateway.revocation_at_admission``).  Only the handshake passes it, and only when
        admission will check; every other way a token arrives is checked here.
        """
        kind, secret = self.credentials(headers, params)
        if kind is None:
            return None
        if kind == "cookie":
            if not (same_origin(origin, headers.get("host"))
                    or origin_allowed(origin, self.allowed_origins)):
                raise OriginRefused(origin)
            if self.session_checker is None:
                raise AuthFailure("auth-failed", "cookie auth is off")
            return self._checked(self.session_checker.check(secret))
        return self.verify_token_now(secret, revocation_later)

    _log = Logger()

    def verify_token(self, token: str) -> Deferred:
        """
        A JWT (handshake, ``auth`` message, REST Bearer) -> Identity, or AuthFailure; a
        refusal is logged at info level with its reason and :func:`token_reference`.
        """
        return maybeDeferred(self.verify_token_now, token)

    def verify_token_now(self, token: str, revocation_later: bool = False):
        """
        :meth:`verify_token`, answered at once when it can be: the Identity, or raises
        AuthFailure (logged); a Deferred when the key or the revocation store must be asked.
        ``revocation_later``: see :meth:`authenticate_now`.
        """
        verifier = self.jwt_verifier
        if verifier is None:
            raise self._logged(AuthFailure("auth-failed", "JWT auth is off (no JWT_SECRET, "
                                                          "JWT_PUBLIC_KEY or JWT_JWKS_URL)"),
                               token)
        if not getattr(verifier, "synchronous", False):
            d = verifier.verify(token)
            if not revocation_later:
                d = self._checked(d)
            return d.addErrback(self._log_refusal, token)
        try:
            identity = verifier.verify_now(token)
        except AuthFailure as refusal:
            self._logged(refusal, token)
            raise
        if revocation_later:
            return identity
        revoked = self._revoked_now(identity)
        if revoked is None:  # the store must be asked
            return self._not_revoked(identity).addErrback(self._log_refusal, token)
        if revoked:
            raise self._logged(AuthFailure("revoked", "token revoked"), token)
        return identity

    def _revoked_now(self, identity: Identity) -> Optional[bool]:
        """Whether the identity's token is revoked, if the store can say at once (None:
        it must be asked)."""
        if self.revocations is None or identity.token_id is None:
            return False
        revoked_now = getattr(self.revocations, "revoked_now", None)
        return None if revoked_now is None else revoked_now(identity.token_id)

    def _logged(self, refusal: AuthFailure, token) -> AuthFailure:
        """``refusal``, once logged (see :meth:`verify_token`)."""
        log_refusal(self._log, refusal, token_reference(token))
        return refusal

    def _log_refusal(self, failure, token):
        if failure.check(AuthFailure):
            self._logged(failure.value, token)
        return failure

    def check_revocation(self, identity: Identity) -> Deferred:
        """Fires with ``identity`` once the store has said its token is not revoked; fails
        with AuthFailure ("revoked", or "unavailable" when the store cannot answer)."""
        if self.revocations is None:
            return maybeDeferred(lambda: identity)
        return maybeDeferred(self._not_revoked, identity)

    def _checked(self, d: Deferred) -> Deferred:
        if self.revocations is None:
            return d
        return d.addCallback(self._not_revoked)

    def _not_revoked(self, identity: Identity):
        """``identity``, once the revocation store has said its token is not revoked."""
        if identity.token_id is None:
            return identity

        def answered(revoked):
            if revoked:
                raise AuthFailure("revoked", "token revoked")
            return identity

        def unanswered(_failure):
            raise AuthFailure("unavailable", "revocation store unreachable")

        return maybeDeferred(self.revocations.is_revoked, identity.token_id).addCallbacks(
            answered, unanswered)
