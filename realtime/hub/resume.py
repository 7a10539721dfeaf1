"""
``resume`` and ``subscribe {topic, since}``: what a client missed, then live, with no gap and
no duplicate at the switch.

Client: ``{"type":"resume","since":{"<db>": seq, …, "messages": offset},"ref":…}``.

Server, in this order:

1. every message missed, marked ``"replay": true``: per database the changes since ``seq``
   that concern this user (:mod:`realtime.feeds.replay`), and the messages sent to the user
   after ``offset`` (REST messages, notifications, broadcasts: :mod:`realtime.hub.history`),
   each with its ``offset``;
2. ``{"type":"resumed","since":{…},"until":{…},"replayed":{…},"recovered":{…},"ref":…}``,
   plus ``reason`` and ``missed`` (objects keyed like ``recovered``) for what was not
   recovered.  ``until`` is where the client stands now, per key: remember it.
3. live messages.

While the replay runs, live messages for this connection are held (bounded by
``WS_MAX_QUEUE_BYTES``: past it the connection is closed 4100, as a client that does not
read); after ``resumed`` they are sent, less those the replay already gave: the same
``offset``, or, for documents, a revision no newer than the one replayed for that
``(db, id)``.  Nothing is lost (held, not dropped) and nothing is sent twice.

The replay reads CouchDB itself, which may be a little ahead of this process's live feed
(a change is routed a few milliseconds after CouchDB has it, longer while routing waits
for earlier revisions): so the hold lasts until the live feed of every replayed database
has passed the position the replay read up to (``until``), at most
:data:`CATCH_UP_SECONDS`; the live copies of what the replay gave are then all in the
hold, and left out.  Positions are compared by their number (pouchdb-server's integer
seqs; the leading number of CouchDB 2/3 seqs); one that has none is not waited for.

``recovered`` per key, with ``reason`` when false:

- ``messages``: ``history_trimmed`` (the history no longer reaches back that far, or the
  offset is from another history: a restart without Redis, Redis lost its data), with
  ``missed`` when the number is known; ``unknown_offset`` (not an offset of this server).
- ``null`` for a key is no position at all: ``unknown_seq`` (``unknown_offset`` for
  ``messages``), the other keys unaffected.
- a database: ``unknown_seq``, ``too_far_behind``, ``unavailable`` (CouchDB did not
  answer: resume again later) (see :mod:`realtime.feeds.replay`), ``unknown_database``
  (not followed by this gateway, or not replayable yet).

``subscribe {topic, since: offset}`` (after the usual checks; :mod:`realtime.hub.topics`):
the topic's publications after ``offset`` (``"replay": true``), then ``subscribed`` with
``recovered`` (and ``reason`` / ``missed``) and ``until``, then live, with the same hold.

Refusals (``error``, the connection stays open, with the request's ``ref``):
``bad_request`` for a ``since`` that is not an object of at most :data:`MAX_SINCE_KEYS`
keys with string or number values, or a second ``resume`` while one is running.
"""

from __future__ import annotations

import struct
from typing import Optional

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import Logger

from realtime import jsonutil
from realtime.hub.history import BROADCAST_STREAM, topic_stream, user_stream
from realtime.vocabulary import request_ref  # noqa: F401 (part of this module's API)
from realtime.vocabulary import with_ref as _with_ref

MESSAGES = "messages"

#: the longest a resume waits for the live feed to reach what its replay read (a feed that
#: is down or far behind: the hold then ends anyway, see the module docstring)
CATCH_UP_SECONDS = 2.0
CATCH_UP_POLL_SECONDS = 0.01
MAX_SINCE_KEYS = 64
MAX_POSITION_LENGTH = 256

_log = Logger()


def _position_ok(value) -> bool:
    if value is None:  # "no position" (a client storing JSON): unknown, that key only
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 2 ** 63
    return isinstance(value, str) and 0 < len(value) <= MAX_POSITION_LENGTH


def since_error(since) -> Optional[str]:
    """Why ``since`` cannot be resumed from, or None."""
    if not isinstance(since, dict):
        return "resume needs since: an object of positions"
    if len(since) > MAX_SINCE_KEYS:
        return f"since has more than {MAX_SINCE_KEYS} keys"
    for key, value in since.items():
        if not key or len(key) > MAX_POSITION_LENGTH:
            return "since has an empty or too long key"
        if not _position_ok(value):
            return f"since.{key[:64]} must be a seq or offset (a string or a number)"
    return None


