"""
``python -m realtime.token USER`` (also installed as ``realtime-token``): print a JWT for a
test user, signed with the gateway's ``JWT_SECRET``.

It reads the same settings as the gateway (environment, then the defaults of
:mod:`realtime.config`): the secret, the first HMAC algorithm of ``JWT_ALGORITHMS``
(default ``HS256``), ``JWT_AUDIENCE`` / ``JWT_ISSUER`` when set, and the claim names
``JWT_USER_CLAIM`` / ``JWT_ROLES_CLAIM``; so a token it prints is one the gateway started
with the same environment accepts.  Only the token goes to stdout (``TOKEN=$(python -m
realtime.token demo)``).  Without ``JWT_SECRET`` it says so on stderr and exits with 2:
tokens for public-key or JWKS setups are minted by whoever holds the private key.

Meant for trying the gateway and for tests, not as an identity provider.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time

import jwt

from realtime import config as config_module

EXIT_USAGE = 2


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m realtime.token",
        description="Print a JWT for USER, signed with JWT_SECRET (read from the environment).")
    parser.add_argument("user", help="the user id (the JWT_USER_CLAIM claim, default sub)")
    parser.add_argument("--name", help="display name (the name claim; default: the user id)")
    parser.add_argument("--roles", default="",
                        help="comma-separated roles (admin gives the REST admin API)")
    parser.add_argument("--topics", default="",
                        help="comma-separated topic grants (exact names or prefix*)")
    parser.add_argument("--ttl", type=int, default=3600,
                        help="seconds until the token expires (default 3600)")
    parser.add_argument("--jti", action="store_true",
                        help="give the token a random jti (revocable by id)")
    return parser


def mint(config, user: str, ttl: int = 3600, roles=(), topics=(), name=None, jti=None,
         now=None) -> str:
    """A JWT the gateway configured with ``config`` accepts for ``user``."""
    if not config.jwt_secret:
        raise ValueError("JWT_SECRET is not set: the gateway does not take HMAC tokens")
    algorithms = [a for a in (config.jwt_algorithms or ("HS256",)) if a.startswith("HS")]
    if not algorithms:
        raise ValueError("JWT_ALGORITHMS allows no HMAC algorithm (HS256, HS384, HS512)")
    issued = int(time.time() if now is None else now)
    claims = {config.jwt_user_claim: user, "iat": issued, "exp": issued + ttl}
    if roles:
        claims[config.jwt_roles_claim] = list(roles)
    if topics:
        claims["topics"] = list(topics)
    if name:
        claims["name"] = name
    if jti:
        claims["jti"] = jti
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    return jwt.encode(claims, config.jwt_secret, algorithm=algorithms[0])


def _split(text: str) -> list:
    return [item.strip() for item in text.split(",") if item.strip()]


def main(argv=None, environ=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        config = config_module.load({}, os.environ if environ is None else environ)
        if args.ttl <= 0:
            raise ValueError("--ttl must be a positive number of seconds")
        token = mint(config, args.user, ttl=args.ttl, roles=_split(args.roles),
                     topics=_split(args.topics), name=args.name,
                     jti=secrets.token_hex(8) if args.jti else None)
    except ValueError as e:  # ConfigError is one
        sys.stderr.write(f"realtime.token: {e}\n")
        return EXIT_USAGE
    sys.stdout.write(token + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
