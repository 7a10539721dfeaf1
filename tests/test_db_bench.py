"""The application-database benchmark measures what it says (a small run of each part)."""

from twisted.trial import unittest

from benchmarks import databases


class DatabaseBenchmarkTests(unittest.TestCase):
    def test_routing_round(self):
        """Every change reaches the users it names (one connection each), from a warm index
        (CouchDB is never asked), and the floor parses the same lines."""
        result = databases.routing_round(users=200, named=10, changes=50)
        self.assertEqual(result["deliveries_per_change"], 10.0)
        self.assertGreater(result["routed_per_s"], 0)
        self.assertGreater(result["floor_per_s"], 0)

    def test_index_figures(self):
        class Options:
            index_docs = 500
        result = databases.index_figures(Options())
        self.assertGreater(result["bytes_per_doc_distinct"], result["bytes_per_doc_shared"])
        self.assertGreater(result["get_put_us"], 0)
