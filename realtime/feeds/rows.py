"""
The rows of a ``_changes`` feed, processed in order: what :class:`ChangesFollower` does
with each line of its stream.

- A line is parsed with ``jsonutil.loads`` (an unparsable line is logged and dropped); a
  change row (``id`` and ``seq``) goes to the follower's callback, a ``last_seq`` row moves
  the resume point, an ``error`` row is reported in ``lastError``.
- A change whose document nests deeper than the parser can go (about 950 levels) is not
  dropped: its other fields are read one by one (:func:`shallow_row`: CouchDB writes
  ``seq``, ``id``, ``changes`` and ``deleted`` before ``doc``, pouchdb-server ``seq``
  after it; past :data:`MAX_SKIPPED_CHARS` after the deep field, the line is dropped as
  unparsable, its cost bounded) and the row goes to the callback without its document,
  marked
  :data:`realtime.vocabulary.TOO_DEEP`, so the feed moves past it (its ``seq``) and a
  deletion is still a deletion; the routing sends that revision to nobody and counts it
  (``realtime_db_undecidable_total``).  It is logged with the database and the ``seq``,
  never the content.
- The callback may return a Deferred (an application database reading an older revision
  from CouchDB): the change counts as processed when it fires, and the lines read
  meanwhile are held and processed after it, in order (past :data:`MAX_HELD_LINES` the
  response is paused: backpressure, and the watchdog rests while paused).  A stream that
  ends meanwhile reconnects only once the pending change is processed, so nothing is routed
  twice.  ``lag_seconds`` is how long the oldest change read and not yet processed has
  waited (the feed lag of the metrics).
- An exception the callback raises, or a Deferred that fails, is logged and the change
  still counts as processed (one bad document must not stall the feed).

:class:`ChangeRows` is a mixin of :class:`~realtime.feeds.changes.ChangesFollower` (it is
not used alone): it owns the processing state (``_busy``, ``_held``, ``_paused``,
``_connect_when_idle``) and uses the follower's ``db``, ``_on_change``, ``_clock``,
``_body``, ``last_seq``, ``last_error``, ``changes_seen``, its watchdog
(``_arm_watchdog``, ``_cancel_timer``), ``_connect`` and ``_stamp``
(:mod:`realtime.feeds.catchup`).
"""

from __future__ import annotations

import re
from collections import deque
from json.decoder import scanstring
from typing import Optional

from twisted.internet.defer import Deferred

from realtime import jsonutil
from realtime.vocabulary import TOO_DEEP

#: lines held while a change is being processed asynchronously; past it, the feed pauses
MAX_HELD_LINES = 1000

#: a field too deep to parse is skipped (to read the fields after it: pouchdb-server
#: writes ``seq`` after ``doc``) when at most this many characters follow it
MAX_SKIPPED_CHARS = 1024 * 1024

_SPACE = re.compile(r"[ \t\n\r]*")
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def _value_end(text: str, start: int) -> int:
    """Where the object or list at ``text[start]`` ends (iterative: any depth)."""
    depth = 0
    for token in _TOKEN.finditer(text, start):
        char = token.group()[0]
        if char in "[{":
            depth += 1
        elif char != '"':
            depth -= 1
            if depth == 0:
                return token.end()
    raise ValueError("unterminated value")


def shallow_row(line: bytes) -> Optional[dict]:
    """
    A change row that :func:`jsonutil.loads` refused as nested too deep: its top-level
    fields, each parsed on its own, without those nested too deep (skipped to read the
    fields after them, unless more than :data:`MAX_SKIPPED_CHARS` follow: then the row
    ends there); None when the line is not a JSON object.  No recursion beyond one
    field's own: any depth is safe.
    """
    try:
        text = bytes(line).decode("utf-8")
        at = _SPACE.match(text).end()
        if text[at:at + 1] != "{":
            return None
        row = {}
        at = _SPACE.match(text, at + 1).end()
        while text[at:at + 1] == '"':
            key, at = scanstring(text, at + 1)
            at = _SPACE.match(text, at).end()
            if text[at:at + 1] != ":":
                return None
            at = _SPACE.match(text, at + 1).end()
            try:
                row[key], at = jsonutil.decode_at(text, at)
            except jsonutil.TooDeep:
                if len(text) - at > MAX_SKIPPED_CHARS:
                    return row  # the fields after it (if any) are lost
                at = _value_end(text, at)
            at = _SPACE.match(text, at).end()
            if text[at:at + 1] != ",":
                break
            at = _SPACE.match(text, at + 1).end()
        return row if text[at:at + 1] == "}" else None
    except ValueError:  # UnicodeDecodeError and JSONDecodeError included
        return None


