"""
Keys for JWTs from a JWKS URL, fetched with treq (never a blocking call on the reactor).

PyJWT's ``PyJWKClient`` is synchronous (urllib) and would block the reactor, so the set is
fetched here with an injected treq client and built with ``jwt.PyJWKSet.from_dict``.

Behaviour:

- the set is fetched on first use, then cached;
- a token whose ``kid`` is not in the cached set triggers a refetch, at most once per
  ``min_refetch_interval`` (30 s) whatever the number of such tokens, and concurrent
  lookups share one fetch; a cached set older than ``max_age`` (10 min) is refreshed on
  the next lookup the same way;
- a token without ``kid`` is accepted only when the set holds exactly one key that can
  verify its algorithm (a common single-key setup); otherwise it fails;
- ``kid`` must be a short printable string; anything else fails without any fetch;
- when a fetch fails (unreachable, non-200, not a JWKS, larger than ``max_bytes``) the
  previous keys stay in use; a key that cannot be found because the JWKS URL cannot be
  reached is ``unavailable`` (close 4101: retry later), a key that the set reachably does
  not have is ``auth-failed``.

Failures are :class:`realtime.auth.identity.AuthFailure`; nothing here logs a token.
"""

from __future__ import annotations

from typing import Dict, Optional

import jwt
import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from realtime import jsonutil
from realtime.auth.identity import AuthFailure

MAX_KID_LENGTH = 256


class JWKSUnavailable(Exception):
    """The JWKS URL could not be read (network, status, body)."""


def keys_from_jwks(document) -> Dict[Optional[str], jwt.PyJWK]:
    """
    ``kid`` -> ``PyJWK`` for every usable signing key of a JWKS document (a dict).  Keys of
    unknown types or meant for encryption (``use: enc``) are skipped.  Raises ValueError when
    the document is not a JWKS or holds no usable key.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    try:
        keyset = jwt.PyJWKSet.from_dict(document)
    except (jwt.PyJWKSetError, jwt.PyJWKError, TypeError, ValueError, KeyError) as e:
        raise ValueError(f"no usable key ({type(e).__name__})") from None
    keys = {}
    for key in keyset.keys:
        if getattr(key, "public_key_use", None) == "enc":
            continue
        kid = key.key_id if isinstance(key.key_id, str) else None
        keys[kid] = key
    if not keys:
        raise ValueError("no usable signing key")
    return keys


class JWKSKeySource:
    """
    :param http: a treq ``HTTPClient`` (or the ``treq`` module).
    :param url: the JWKS URL (https: the default Agent verifies the certificate and host).
    :param clock: ``IReactorTime`` (also passed to treq as its reactor for timeouts).
    """

    _log = Logger()

    def __init__(self, http, url: str, clock, min_refetch_interval: float = 30.0,
                 max_age: float = 600.0, timeout: float = 5.0, max_bytes: int = 1024 * 1024):
        self._http = http
        self._url = url
        self._clock = clock
        self.min_refetch_interval = min_refetch_interval
        self.max_age = max_age
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._keys: Optional[Dict[Optional[str], jwt.PyJWK]] = None
        self._fetched_at: Optional[float] = None  # last successful fetch
        self._attempted_at: Optional[float] = None  # last fetch attempt
        self._last_fetch_failed = False
        self._waiters = []  # callers waiting for the fetch in flight
        self.fetches = 0  # attempts, for tests and metrics
        if url.startswith("http://") and not url.startswith(("http://127.", "http://localhost")):
            self._log.warn("JWT_JWKS_URL is plain HTTP: the keys can be tampered with in transit")

    # -- lookup -------------------------------------------------------------------------

    @inlineCallbacks
    def key_for(self, kid, algorithm: str):
        """A Deferred firing with the ``PyJWK`` for ``kid``, or failing with AuthFailure."""
        if kid is not None and (not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH
                                or not kid.isprintable()):
            raise AuthFailure("auth-failed", "bad kid")
        key = self._find(kid, algorithm)
        if key is None or self._stale():
            if self._may_fetch():
                yield self._fetch()
            key = self._find(kid, algorithm)
        if key is not None:
            return key
        if self._keys is None or self._last_fetch_failed:
            raise AuthFailure("unavailable", "JWKS unreachable and key unknown")
        raise AuthFailure("auth-failed", f"unknown kid {kid[:64]!r}" if kid is not None
                          else f"no key for {algorithm} in the JWKS")

    def _find(self, kid, algorithm):
        if self._keys is None:
            return None
        if kid is not None:
            return self._keys.get(kid)
        usable = [k for k in self._keys.values() if k.algorithm_name == algorithm]
        return usable[0] if len(usable) == 1 and len(self._keys) == 1 else None

    def _stale(self) -> bool:
        return self._fetched_at is not None and \
            self._clock.seconds() - self._fetched_at >= self.max_age

    def _may_fetch(self) -> bool:
        if self._waiters:
            return True
        return self._attempted_at is None or \
            self._clock.seconds() - self._attempted_at >= self.min_refetch_interval

    # -- fetching -----------------------------------------------------------------------

    def _fetch(self) -> Deferred:
        """One fetch at a time; every caller waits for the same one.  Never fails."""
        d = Deferred()
        self._waiters.append(d)
        if len(self._waiters) == 1:
            self._attempted_at = self._clock.seconds()
            self.fetches += 1
            self._do_fetch().addBoth(self._fetched)
        return d

    def _fetched(self, result):
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    @inlineCallbacks
    def _do_fetch(self):
        try:
            response = yield self._http.get(
                self._url, headers={b"Accept": [b"application/json"]},
                timeout=self.timeout, reactor=self._clock)
            if response.code != 200:
                raise JWKSUnavailable(f"JWKS answered {response.code}")
            body = yield _read_limited(response, self.max_bytes)
            keys = keys_from_jwks(jsonutil.loads(body))
        except Exception as e:
            self._last_fetch_failed = True
            self._log.warn("fetching the JWKS failed: {error}", error=_describe(e))
            return
        self._keys = keys
        self._fetched_at = self._clock.seconds()
        self._last_fetch_failed = False
        self._log.info("JWKS loaded: {count} keys", count=len(keys))



def _describe(error: Exception) -> str:
    text = type(error).__name__
    if isinstance(error, (JWKSUnavailable, ValueError)):
        text += f" ({error})"
    return text[:200]


def _read_limited(response, limit: int) -> Deferred:
    """The body, or a failure with JWKSUnavailable when it is larger than ``limit``."""
    chunks = []
    size = [0]

    def collect(data):
        size[0] += len(data)
        if size[0] > limit:
            raise JWKSUnavailable("JWKS body too large")
        chunks.append(data)

    return treq.collect(response, collect).addCallback(lambda _: b"".join(chunks))