# -- holding live messages during a replay --------------------------------------------------

def frame_payload(frame: bytes) -> bytes:
    """The payload of one unmasked server text frame (see registry.frame_text)."""
    length = frame[1] & 0x7F
    if length == 126:
        return frame[4:4 + struct.unpack("!H", frame[2:4])[0]]
    if length == 127:
        return frame[10:10 + struct.unpack("!Q", frame[2:10])[0]]
    return frame[2:2 + length]


def rev_generation(rev) -> int:
    """The generation of a CouchDB revision (``"3-abc"`` -> 3; 0 when not one)."""
    if isinstance(rev, str):
        head = rev.split("-", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


def doc_key(message: dict):
    """``(db, id)`` and the revision of a ``doc-change`` / ``user-change``, or None."""
    kind = message.get("type")
    if kind == "doc-change":
        db = message.get("db")
    elif kind == "user-change":
        db = "_users"
    else:
        return None
    rev = message.get("rev")
    if rev is None and isinstance(message.get("doc"), dict):
        rev = message["doc"].get("_rev")
    return (db, message.get("id")), rev


class Hold:
    """
    Live frames held for one connection while replays run (any number at once: the frames
    go out when the last one ends), and what the replays sent, to leave out the live
    copies of it.
    """

    __slots__ = ("frames", "size", "limit", "depth", "offsets", "docs")

    def __init__(self, limit: int):
        self.frames = []
        self.size = 0
        self.limit = limit
        self.depth = 0
        self.offsets = set()  # offsets of replayed messages
        self.docs = {}  # (db, id) -> generation of the revision replayed

    def add(self, frame: bytes) -> bool:
        """Hold one frame; False when the hold is over its limit (the client is too slow)."""
        self.frames.append(frame)
        self.size += len(frame)
        return self.size <= self.limit

    def replayed(self, message: dict) -> None:
        offset = message.get("offset")
        if offset is not None:
            self.offsets.add(offset)
        key = doc_key(message)
        if key is not None:
            where, rev = key
            self.docs[where] = max(self.docs.get(where, 0), rev_generation(rev))

    def superseded(self, frame: bytes) -> bool:
        """Whether a held live frame was already given by a replay (or a newer one was)."""
        if not self.offsets and not self.docs:
            return False
        try:
            message = jsonutil.loads(frame_payload(frame))
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        if message.get("offset") in self.offsets:
            return True
        key = doc_key(message)
        if key is not None and key[0] in self.docs:
            return rev_generation(key[1]) <= self.docs[key[0]]
        return False


# -- resume ---------------------------------------------------------------------------------

def handle_resume(conn, message: dict) -> None:
    """A client's ``resume`` (called by the WebSocket protocol)."""
    ref = request_ref(message)
    since = message.get("since")
    problem = since_error(since)
    if problem is None and conn.resuming:
        problem = "a resume is already running on this connection"
    if problem is not None:
        conn.send_error("bad_request", problem, ref=ref)
        return
    conn.resuming = True
    hold = conn.begin_hold()
    d = _resume(conn, hold, dict(since), ref)

    def failed(failure):
        _log.failure("a resume failed", failure)
        conn.send_error("internal", "the resume failed; reload what you hold", ref=ref)

    def done(_):
        conn.resuming = False
        conn.end_hold()

    d.addErrback(failed)
    d.addBoth(done)


def send_replayed(conn, hold: Hold, message: dict) -> bool:
    """Send one replayed message (marked ``replay: true``); False once the client is gone."""
    if not conn.still_open:
        return False
    message["replay"] = True
    hold.replayed(message)
    conn.send_json(message)
    return True


@inlineCallbacks
def _resume(conn, hold: Hold, since: dict, ref):
    gateway = conn.gateway
    answer = {"type": "resumed", "since": since, "until": {}, "replayed": {},
              "recovered": {}}
    reasons, missed = {}, {}

    def outcome(key, until, replayed, recovered, reason=None, lost=None):
        answer["until"][key] = until
        answer["replayed"][key] = replayed
        answer["recovered"][key] = recovered
        if not recovered and reason:
            reasons[key] = reason
        if lost is not None and not recovered:
            missed[key] = lost

    replayer = gateway.replayer
    read_up_to = {}  # db -> the position its replay read up to
    for db, seq in since.items():
        if db == MESSAGES:
            continue
        if replayer is None or not replayer.follows(db):
            outcome(db, seq, 0, False, "unknown_database")
            continue
        result = yield replayer.replay(conn, db, seq, lambda m: send_replayed(conn, hold, m))
        if not conn.still_open:
            return
        outcome(db, result.until, result.replayed, result.recovered, result.reason)
        if result.replayed:
            read_up_to[db] = result.until
    if MESSAGES in since:
        offset = since[MESSAGES]
        try:
            if offset is None:
                raise ValueError("no offset")
            d = gateway.history.read([user_stream(conn.user_id), BROADCAST_STREAM], offset)
        except ValueError:
            head = gateway.history.head()
            outcome(MESSAGES, head if head is not None else offset, 0, False,
                    "unknown_offset")
        else:
            replay = yield d
            sent = 0
            for text in replay.messages:
                if not send_replayed(conn, hold, jsonutil.loads(text)):
                    return
                sent += 1
            outcome(MESSAGES, replay.until, sent, replay.recovered, "history_trimmed",
                    replay.missed)
    yield live_caught_up(gateway, read_up_to)
    if reasons:
        answer["reason"] = reasons
    if missed:
        answer["missed"] = missed
    if conn.still_open:
        conn.send_json(_with_ref(answer, ref))


def seq_number(seq) -> Optional[int]:
    """The number of a position: an integer seq, or the leading number of a string one
    (``"12-g1AA..."`` -> 12); None when it has none."""
    if isinstance(seq, bool):
        return None
    if isinstance(seq, int):
        return seq
    if isinstance(seq, str):
        head = seq.split("-", 1)[0]
        if head.isascii() and head.isdigit() and len(head) <= 20:
            return int(head)
    return None


@inlineCallbacks
def live_caught_up(gateway, read_up_to: dict):
    """
    Wait (at most :data:`CATCH_UP_SECONDS`) until the live feed of each database in
    ``read_up_to`` (db -> position) has processed the changes up to that position.
    """
    wanted = {}
    for follower in gateway.followers:
        number = seq_number(read_up_to.get(follower.db))
        if number is not None:
            wanted[follower] = number
    deadline = gateway.clock.seconds() + CATCH_UP_SECONDS
    while wanted:
        for follower, number in list(wanted.items()):
            at = seq_number(follower.last_seq)
            if at is None or at >= number:
                del wanted[follower]
        if not wanted or gateway.clock.seconds() >= deadline:
            return
        yield deferLater(gateway.clock, CATCH_UP_POLL_SECONDS, lambda: None)


# -- subscribe {topic, since} ----------------------------------------------------------------

def resume_topic(conn, topic: str, since, ref=None) -> None:
    """
    The topic's publications after ``since``, then ``subscribed`` (with ``recovered``):
    called once the subscription is in place (live publications are held meanwhile).
    """
    hold = conn.begin_hold()
    answer = {"type": "subscribed", "topic": topic}
    try:
        d = conn.gateway.history.read([topic_stream(topic)], since)
    except ValueError:
        answer.update(recovered=False, reason="unknown_offset")
        conn.send_json(_with_ref(answer, ref))
        conn.end_hold()
        return

    def replayed(replay):
        for text in replay.messages:
            if not send_replayed(conn, hold, jsonutil.loads(text)):
                return
        answer.update(replay.recovery())
        answer["until"] = replay.until
        answer["replayed"] = len(replay.messages)
        if conn.still_open:
            conn.send_json(_with_ref(answer, ref))

    def failed(failure):
        _log.warn("reading a topic's history failed: {error}", error=failure.getErrorMessage())
        answer.update(recovered=False, reason="unavailable")
        if conn.still_open:
            conn.send_json(_with_ref(answer, ref))

    d.addCallbacks(replayed, failed)
    d.addBoth(lambda _: conn.end_hold())


# -- where a client stands -------------------------------------------------------------------

def positions(gateway) -> dict:
    """``connected.seqs``: each followed database's last seq, and ``messages``."""
    seqs = {}
    for follower in gateway.followers:
        if follower.last_seq is not None and follower.last_seq != "now":
            # "now": the follower's own marker while it finds its start (not a seq)
            seqs[follower.db] = follower.last_seq
    head = gateway.history.head()
    if head is not None:
        seqs[MESSAGES] = head
    return seqs
