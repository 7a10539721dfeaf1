"""
Configuration: one table of every option, read from twistd options and the environment.

Each option has a twistd long name (``--couchdb-url``), an environment name (the names the
seed servers used, e.g. ``COUCHDB_URL``), a default and a converter.  Precedence: a twistd
option given on the command line, then the environment, then the default.

:func:`load` turns that into a frozen :class:`Config`; the rest of the code only ever sees
the ``Config`` (never the environment or the options object).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Optional

from realtime.databases import rulefile, rules
from realtime.redis.url import parse_redis_url


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _list(text: str) -> tuple:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be a positive integer: {text!r}")
    return value


def _optional(text: str) -> Optional[str]:
    return text or None


def _redis_url(text: str) -> Optional[str]:
    """Checked at start-up (a clear error, never showing the password); kept as text."""
    if not text:
        return None
    parse_redis_url(text)
    return text


def _rules(text: str):
    """The rule file, loaded and validated at start-up (one-line error naming file, table
    and key); kept as a :class:`realtime.databases.rules.RuleSet`."""
    if not text:
        return rules.EMPTY
    return rulefile.load_rules(text)


@dataclasses.dataclass(frozen=True)
class Option:
    name: str  # attribute of Config, and twistd option with _ replaced by -
    env: str
    default: Optional[str]
    convert: Callable[[str], Any]
    help: str

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")


OPTIONS = (
    Option("listen", "REALTIME_LISTEN", "tcp:8080", _list,
           "Twisted endpoint string(s) for the web site, comma-separated"),
    Option("couchdb_url", "COUCHDB_URL", "http://127.0.0.1:5984", str,
           "CouchDB base URL"),
    Option("couchdb_admin_auth", "COUCHDB_ADMIN_AUTH", None, _optional,
           "base64 of admin:password, used for _changes and document reads"),
    Option("couchdb_heartbeat_ms", "COUCHDB_HEARTBEAT_MS", "10000", _positive_int,
           "heartbeat asked of _changes; the feed reconnects after 3x this with no byte"),
    Option("watch_databases", "REALTIME_WATCH_DATABASES", "_users", _list,
           "databases whose _changes feed is followed (comma-separated)"),
    Option("config", "REALTIME_CONFIG", "", _rules,
           "TOML rule file: the application databases to follow and who may read them "
           "(docs/databases.rst)"),
    Option("readers_index_size", "REALTIME_READERS_INDEX_SIZE", "100000", _positive_int,
           "documents per application database whose readers are remembered (beyond it, "
           "an access lost is found by reading the previous revision from CouchDB)"),
    Option("ws_heartbeat_ms", "WS_HEARTBEAT_MS", "25000", _positive_int,
           "interval of the server's ping message and WebSocket ping"),
    Option("jwt_secret", "JWT_SECRET", None, _optional,
           "HMAC secret for JWTs (enables JWT auth)"),
    Option("jwt_public_key", "JWT_PUBLIC_KEY", None, _optional,
           "PEM public key, or a path to one, for RS/ES/EdDSA JWTs"),
    Option("jwt_jwks_url", "JWT_JWKS_URL", None, _optional,
           "JWKS URL for RS/ES/EdDSA JWTs"),
    Option("jwt_algorithms", "JWT_ALGORITHMS", None, lambda t: _list(t) or None,
           "comma-separated JWT algorithm allow-list "
           "(default HS256 with a secret, RS256,ES256 with a key or JWKS)"),
    Option("jwt_audience", "JWT_AUDIENCE", None, _optional, "required JWT aud"),
    Option("jwt_issuer", "JWT_ISSUER", None, _optional, "required JWT iss"),
    Option("jwt_user_claim", "JWT_USER_CLAIM", "sub", str, "JWT claim naming the user"),
    Option("jwt_roles_claim", "JWT_ROLES_CLAIM", "roles", str,
           "JWT claim holding the roles list"),
    Option("redis_url", "REDIS_URL", None, _redis_url,
           "Redis URL (redis://[[user]:password@]host[:port][/db], rediss:// for TLS): "
           "set, several processes share work through Redis"),
    Option("redis_prefix", "REDIS_PREFIX", "realtime:", str,
           "prefix of every Redis key and channel"),
    Option("redis_timeout_ms", "REDIS_TIMEOUT_MS", "3000", _positive_int,
           "longest wait for a Redis answer; past it a REST push answers 503"),
    Option("redis_stream_maxlen", "REDIS_STREAM_MAXLEN", "100000", _positive_int,
           "events kept in the Redis stream for processes catching up after a blip"),
    Option("presence_ttl_ms", "REALTIME_PRESENCE_TTL_MS", "30000", _positive_int,
           "presence lease: a process that dies leaves presence within this time"),
    Option("admin_key", "REALTIME_ADMIN_KEY", None, _optional,
           "bearer key for the REST admin API (none: admin API off)"),
    Option("rest_max_body_bytes", "REALTIME_REST_MAX_BODY_BYTES", str(1024 * 1024),
           _positive_int, "largest REST request body; a larger one is answered 413"),
    Option("http_headers_timeout_ms", "REALTIME_HTTP_HEADERS_TIMEOUT_MS", "10000",
           _positive_int, "time an HTTP request has, from its first byte, to send its request "
           "line and headers (408 past it)"),
    Option("http_body_timeout_ms", "REALTIME_HTTP_BODY_TIMEOUT_MS", "30000", _positive_int,
           "time an HTTP request has, once its headers are in, to send its body (408 past it)"),
    Option("http_idle_timeout_ms", "REALTIME_HTTP_IDLE_TIMEOUT_MS", "60000", _positive_int,
           "an idle keep-alive HTTP connection is closed after this long"),
    Option("max_pending_connections", "REALTIME_MAX_PENDING_CONNECTIONS", "256",
           _positive_int, "connections that have not finished their first request (HTTP or "
           "WebSocket handshake); past it a new connection is answered 503 and closed"),
    Option("cors_origins", "CORS_ORIGINS", "", _list,
           "allowed origins, comma-separated (cookie auth and REST)"),
    Option("ws_rate_limit_max_messages", "WS_RATE_LIMIT_MAX_MESSAGES", "300", _positive_int,
           "messages per connection per rate-limit window"),
    Option("ws_rate_limit_window_ms", "WS_RATE_LIMIT_WINDOW_MS", "60000", _positive_int,
           "rate-limit window (sliding), milliseconds"),
    Option("ws_max_connections_per_user", "WS_MAX_CONNECTIONS_PER_USER", "20", _positive_int,
           "connections per user; the next one is closed 4029"),
    Option("ws_max_message_bytes", "WS_MAX_MESSAGE_BYTES", str(1024 * 1024), _positive_int,
           "largest client message; a larger one is closed 1009"),
    Option("ws_auth_timeout_ms", "WS_AUTH_TIMEOUT_MS", "30000", _positive_int,
           "time an unauthenticated connection has to send auth (close 4001)"),
    Option("ws_max_queue_bytes", "WS_MAX_QUEUE_BYTES", str(4 * 1024 * 1024), _positive_int,
           "outgoing bytes held for a client that does not read; past it, close 4100"),
    Option("ws_session_revalidate_ms", "WS_SESSION_REVALIDATE_MS", "300000", _positive_int,
           "how often a live connection's credentials are checked again (cookie: CouchDB "
           "session; JWT: revocation store)"),
    Option("ws_single_session", "WS_SINGLE_SESSION", "false", _bool,
           "a user's new connection replaces the older ones (closed 4004)"),
    Option("ws_signed_messages", "WS_SIGNED_MESSAGES", "false", _bool,
           "every client message after auth must be HMAC-signed"),
    Option("demo", "REALTIME_DEMO", "false", _bool,
           "serve /demo: a page logging in as a CouchDB user and showing, live, what that "
           "user may read (make run sets it)"),
    Option("history_size", "REALTIME_HISTORY_SIZE", "1000", _positive_int,
           "messages kept per user and per topic for resume (REST messages, "
           "notifications, publications)"),
    Option("history_ttl_ms", "REALTIME_HISTORY_TTL_MS", str(24 * 3600 * 1000), _positive_int,
           "how long a message is kept for resume, milliseconds"),
    Option("resume_max_changes", "REALTIME_RESUME_MAX_CHANGES", "100000", _positive_int,
           "most changes one resume reads from one database; past it: recovered false, "
           "too_far_behind"),
    Option("resume_concurrency", "REALTIME_RESUME_CONCURRENCY", "4", _positive_int,
           "resume replays reading CouchDB at once per process; more wait their turn"),
    Option("embedded_couchdb", "REALTIME_EMBEDDED_COUCHDB", "auto", str,
           "auto: start an in-memory pouchdb-server when COUCHDB_URL is unset; "
           "yes / no to force"),
    Option("bench_trigger", "REALTIME_BENCH_TRIGGER", None, _optional,
           "benchmarks only: a loopback endpoint taking unauthenticated fan-out commands "
           "(realtime.dev.benchhook); never set it in production"),
)

_BY_NAME = {option.name: option for option in OPTIONS}


#: option names whose values never appear in a repr (a Config may reach a log or traceback)
_SECRETS = {"couchdb_admin_auth", "jwt_secret", "admin_key", "redis_url"}


def _replace(self, **changes: Any) -> "Config":
    return dataclasses.replace(self, **changes)


def _repr(self) -> str:
    fields = ", ".join(
        f"{f.name}={'<hidden>' if f.name in _SECRETS and getattr(self, f.name) else getattr(self, f.name)!r}"
        for f in dataclasses.fields(self)
    )
    return f"Config({fields})"


#: The settings, one field per option of :data:`OPTIONS` (derived from it, so that an
#: option is declared once).
Config = dataclasses.make_dataclass(
    "Config", [(option.name, Any) for option in OPTIONS], frozen=True,
    namespace={"replace": _replace, "__repr__": _repr,
               "__doc__": "The settings: one frozen field per option of OPTIONS."},
    repr=False)
Config.__module__ = __name__


class ConfigError(ValueError):
    """An option has a value that cannot be used."""


def load(given: Mapping[str, Optional[str]] = (),
         environ: Mapping[str, str] = os.environ) -> Config:
    """
    Build a :class:`Config`.

    :param given: option name (``couchdb_url``) -> text given on the command line, or None.
    :param environ: the environment.
    """
    given = dict(given)
    values = {}
    for option in OPTIONS:
        text = given.get(option.name)
        origin = f"--{option.flag}"
        if text is None:
            text = environ.get(option.env)
            origin = option.env
        if text is None:
            text = option.default
            origin = "default"
        if text is None:
            values[option.name] = None
            continue
        try:
            values[option.name] = option.convert(text)
        except ValueError as e:
            raise ConfigError(f"{origin}: {e}") from None
    return Config(**values)


def defaults(**overrides: Any) -> Config:
    """A Config with every default and the given overrides (for tests and tools)."""
    return load(environ={}).replace(**overrides)


def couchdb_url_was_given(given: Mapping[str, Optional[str]] = (),
                          environ: Mapping[str, str] = os.environ) -> bool:
    return dict(given).get("couchdb_url") is not None or "COUCHDB_URL" in environ
