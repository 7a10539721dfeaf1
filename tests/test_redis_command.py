"""The Redis command encoder (realtime.redis.client.build_command) against txredisapi's."""

import txredisapi
from twisted.trial import unittest

from realtime.redis.client import _protocol_class, build_command

ARGS = [
    ("EVAL", "return 1", 0),
    ("SET", b"k\x00\xff", "v"),
    ("o", "user-\u00e9\u4e2d\U0001f600", "0", "12", ""),
    ("INCRBYFLOAT", "k", 1.5, -0.25),
    ("X", bytearray(b"ab"), 7, -3, True, None),
    (),
    ("empty", "", b""),
]


class BuildCommandTests(unittest.TestCase):
    def test_same_bytes_as_txredisapi(self):
        """Every kind of argument gives txredisapi's bytes, in both charsets' settings."""
        for charset in ("utf-8", "latin-1", None):
            ours = _protocol_class()(charset=charset)
            theirs = txredisapi.RedisProtocol(charset=charset)
            for args in ARGS:
                try:
                    expected = theirs._build_command(*args)
                except txredisapi.InvalidData as e:
                    expected = type(e)
                try:
                    got = build_command(ours, args)
                except txredisapi.InvalidData as e:
                    got = type(e)
                self.assertEqual(got, expected, (charset, args))
                if isinstance(got, bytes):  # the protocol's own method is this encoder
                    self.assertEqual(ours._build_command(*args), got)

    def test_unencodable_is_refused_as_txredisapi_does(self):
        """A str the charset cannot encode raises txredisapi's InvalidData."""
        ours = _protocol_class()(charset="ascii")
        with self.assertRaises(txredisapi.InvalidData):
            build_command(ours, ("SET", "k", "caf\u00e9"))

    def test_layout(self):
        """The bytes are RESP: an array of bulk strings."""
        ours = _protocol_class()()
        self.assertEqual(build_command(ours, ("GET", "k\u00e9", 10)),
                         b"*3\r\n$3\r\nGET\r\n$3\r\nk\xc3\xa9\r\n$2\r\n10\r\n")
