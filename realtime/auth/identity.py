"""
Who a connection is, and how an authentication fails: :class:`Identity` (the user as one
connection knows them), :class:`AuthFailure` (the reason a client is told, and its close
code: 4001, or 4101 when CouchDB or Redis could not answer), :class:`OriginRefused`, the
token id that names a token for revocation, and the limits every way of checking a token
shares.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional, Tuple

from realtime.vocabulary import CLOSE_AUTH_UNAVAILABLE, CLOSE_UNAUTHORIZED

MAX_TOKEN_LENGTH = 16384
#: the latest exp accepted (seconds since the epoch: year 5138); revocations use it too
MAX_EXP = 1e11
#: clock skew tolerated on exp, nbf and iat (and so on a live connection's expiry)
JWT_LEEWAY_SECONDS = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated user, as one connection knows them."""

    user_id: str
    name: str
    roles: Tuple[str, ...] = ()
    method: str = "jwt"  # "jwt" or "cookie"
    expires_at: Optional[float] = None  # seconds since the epoch, for JWTs
    token_id: Optional[str] = None  # jti, or a hash of the token: never the token itself
    topics: Tuple[str, ...] = ()  # topic grants from the JWT ``topics`` claim
    cookie: Optional[str] = dataclasses.field(default=None, repr=False, compare=False)

    def public(self) -> dict:
        return {"id": self.user_id, "name": self.name, "roles": list(self.roles)}

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles or "_admin" in self.roles


class AuthFailure(Exception):
    def __init__(self, reason: str = "auth-failed", detail: str = ""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    @property
    def close_code(self) -> int:
        return CLOSE_AUTH_UNAVAILABLE if self.reason == "unavailable" else CLOSE_UNAUTHORIZED


class OriginRefused(Exception):
    """Cookie credentials from an Origin that is not allowed (HTTP 403 at the handshake)."""


def token_id(claims: dict, token: str) -> str:
    """
    What names a token for revocation: ``jti:<jti>``, or ``sha256:`` of its signed part
    (``header.payload``).  Not of the whole text: the same token can be written with a
    different signature text (base64 padding, for one) and still verify, while the signed
    part is exactly what the signature covers.
    """
    jti = claims.get("jti")
    if isinstance(jti, str) and jti:
        return "jti:" + jti
    signed_part = token.strip().rsplit(".", 1)[0]
    return "sha256:" + hashlib.sha256(signed_part.encode("utf-8")).hexdigest()