class ChangeRows:
    """The line and row handling of a follower (see the module docstring)."""

    def _init_rows(self) -> None:
        self._busy: Optional[Deferred] = None  # a change being processed asynchronously
        self._busy_since = 0.0
        self._busy_row: Optional[dict] = None  # the row of ``_busy``
        self._held: deque = deque()  # rows read while busy, processed after it in order
        self._paused = False
        self._connect_when_idle = False

    def _drop_held(self) -> None:
        """Forget the rows read and not processed (they are read again from ``since``)."""
        self._held.clear()
        self._paused = False

    def _overflow(self, size: int) -> None:
        self._log.error("changes feed of {db}: a line over {size} bytes was dropped",
                        db=self.db, size=size)

    def _line(self, line: bytes) -> None:
        try:
            row = jsonutil.loads(line)
        except jsonutil.TooDeep:
            row = shallow_row(line)
            if row is None or "seq" not in row or "id" not in row:
                self._log.warn("changes feed of {db}: a line nested too deep to parse, "
                               "dropped", db=self.db)
                return
            row.pop("doc", None)
            row[TOO_DEEP] = True
            self._log.warn("changes feed of {db}: the document of the change at seq {seq} "
                           "is nested too deep to parse: nobody is sent it", db=self.db,
                           seq=str(row["seq"])[:200])
        except ValueError:
            self._log.warn("changes feed of {db}: unparsable line dropped", db=self.db)
            return
        if not isinstance(row, dict):
            return
        if "id" in row and "seq" in row:
            self._stamp(row)
        self._take(row)

    def _take(self, row: dict) -> None:
        """Process a row now, or hold it behind the one being processed."""
        if self._busy is not None:
            self._held.append(row)
            if len(self._held) >= MAX_HELD_LINES and not self._paused and self._body:
                if self.track_backlog:
                    self._shed()  # see realtime.feeds.catchup
                    return
                self._paused = True
                self._cancel_timer("_watchdog")
                self._body.pause()
            return
        self._row(row)

    def _row(self, row: dict) -> None:
        if "id" in row and "seq" in row:
            self.changes_seen += 1
            try:
                result = self._on_change(self.db, row)
            except Exception:
                self._log.failure("processing a change of {db} failed", db=self.db)
                result = None
            if isinstance(result, Deferred):
                if not result.called:
                    self._busy, self._busy_row = result, row
                    self._busy_since = self._clock.seconds()
                    result.addBoth(self._processed, row)
                    return
                result.addErrback(self._failed)
            self.last_seq = row["seq"]
        elif "last_seq" in row:
            # The server ends the feed (timeout): resume from there.
            self.last_seq = row["last_seq"]
        elif "error" in row:
            self.last_error = str(row.get("reason") or row.get("error"))
            self._log.warn("changes feed of {db} reported an error: {error}",
                           db=self.db, error=self.last_error)

    def _failed(self, failure) -> None:
        self._log.failure("processing a change of {db} failed", failure, db=self.db)

    def _processed(self, result, row: dict) -> None:
        """An asynchronous change is done: it counts, then the held lines are processed."""
        if hasattr(result, "check"):  # a Failure
            self._failed(result)
        self._busy = self._busy_row = None
        self.last_seq = row["seq"]
        while self._held and self._busy is None:
            self._row(self._held.popleft())
        if self._busy is None:
            if self._paused:
                self._paused = False
                if self._body is not None:
                    self._arm_watchdog()
                    self._body.resume()
            if self._connect_when_idle:
                self._connect_when_idle = False
                self._connect()

    @property
    def pending(self) -> int:
        """Changes read and not yet processed."""
        return len(self._held) + (1 if self._busy is not None else 0)

    def lag_seconds(self) -> float:
        """How long the oldest change read and not yet processed has waited (0: none)."""
        if self._busy is None:
            return 0.0
        return max(0.0, self._clock.seconds() - self._busy_since)
