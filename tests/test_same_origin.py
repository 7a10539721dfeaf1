"""The gateway's own origin may use cookie auth without being listed in CORS_ORIGINS."""

from twisted.trial import unittest

from realtime.auth.origins import same_origin


class SameOriginTests(unittest.TestCase):
    def test_same_host_and_port(self):
        """An Origin naming the Host the request went to is the gateway's own."""
        self.assertTrue(same_origin("http://127.0.0.1:8080", "127.0.0.1:8080"))
        self.assertTrue(same_origin("http://[::1]:8080", "[::1]:8080"))
        self.assertTrue(same_origin("HTTP://App.Example", "app.example"))

    def test_default_ports(self):
        """A default port is the same whether written or not, per the Origin's scheme."""
        self.assertTrue(same_origin("https://app.example", "app.example:443"))
        self.assertTrue(same_origin("http://app.example:80", "app.example"))
        self.assertFalse(same_origin("http://app.example", "app.example:443"))

    def test_other_origins(self):
        """Another host or port, a null or malformed Origin, or no Host: not the same."""
        for origin, host in [("https://evil.example", "app.example"),
                             ("http://127.0.0.1:8081", "127.0.0.1:8080"),
                             ("https://app.example.evil", "app.example"),
                             ("null", "app.example"), ("", "app.example"),
                             ("http://app.example", None), ("http://app.example", ""),
                             ("http://app.example:x", "app.example"),
                             ("http://app.example/path", "app.example"),
                             ("ftp://app.example", "app.example"),
                             ("http://[::1", "[::1]")]:
            self.assertFalse(same_origin(origin, host), (origin, host))
