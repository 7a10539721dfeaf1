"""
Credentials on live connections: JWT expiry and CouchDB session revalidation (Clock).
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from realtime.auth.expiry import SessionWatch
from realtime.auth.identity import AuthFailure, Identity


def jwt_identity(user="alice", expires_at=1100.0, token="t1"):
    return Identity(user_id=user, name=user, method="jwt", expires_at=expires_at,
                    token_id="jti:" + token)


def cookie_identity(user="alice", cookie="c1"):
    return Identity(user_id=user, name=user, method="cookie", cookie=cookie)


class FakeChecker:
    def __init__(self):
        self.answers = []
        self.asked = []

    def check(self, cookie):
        self.asked.append(cookie)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            return fail(answer)
        if isinstance(answer, Deferred):
            return answer
        return succeed(answer)


class SessionWatchTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.failures = []
        self.checker = FakeChecker()
        self.watch = SessionWatch(self.clock, self.failures.append, self.checker)

    def reasons(self):
        return [f.reason for f in self.failures]

    def test_jwt_expiry_closes_at_exp_plus_leeway(self):
        """At exp (+5 s leeway) the connection fails with `token-expired`, not before."""
        self.watch.watch(jwt_identity(expires_at=1100))
        self.clock.advance(104.9)
        self.assertEqual(self.failures, [])
        self.clock.advance(0.2)
        self.assertEqual(self.reasons(), ["token-expired"])
        self.assertEqual(self.failures[0].close_code, 4001)

    def test_refresh_moves_the_timer(self):
        """A fresh token for the same user (watch again) moves the expiry."""
        self.watch.watch(jwt_identity(expires_at=1100))
        self.clock.advance(90)
        self.watch.watch(jwt_identity(expires_at=1500, token="t2"))
        self.clock.advance(100)
        self.assertEqual(self.failures, [])
        self.clock.advance(320)
        self.assertEqual(self.reasons(), ["token-expired"])

    def test_stop_cancels(self):
        """A stopped watch (connection closed) leaves no timer and fails nothing."""
        self.watch.watch(jwt_identity(expires_at=1100))
        self.watch.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(self.failures, [])

    def test_cookie_revalidated_every_interval(self):
        """A cookie session is checked every 5 minutes; a refreshed cookie is used next."""
        self.checker.answers = [cookie_identity(cookie="c2"), cookie_identity(cookie="c3")]
        self.watch.watch(cookie_identity(cookie="c1"))
        self.clock.advance(299)
        self.assertEqual(self.checker.asked, [])
        self.clock.advance(1)
        self.clock.advance(300)
        self.assertEqual(self.checker.asked, ["c1", "c2"])
        self.assertEqual(self.failures, [])

    def test_cookie_session_ended(self):
        """CouchDB says "no session": `token-expired`, close 4001."""
        self.checker.answers = [AuthFailure("auth-failed", "no session")]
        self.watch.watch(cookie_identity())
        self.clock.advance(300)
        self.assertEqual(self.reasons(), ["token-expired"])
        self.assertEqual(self.failures[0].close_code, 4001)

    def test_cookie_of_another_user(self):
        """A session that now names someone else: `auth-failed`."""
        self.checker.answers = [cookie_identity(user="mallory")]
        self.watch.watch(cookie_identity())
        self.clock.advance(300)
        self.assertEqual(self.reasons(), ["auth-failed"])

    def test_couchdb_unreachable_keeps_then_closes_4101(self):
        """
        CouchDB unreachable: kept and retried every 30 s; still unreachable 5 minutes after
        the check was due: `unavailable`, close 4101.
        """
        self.checker.answers = [AuthFailure("unavailable")] * 20
        self.watch.watch(cookie_identity())
        self.clock.advance(300)
        for _ in range(9):
            self.clock.advance(30)
        self.assertEqual(self.failures, [])
        self.assertEqual(len(self.checker.asked), 10)
        self.clock.advance(30)
        self.assertEqual(self.reasons(), ["unavailable"])
        self.assertEqual(self.failures[0].close_code, 4101)

    def test_couchdb_back_in_time(self):
        """CouchDB back before the grace ends: the connection stays and the period restarts."""
        self.checker.answers = [AuthFailure("unavailable"), AuthFailure("unavailable"),
                                cookie_identity()] + [AuthFailure("unavailable")] * 20
        self.watch.watch(cookie_identity())
        self.clock.pump([300, 30, 30])
        self.assertEqual((len(self.checker.asked), self.failures), (3, []))
        self.clock.pump([300] + [30] * 9)
        self.assertEqual((len(self.checker.asked), self.failures), (13, []))
        self.clock.advance(30)
        self.assertEqual(self.reasons(), ["unavailable"])

    def test_answer_after_stop_ignored(self):
        """A check still in flight when the connection closes changes nothing."""
        pending = Deferred()
        self.checker.answers = [pending]
        self.watch.watch(cookie_identity())
        self.clock.advance(300)
        self.watch.stop()
        pending.errback(AuthFailure("auth-failed"))
        self.assertEqual(self.failures, [])


class FakeRevocations:
    def __init__(self):
        self.revoked = set()
        self.down = False
        self.asked = []

    def is_revoked(self, token_id):
        self.asked.append(token_id)
        if self.down:
            from realtime.redis.client import RedisUnavailable
            return fail(RedisUnavailable("down"))
        return succeed(token_id in self.revoked)


class RevocationRecheckTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.failures = []
        self.revocations = FakeRevocations()
        self.watch = SessionWatch(self.clock, self.failures.append,
                                  revocations=self.revocations)

    def test_revocation_found_by_periodic_check(self):
        """
        A revocation whose broker event was lost is still found: the token id is looked up
        every 5 minutes, and a revoked one closes the connection (`revoked`, 4001).
        """
        self.watch.watch(jwt_identity(expires_at=100000, token="t1"))
        self.clock.advance(300)
        self.assertEqual((self.revocations.asked, self.failures), (["jti:t1"], []))
        self.revocations.revoked.add("jti:t1")
        self.clock.advance(300)
        self.assertEqual([f.reason for f in self.failures], ["revoked"])
        self.assertEqual(self.failures[0].close_code, 4001)

    def test_refresh_checks_the_new_token(self):
        """After a refresh the new token's id is the one checked."""
        self.watch.watch(jwt_identity(expires_at=100000, token="t1"))
        self.revocations.revoked.add("jti:t1")
        self.watch.watch(jwt_identity(expires_at=100000, token="t2"))
        self.clock.advance(300)
        self.assertEqual((self.revocations.asked, self.failures), (["jti:t2"], []))

    def test_store_down_retried_then_4101(self):
        """The store down: retried every 30 s, closed `unavailable` (4101) after 5 minutes."""
        self.revocations.down = True
        self.watch.watch(jwt_identity(expires_at=100000))
        self.clock.pump([300] + [30] * 9)
        self.assertEqual(self.failures, [])
        self.clock.advance(30)
        self.assertEqual([f.reason for f in self.failures], ["unavailable"])
        self.assertEqual(self.failures[0].close_code, 4101)

    def test_expiry_still_wins(self):
        """A token that expires before the next check closes at its expiry."""
        self.watch.watch(jwt_identity(expires_at=1100))
        self.clock.pump([105, 1])
        self.assertEqual([f.reason for f in self.failures], ["token-expired"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
