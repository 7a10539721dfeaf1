"""
Message history: what is not in CouchDB (REST ``message/*`` and ``notification``,
publications to topics), kept for a while so that a client that reconnects can resume it.

Every such message gets an ``offset`` (in its JSON, for the client to remember) when it is
appended, before it is sent.  Offsets are ``"<epoch>-<n>"``: ``n`` comes from one counter
of the deployment (ordered across every stream, so several streams merge in send order),
``epoch`` names that counter's lifetime (a new process with the memory history, a Redis
that lost its data): an offset of another epoch is not resumed (``recovered: false``).
Clients treat offsets as opaque strings.

The counter is not a count: each append takes ``max(last + 1, now in milliseconds x
1000)`` (:func:`next_n`).  Every user sees offsets (in ``connected``, in ``resumed``, on
public publications), and a dense counter would tell anyone how many messages the
deployment sent to others, and when; this one tells the time, which a message's
``timestamp`` tells anyway (only within one millisecond do offsets follow each other).

Streams: ``u:<user id>`` (messages to one user), ``b`` (broadcasts: stored once, read by
every user's resume), ``t:<topic>`` (publications).  Each keeps its last ``size`` messages
(``REALTIME_HISTORY_SIZE``), none older than ``ttl`` (``REALTIME_HISTORY_TTL_MS``).  What
is dropped is remembered as a number only (its ``n``, up to ten times ``size`` per stream),
so that a resume from before it can say how many messages it missed; beyond that, the
number is unknown (``missed`` is left out).  A stream with no message for seven times the
TTL is forgotten entirely (its key expires in Redis): a resume from an offset that old
cannot know what it missed and replays nothing.

:meth:`IHistory.read` answers a resume: the messages of some streams after an offset, in
order, with ``recovered`` (nothing after the offset was dropped) and ``missed`` (how many
were, when known).

Two implementations, one interface, one test suite (``tests/test_history.py``):
:class:`MemoryHistory` (one process) and :class:`realtime.redis.history.RedisHistory`
(every process of a deployment sees the same history and the same offsets).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import deque
from typing import List, Optional

from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from realtime import jsonutil

BROADCAST_STREAM = "b"
#: dropped messages remembered (as numbers), per stream, in multiples of ``size``
GHOST_FACTOR = 10
#: a stream silent for this many TTLs is forgotten entirely
FORGET_FACTOR = 7

_OFFSET = re.compile(r"([0-9a-f]{1,16})-([0-9]{1,18})\Z")


def user_stream(user_id: str) -> str:
    return "u:" + user_id


def topic_stream(topic: str) -> str:
    return "t:" + topic


def new_epoch() -> str:
    return os.urandom(4).hex()


def clock_n(now: float) -> int:
    """Where the counter stands by the clock at ``now`` (seconds): milliseconds x 1000."""
    return int(now * 1000) * 1000


def next_n(last: int, now: float) -> int:
    """The counter after ``last`` for an append at ``now`` (seconds): see the module
    docstring (the Redis history's script computes the same)."""
    return max(last + 1, clock_n(now))


def make_offset(epoch: str, n: int) -> str:
    return f"{epoch}-{n}"


def parse_offset(text) -> tuple:
    """``(epoch, n)`` of an offset; ValueError when it is not one of ours."""
    if not isinstance(text, str):
        raise ValueError("an offset is a string")
    match = _OFFSET.match(text)
    if match is None:
        raise ValueError("not an offset given by this server")
    return match.group(1), int(match.group(2))


@dataclasses.dataclass
class Replay:
    """What a resume of message history delivers."""

    #: the messages after the offset, as JSON texts (each with its ``offset``), in order
    messages: List[str]
    #: True when nothing after the offset was dropped
    recovered: bool
    #: how many messages after the offset were dropped, when known
    missed: Optional[int]
    #: the offset to remember after this replay
    until: str

    def recovery(self) -> dict:
        """The ``recovered`` entry of ``resumed`` for messages (and ``reason``/``missed``)."""
        if self.recovered:
            return {"recovered": True}
        answer = {"recovered": False, "reason": "history_trimmed"}
        if self.missed is not None:
            answer["missed"] = self.missed
        return answer


class IHistory(Interface):
    """The bounded history of non-CouchDB messages (see the module docstring)."""

    def append(streams, message: dict) -> Deferred:
        """
        Give ``message`` (a dict without ``offset``) the next offset and store it in each of
        ``streams``.  Fires with ``(offset, text)``: ``text`` is the message's JSON with
        ``"offset"`` as its last key, the text to send.  Fails when the store cannot be
        reached (Redis away): nothing was stored, the caller should not send it.
        """

    def read(streams, since: str) -> Deferred:
        """
        The messages of ``streams`` after offset ``since``: a :class:`Replay`.  Raises
        ValueError (synchronously) when ``since`` is not an offset of this server.
        """

    def head():
        """
        The offset where the history stands now (what ``connected`` tells a client to
        resume from), or None when it is not known yet.  It may lag behind (a Redis
        history learns it every second): resuming from an older offset only replays
        more, never less.  It tells the clock's position, never when the last message
        was sent.
        """

    def stop():
        """Stop what the history runs on its own (a timer), at shutdown."""


def encode_with_offset(message: dict, offset: str) -> str:
    return jsonutil.dumps_text({**message, "offset": offset})


class _Stream:
    __slots__ = ("entries", "ghosts", "floor", "touched")

    def __init__(self):
        self.entries = deque()  # (n, at, text), oldest first
        self.ghosts = deque()  # n of dropped entries, oldest first
        self.floor = 0  # highest n forgotten from ghosts: below it, counts are unknown
        self.touched = 0.0


@implementer(IHistory)
class MemoryHistory:
    """
    The history of one process, in memory.

    :param clock: an ``IReactorTime``.
    :param size: messages kept per stream.
    :param ttl: seconds a message is kept.
    """

    def __init__(self, clock, size: int = 1000, ttl: float = 24 * 3600.0):
        self._clock = clock
        self.size = size
        self.ttl = ttl
        self.epoch = new_epoch()
        self._n = 0
        self._streams = {}
        self._appends = 0

    def __len__(self) -> int:
        return sum(len(s.entries) for s in self._streams.values())

    def append(self, streams, message: dict) -> Deferred:
        now = self._clock.seconds()
        n = self._n = next_n(self._n, now)
        offset = make_offset(self.epoch, n)
        text = encode_with_offset(message, offset)
        for name in dict.fromkeys(streams):
            stream = self._streams.get(name)
            if stream is None:
                stream = self._streams[name] = _Stream()
            stream.entries.append((n, now, text))
            stream.touched = now
            self._trim(stream, now)
        self._appends += 1
        if self._appends % 1000 == 0:
            self._forget_idle(now)
        return succeed((offset, text))

    def _trim(self, stream: _Stream, now: float) -> None:
        entries = stream.entries
        oldest = now - self.ttl
        while entries and (len(entries) > self.size or entries[0][1] < oldest):
            stream.ghosts.append(entries.popleft()[0])
        while len(stream.ghosts) > GHOST_FACTOR * self.size:
            stream.floor = stream.ghosts.popleft()

    def _forget_idle(self, now: float) -> None:
        limit = now - FORGET_FACTOR * self.ttl
        for name in [k for k, s in self._streams.items() if s.touched < limit]:
            del self._streams[name]

    def stop(self) -> None:
        pass

    def head(self) -> str:
        # Where the clock stands, not the last offset given: that would tell when the
        # last message to anyone was sent.  The counter moves up to it, so that every
        # later offset is after this one whatever the clock does next.
        self._n = max(self._n, clock_n(self._clock.seconds()) - 1)
        return make_offset(self.epoch, self._n)

    def read(self, streams, since: str) -> Deferred:
        epoch, after = parse_offset(since)
        now = self._clock.seconds()
        if epoch != self.epoch:
            return succeed(Replay([], False, None, self.head()))
        found = {}
        lost = 0
        known = True
        until = after
        for name in dict.fromkeys(streams):
            stream = self._streams.get(name)
            if stream is None or stream.touched < now - FORGET_FACTOR * self.ttl:
                continue
            self._trim(stream, now)
            if stream.floor > after:
                known = False
            for n in stream.ghosts:
                if n > after:
                    lost += 1
                    until = max(until, n)
            for n, _, text in stream.entries:
                if n > after:
                    found[n] = text
                    until = max(until, n)
        messages = [found[n] for n in sorted(found)]
        recovered = known and lost == 0
        return succeed(Replay(messages, recovered, lost if known else None,
                              make_offset(self.epoch, until)))
