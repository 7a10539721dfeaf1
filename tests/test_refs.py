"""
Every direct answer to a client request carries the request's ``ref`` (docs/protocol.rst,
"ref"): one table of requests, each kind of answer and refusal, sent with a ``ref`` over a
real WebSocket to a real gateway on pouchdb-server.
"""

from twisted.internet.defer import inlineCallbacks

from tests.harness import unique
from tests.test_e2e_databases import DatabaseCase


def row(name, request, answer, code=None):
    """``request``: a message, or a function of the state (earlier answers) making one."""
    return name, request, answer, code


class Refs(DatabaseCase):
    TABLE = """
users  = ["owner", "members"]
write  = ["owner"]
fields = ["title"]
owner  = "owner"
"""

    def table(self, mine):
        db = self.db
        return [
            row("ping", {"type": "ping"}, "pong"),
            row("subscribe", {"type": "subscribe", "topic": "public:a"}, "subscribed"),
            row("subscribe since", {"type": "subscribe", "topic": "public:b", "since": 0},
                "subscribed"),
            row("unsubscribe", {"type": "unsubscribe", "topic": "public:a"}, "unsubscribed"),
            row("subscribe empty topic", {"type": "subscribe", "topic": ""}, "error",
                "bad_request"),
            row("subscribe forbidden", {"type": "subscribe", "topic": "user:someone"},
                "error", "forbidden"),
            row("unsubscribe bad topic", {"type": "unsubscribe", "topic": "a b"}, "error",
                "bad_request"),
            row("publish without data", {"type": "publish", "topic": "public:a"}, "error",
                "bad_request"),
            row("publish forbidden", {"type": "publish", "topic": "user:x", "data": 1},
                "error", "forbidden"),
            row("doc: readable", {"type": "subscribe", "topic": f"doc:{db}/{mine}"},
                "subscribed"),
            row("doc: snapshot", {"type": "subscribe", "topic": f"doc:{db}/{mine}",
                                  "snapshot": True}, "subscribed"),
            row("doc: missing", {"type": "subscribe", "topic": f"doc:{db}/nope"}, "error",
                "forbidden"),
            row("doc: reserved id", {"type": "subscribe", "topic": f"doc:{db}/_security"},
                "error", "forbidden"),
            row("doc: selector", {"type": "subscribe", "topic": f"doc:{db}/{mine}",
                                  "selector": {"a": 1}}, "error", "bad_request"),
            row("db:", {"type": "subscribe", "topic": f"db:{db}"}, "subscribed"),
            row("db: snapshot", {"type": "subscribe", "topic": f"db:{db}", "snapshot": True},
                "subscribed"),
            row("db: selector", {"type": "subscribe", "topic": f"db:{db}",
                                 "selector": {"title": "x"}}, "subscribed"),
            row("db: bad selector", {"type": "subscribe", "topic": f"db:{db}",
                                     "selector": {"a": {"$near": 1}}}, "error",
                "bad_selector"),
            row("db: bad snapshot", {"type": "subscribe", "topic": f"db:{db}",
                                     "snapshot": "yes"}, "error", "bad_request"),
            row("db: not followed", {"type": "subscribe", "topic": "db:elsewhere"}, "error",
                "forbidden"),
            row("resume", {"type": "resume", "since": {db: 0}}, "resumed"),
            row("resume bad since", {"type": "resume", "since": 5}, "error", "bad_request"),
            row("doc.create", {"type": "doc.create", "db": db, "doc": {"title": "t"}},
                "doc.created"),
            row("doc.update", lambda s: {"type": "doc.update", "db": db,
                                         "id": s["doc.create"]["id"],
                                         "rev": s["doc.create"]["rev"],
                                         "changes": {"title": "u"}}, "doc.updated"),
            row("doc.update conflict", lambda s: {"type": "doc.update", "db": db,
                                                  "id": s["doc.create"]["id"],
                                                  "rev": s["doc.create"]["rev"],
                                                  "changes": {"title": "v"}}, "error",
                "conflict"),
            row("doc.delete", lambda s: {"type": "doc.delete", "db": db,
                                         "id": s["doc.update"]["id"],
                                         "rev": s["doc.update"]["rev"]}, "doc.deleted"),
            row("doc.create refused field", {"type": "doc.create", "db": db,
                                             "doc": {"secret": 1}}, "error", "forbidden"),
            row("unknown type", {"type": "frobnicate"}, "error", "unknown_type"),
            row("type not a string", {"type": 5}, "error", "bad_request"),
            row("auth without token", {"type": "auth"}, "error", "bad_request"),
        ]

    @inlineCallbacks
    def test_every_answer_carries_the_ref(self):
        """Each request of the table, sent with a ref, is answered (or refused) with it;
        a request without one gets an answer without one."""
        mine = unique("mine")
        self.put(mine, owner="alice", title="mine")
        yield self.gw.wait_for_change(mine)
        client = yield self.client("alice")
        answers = {}
        for number, (name, request, kind, code) in enumerate(self.table(mine)):
            message = request(answers) if callable(request) else dict(request)
            ref = f"ref-{number}"
            client.send_json({**message, "ref": ref})
            answer = yield self.answer(client)
            self.assertEqual((answer["type"], answer.get("code"), answer.get("ref")),
                             (kind, code, ref), f"{name}: {answer}")
            answers[name] = answer
        client.send_json({"type": "ping"})
        answer = yield self.answer(client)
        self.assertEqual(answer["type"], "pong")
        self.assertNotIn("ref", answer)
        client.send_json({"type": "ping", "ref": "r" * 65})  # too long: not echoed
        answer = yield self.answer(client)
        self.assertEqual(answer["type"], "pong")
        self.assertNotIn("ref", answer)

    @inlineCallbacks
    def answer(self, client):
        """The next message that is not a doc-change (snapshots, the writes' changes)."""
        while True:
            message = yield client.next()
            if message["type"] != "doc-change":
                return message
