"""
Application databases: each user gets, live, exactly the documents that user may read.

- :mod:`realtime.databases.rulefile`: reading and validating the TOML rule file;
- :mod:`realtime.databases.rules`: the rules and the pure access decisions (readers of a
  document, sanitising, writers);
- :mod:`realtime.databases.selector` (with ``selector_match`` and ``collation``): Mango
  selectors of ``db:`` subscriptions;
- :mod:`realtime.databases.readers`: the readers index (who could read the revision the
  gateway last delivered), with CouchDB as the fallback after a restart;
- :mod:`realtime.databases.routing`: from a change to the ``doc-change`` deliveries;
- :mod:`realtime.databases.subscriptions`: ``doc:`` and ``db:`` subscriptions, snapshots;
- :mod:`realtime.databases.application`: the routers, subscriptions and role changes of
  a gateway's databases.
"""
