"""REDIS_URL parsing and the endpoint it names (pure, no network)."""

from twisted.internet import defer, endpoints
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.redis.url import RedisAddress, RedisURLError, client_endpoint, parse_redis_url
from tests import harness
from tests.harness import wait_for


class ParseTests(unittest.TestCase):
    def test_plain(self):
        """redis://host gives port 6379, db 0, no credentials, no TLS."""
        self.assertEqual(parse_redis_url("redis://cache.internal"),
                         RedisAddress(host="cache.internal"))

    def test_everything(self):
        """User, password (percent-decoded), port and db from the path are read."""
        address = parse_redis_url("redis://app:p%40ss%3Aw0rd@10.0.0.5:6380/3")
        self.assertEqual((address.host, address.port, address.db), ("10.0.0.5", 6380, 3))
        self.assertEqual((address.username, address.password), ("app", "p@ss:w0rd"))
        self.assertFalse(address.tls)

    def test_password_only(self):
        """redis://:secret@host and redis://secret@host both mean a password, no user."""
        for url in ("redis://:secret@h", "redis://secret@h"):
            address = parse_redis_url(url)
            self.assertEqual((address.username, address.password), (None, "secret"), url)

    def test_db_query_parameter(self):
        """?db=N selects the db; giving it twice is an error."""
        self.assertEqual(parse_redis_url("redis://h?db=7").db, 7)
        with self.assertRaises(RedisURLError):
            parse_redis_url("redis://h/1?db=2")

    def test_rediss_is_tls(self):
        """rediss:// turns TLS on; ca= is accepted only with it."""
        address = parse_redis_url("rediss://h:6390/0?ca=/etc/ca.pem")
        self.assertTrue(address.tls)
        self.assertEqual(address.ca_path, "/etc/ca.pem")
        with self.assertRaises(RedisURLError):
            parse_redis_url("redis://h?ca=/etc/ca.pem")

    def test_ipv6(self):
        """A bracketed IPv6 host is accepted."""
        address = parse_redis_url("redis://[::1]:7000")
        self.assertEqual((address.host, address.port), ("::1", 7000))
        self.assertEqual(address.display(), "redis://[::1]:7000/0")

    def test_bad_urls_are_refused_clearly(self):
        """Bad URLs raise RedisURLError; no message ever shows the password."""
        for url in ("", "http://h", "redis://", "redis://:pw@h:99999", "redis://h/x",
                    "redis://h/-1", "redis://h?timeout=3", "redis://u:topsecret@h:0"):
            with self.assertRaises(RedisURLError) as caught:
                parse_redis_url(url)
            self.assertNotIn("topsecret", str(caught.exception))

    def test_repr_and_display_hide_the_password(self):
        """Neither repr nor display() shows credentials."""
        address = parse_redis_url("rediss://u:hunter2@h")
        self.assertNotIn("hunter2", repr(address))
        self.assertEqual(address.display(), "rediss://h:6379/0")


class EndpointTests(unittest.TestCase):
    def test_tcp(self):
        """redis:// gives a plain HostnameEndpoint to host:port."""
        endpoint = client_endpoint(Clock(), parse_redis_url("redis://h:6380"))
        self.assertIsInstance(endpoint, endpoints.HostnameEndpoint)

    def test_unreadable_ca(self):
        """A ca= file that cannot be read is a clear RedisURLError."""
        with self.assertRaises(RedisURLError):
            client_endpoint(Clock(), parse_redis_url("rediss://h?ca=/nonexistent/ca.pem"))


def _make_ca_and_cert(directory, host_names):
    """A CA and a server certificate for ``host_names`` signed by it (PEM files)."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "realtime test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False,
                                       decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for name in host_names:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {name: os.path.join(directory, name + ".pem") for name in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(paths["key"], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return paths


class TLSTests(unittest.TestCase):
    """rediss:// against a real redis-server with TLS on, certificates from a test CA."""

    timeout = 60

    def start_tls_redis(self, host_names):
        import shutil
        import socket
        import subprocess
        import tempfile
        import time

        from realtime.dev.embedded import free_port

        directory = tempfile.mkdtemp(prefix="realtime-tls-")
        self.addCleanup(shutil.rmtree, directory, True)
        paths = _make_ca_and_cert(directory, host_names)
        port = free_port()
        process = subprocess.Popen(
            [shutil.which("redis-server"), "--port", "0", "--tls-port", str(port),
             "--bind", "127.0.0.1", "--tls-cert-file", paths["cert"],
             "--tls-key-file", paths["key"], "--tls-ca-cert-file", paths["ca"],
             "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
             "--dir", directory, "--requirepass", "tls-pw"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop():
            process.terminate()
            process.wait(10)
        self.addCleanup(stop)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise unittest.SkipTest("redis-server with TLS did not start")
                time.sleep(0.05)
        return port, paths["ca"]

    def client(self, url):
        from twisted.internet import reactor

        from realtime.redis.client import RedisClient
        client = RedisClient(reactor, parse_redis_url(url), timeout=3.0, name="tls-test")
        client.start()
        self.addCleanup(client.stop)
        return client

    @defer.inlineCallbacks
    def test_verified_certificate_connects(self):
        """rediss:// with the right CA and a certificate for the host name works (AUTH, db)."""
        port, ca = self.start_tls_redis(["localhost"])
        client = self.client(f"rediss://:tls-pw@localhost:{port}/2?ca={ca}")
        yield wait_for(lambda: client.connected, what="the TLS connection")
        answer = yield client.execute("PING")
        self.assertEqual(answer, "PONG")

    @defer.inlineCallbacks
    def test_wrong_host_name_is_refused(self):
        """A certificate valid for another host name is refused: no connection, ever."""
        port, ca = self.start_tls_redis(["redis.example"])
        client = self.client(f"rediss://:tls-pw@localhost:{port}/0?ca={ca}")
        yield harness.sleep(1.5)
        self.assertFalse(client.connected)
        self.assertNotEqual(client.connections_made, 1)
        self.flushLoggedErrors()

    @defer.inlineCallbacks
    def test_unknown_ca_is_refused(self):
        """Without the private CA (system trust store) the certificate is refused."""
        port, _ca = self.start_tls_redis(["localhost"])
        client = self.client(f"rediss://:tls-pw@localhost:{port}/0")
        yield harness.sleep(1.5)
        self.assertFalse(client.connected)
        self.flushLoggedErrors()
