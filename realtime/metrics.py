"""
Prometheus metrics, one :class:`Metrics` (and one ``CollectorRegistry``) per gateway, so that
tests can build many gateways in one process.  Served as text at ``GET /metrics``.

Counters kept as things happen:

- ``realtime_messages_received_total{type}``: client messages, by type;
- ``realtime_messages_sent_total{type}``: messages written to connections, by type (one
  per connection reached: a broadcast to 10 connections counts 10);
- ``realtime_errors_total{code}``: ``error`` messages sent to clients, by code;
- ``realtime_http_responses_total{status}``: REST answers, by status.

Read from the gateway at each scrape: open connections, authenticated connections and
users, topics, deliveries, uptime, broker state, and per watched database the feed state
(``realtime_feed_up{db}``), its reconnects, the changes seen, and its lag
(``realtime_feed_lag_seconds{db}``: how long the oldest change read and not yet routed has
waited; ``realtime_feed_pending{db}``: how many wait).

Per application database (the rule file's), counted by its router:
``realtime_db_changes_total{db}`` (changes routed), ``realtime_db_deliveries_total{db}``
(``doc-change`` frames written: documents, deletions and removals),
``realtime_db_removals_total{db}``, ``realtime_db_deletions_total{db}``,
``realtime_db_undecidable_total{db}`` (changes whose previous readers could not be known:
see :mod:`realtime.databases.readers`), ``realtime_db_rule_errors_total{db}`` (access
callables that failed), ``realtime_db_previous_reads_total{db}`` (previous revisions read
from CouchDB) and the gauge ``realtime_db_indexed_documents{db}`` (readers index size).

Resume replays (:mod:`realtime.feeds.replay`): ``realtime_replays_running`` and
``realtime_replays_waiting`` (gauges), ``realtime_replays_total{db,outcome}`` (outcome
``recovered`` or the reason it was not: ``unknown_seq``, ``too_far_behind``,
``unavailable``, ``disconnected``), ``realtime_replay_messages_total{db}`` and
``realtime_replay_undecidable_total{db}`` (documents whose earlier revisions were compacted
away, so that ``removed`` / ``deleted`` could not be decided: nothing was sent).

No label ever holds a user id, topic or other client-chosen text: message types outside
the protocol's own are counted as ``other``, so the number of series stays bounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from realtime.vocabulary import MESSAGE_TYPES

CONTENT_TYPE = CONTENT_TYPE_LATEST


def type_label(kind) -> str:
    """The metrics label of a message type: its own for the protocol's types, else "other"."""
    return kind if kind in MESSAGE_TYPES else "other"


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self._received = Counter("realtime_messages_received", "Client messages, by type",
                                 ["type"], registry=self.registry)
        self._sent = Counter("realtime_messages_sent",
                             "Messages written to connections, by type (one per connection)",
                             ["type"], registry=self.registry)
        self._errors = Counter("realtime_errors", "error messages sent to clients, by code",
                               ["code"], registry=self.registry)
        self._http = Counter("realtime_http_responses", "REST API answers, by status",
                             ["status"], registry=self.registry)
        # the counters' children by label (the protocol's types and "other": bounded)
        self._sent_by_type = {}
        self._received_by_type = {}
        self._gateway = None
        self.registry.register(_GatewayCollector(self))

    def watch(self, gateway) -> None:
        """Report the state of ``gateway`` at each scrape."""
        self._gateway = gateway

    # -- events -------------------------------------------------------------------------

    def sent(self, kind, count: int = 1) -> None:
        if count > 0:
            label = type_label(kind)
            child = self._sent_by_type.get(label)
            if child is None:  # labels() takes a lock and checks the names: once per type
                child = self._sent_by_type[label] = self._sent.labels(type=label)
            child.inc(count)

    def received(self, kind) -> None:
        label = type_label(kind)
        child = self._received_by_type.get(label)
        if child is None:
            child = self._received_by_type[label] = self._received.labels(type=label)
        child.inc()

    def error(self, code: str) -> None:
        self._errors.labels(code=str(code)[:40]).inc()

    def http_response(self, status: int) -> None:
        self._http.labels(status=str(int(status))).inc()

    def delivered(self, event: dict, count: int) -> None:
        """Registry hook: an event reached ``count`` local connections."""
        self.sent(event.get("type"), count)

    # -- exposition ---------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _GatewayCollector:
    """Gauges and counters read from the gateway when scraped."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def describe(self):
        return []

    def collect(self):
        gateway = self._metrics._gateway
        if gateway is None:
            return
        registry = gateway.registry
        yield _gauge("realtime_connections", "Open WebSocket connections",
                     gateway.open_connections)
        yield _gauge("realtime_authenticated_connections", "Authenticated connections",
                     len(registry))
        yield _gauge("realtime_authenticated_users", "Users with a connection",
                     len(registry.users()))
        yield _gauge("realtime_topics", "Topics with a subscriber", registry.topic_count())
        yield _gauge("realtime_uptime_seconds", "Seconds since the gateway started",
                     gateway.clock.seconds() - gateway.started_at)
        yield _gauge("realtime_broker_up", "1 when the broker accepts events",
                     1 if gateway.broker.state == "up" else 0)
        deliveries = CounterMetricFamily(
            "realtime_deliveries", "Frames written to connections by event delivery")
        deliveries.add_metric([], registry.deliveries)
        yield deliveries

        up = GaugeMetricFamily("realtime_feed_up", "1 when the _changes feed is connected",
                               labels=["db"])
        reconnects = CounterMetricFamily("realtime_feed_reconnects",
                                         "Reconnections of the _changes feed", labels=["db"])
        changes = CounterMetricFamily("realtime_feed_changes",
                                      "Changes read from the _changes feed", labels=["db"])
        for follower in gateway.followers:
            up.add_metric([follower.db], 1 if follower.health == "connected" else 0)
            reconnects.add_metric([follower.db], follower.reconnects)
            changes.add_metric([follower.db], follower.changes_seen)
        lag = GaugeMetricFamily("realtime_feed_lag_seconds",
                                "Age of the oldest change read and not yet routed",
                                labels=["db"])
        pending = GaugeMetricFamily("realtime_feed_pending",
                                    "Changes read and not yet routed", labels=["db"])
        for follower in gateway.followers:
            lag.add_metric([follower.db], follower.lag_seconds())
            pending.add_metric([follower.db], follower.pending)
        yield up
        yield reconnects
        yield changes
        yield lag
        yield pending
        if gateway.databases is not None:
            yield from _database_metrics(gateway.databases.stats())
        if gateway.replayer is not None:
            yield from _replay_metrics(gateway.replayer)


#: per-database counters: (stats key, metric name, help)
_DATABASE_COUNTERS = (
    ("changes", "realtime_db_changes", "Changes of an application database routed"),
    ("deliveries", "realtime_db_deliveries",
     "doc-change frames written (documents, deletions, removals)"),
    ("removals", "realtime_db_removals", "removed frames written (access lost)"),
    ("deletions", "realtime_db_deletions", "deleted frames written"),
    ("undecidable", "realtime_db_undecidable",
     "Changes whose previous readers could not be known (nobody but doc: subscribers told)"),
    ("rule_errors", "realtime_db_rule_errors", "access callables that failed"),
    ("fetches", "realtime_db_previous_reads", "Previous revisions read from CouchDB"),
)


def _database_metrics(stats: dict):
    for key, name, documentation in _DATABASE_COUNTERS:
        family = CounterMetricFamily(name, documentation, labels=["db"])
        for db, counters in stats.items():
            family.add_metric([db], counters[key])
        yield family
    indexed = GaugeMetricFamily("realtime_db_indexed_documents",
                                "Documents in the readers index", labels=["db"])
    for db, counters in stats.items():
        indexed.add_metric([db], counters["indexed"])
    yield indexed


def _replay_metrics(replayer):
    """The resume replays of CouchDB changes (realtime.feeds.replay)."""
    yield _gauge("realtime_replays_running", "Resume replays reading CouchDB now",
                 replayer.running)
    yield _gauge("realtime_replays_waiting", "Resume replays waiting for their turn",
                 replayer.waiting)
    replays = CounterMetricFamily("realtime_replays", "Resume replays of a database, by "
                                  "outcome (recovered, or the reason it was not)",
                                  labels=["db", "outcome"])
    replayed = CounterMetricFamily("realtime_replay_messages",
                                   "Messages sent by resume replays", labels=["db"])
    undecidable = CounterMetricFamily(
        "realtime_replay_undecidable", "Documents a replay could not decide removed or "
        "deleted for (earlier revisions compacted away): nothing was sent", labels=["db"])
    for db, stats in sorted(replayer.stats().items()):
        for outcome, count in sorted(stats["outcomes"].items()):
            replays.add_metric([db, outcome], count)
        replayed.add_metric([db], stats["replayed"])
        undecidable.add_metric([db], stats["undecidable"])
    yield replays
    yield replayed
    yield undecidable


def _gauge(name: str, documentation: str, value) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
