"""
When was a change made, at the latest?  The backlog of a followed database.

A change a follower reads live was made a moment before it arrived.  A change read after a
reconnection (the feed was cut, CouchDB was down, the watchdog fired) may have been made
at any time while the feed was away, and the connections' roles may have changed since:
a user granted a role during the outage must not be sent, or told ``removed`` or
``deleted`` about, a revision that role opened and that was gone before the role was
theirs (docs/security.rst, "Roles and time").

A follower made with ``track_backlog=True`` (the application databases' followers) stamps
every change row with :data:`realtime.vocabulary.ROLES_BEFORE`: a time such that a
connection holding its roles since then, or earlier, held them when the change was made.

- Live, the stamp is the row's arrival time.
- After a reconnection, the follower first asks CouchDB where its newest change is
  (``_changes?descending=true&limit=1``, sent at time T); the rows up to that seq are the
  backlog, stamped with the last time the feed was known caught up: when the stream ended
  (a live stream carries every change made before its end), or its last byte when the
  watchdog ended it for its silence; earlier still if a row was left unprocessed (its
  arrival).  Once the row at that seq arrives (the same seq, or a greater integer seq on
  pouchdb-server), every change made before T has arrived: the feed is live again.  When
  that row never comes (its document changed again, so the feed lists it later, under a
  string seq), a heartbeat after a whole heartbeat interval without a change means the
  same: CouchDB had nothing more to send.
- Before the first caught-up moment (a follower started from an explicit ``since``), the
  stamp is minus infinity: nobody's roles count.

:class:`CatchUp` is a mixin of :class:`~realtime.feeds.changes.ChangesFollower`; it uses
the follower's ``_clock``, ``heartbeat_ms``, ``last_seq``, ``last_byte_at``, ``_paused``
``_stall_abort`` and ``_busy_row``.
"""

from __future__ import annotations

from realtime.vocabulary import ROLES_BEFORE

_NEVER = float("-inf")


def reached(seq, target) -> bool:
    """Whether the row at ``seq`` is, or comes after, the one at ``target``: the same
    (opaque) seq, or integer seqs in order.  A string seq is never parsed."""
    if seq == target:
        return True
    ints = isinstance(seq, int) and isinstance(target, int)
    return ints and not isinstance(seq, bool) and not isinstance(target, bool) and seq >= target


class CatchUp:
    """The backlog of a follower (see the module docstring)."""

    def _init_catch_up(self, track_backlog: bool) -> None:
        self.track_backlog = track_backlog
        self._position_read = False  # a position was just read: the stream comes next
        self._backlog_to = None  # the seq ending the backlog; None: live
        self._position_at = _NEVER  # when the last position request was sent
        self._caught_up_at = _NEVER  # the stamp of the backlog's rows
        self._last_row_at = _NEVER  # arrival of the last change row (or of the stream)

    @property
    def catching_up(self) -> bool:
        """Rows of the backlog are being read (a reconnection's, up to its position)."""
        return self._backlog_to is not None

    def _asking_position(self) -> None:
        self._position_at = self._clock.seconds()

    def _position_is(self, seq) -> None:
        """CouchDB's newest change is at ``seq``; the stream will start from ``last_seq``."""
        self._position_read = True
        if self.last_seq == "now" or seq == self.last_seq:
            self._live(self._position_at)
        else:
            self._backlog_to = seq

    def _live(self, caught_up_at: float) -> None:
        self._backlog_to = None
        self._caught_up_at = caught_up_at

    def _fell_behind(self) -> None:
        """The stream ended (called before the unprocessed rows are dropped)."""
        if not self.track_backlog or self._backlog_to is not None:
            return
        ended = self.last_byte_at if self._stall_abort else self._clock.seconds()
        at = max(self._caught_up_at, _NEVER if ended is None else ended)
        busy = self._busy_row
        if busy is not None:
            at = min(at, busy.get(ROLES_BEFORE, at))
        self._caught_up_at = at

    def _stream_began(self) -> None:
        self._last_row_at = self._clock.seconds()

    def _heard(self, data: bytes) -> None:
        """Bytes of the stream arrived: a lone heartbeat may end the backlog."""
        if self._backlog_to is None or self._paused or data.strip():
            return
        if self._clock.seconds() - self._last_row_at >= self.heartbeat_ms / 1000.0:
            self._live(self._last_row_at)

    def _stamp(self, row: dict) -> None:
        """A change row arrived: stamp it (see the module docstring)."""
        if not self.track_backlog:
            return
        now = self._last_row_at = self._clock.seconds()
        if self._backlog_to is None:
            row[ROLES_BEFORE] = now
            return
        row[ROLES_BEFORE] = self._caught_up_at
        if reached(row.get("seq"), self._backlog_to):
            self._live(self._position_at)
