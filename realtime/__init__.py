"""realtime: a real-time gateway for CouchDB-backed applications (Twisted + Autobahn)."""

__version__ = "0.1.0"
