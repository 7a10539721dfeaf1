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
- Whenever the stream is lost (it ended, the watchdog cut it, a request failed), the feed
  is behind.  It was last known caught up at the stream's last byte (nothing is known of
  the time after it), or earlier, at the arrival of a row left unprocessed.
- Behind, the follower does not stream: it reads the backlog with the normal feed, in
  batches of :data:`BACKLOG_BATCH` after ``last_seq``
  (:class:`realtime.feeds.couchreads.ChangesReader`: deadlines, retries, documents too
  deep to parse), each row stamped with the time the feed was last caught up.  A batch
  shorter than that holds every change made before it was asked for: once its rows are
  processed, if that took at most :data:`LIVE_WITHIN`, the feed is live again, caught up
  when the batch was asked for, and streams from the batch's ``last_seq`` (the changes
  made meanwhile come first, stamped with their arrival: at most that much later than
  they were made).  If it took longer, another batch is read.  No seq is compared or
  parsed: the end is exact on CouchDB 2/3 (string seqs) as on pouchdb-server.
- Live rows held behind a slow one (a previous revision read from CouchDB) keep their
  arrival stamps; when :data:`realtime.feeds.rows.MAX_HELD_LINES` are held, the stream is
  not paused (changes made during a pause would arrive later, looking live) but dropped,
  and what follows is read again as a backlog.
- Before the first caught-up moment (a follower started from an explicit ``since``), the
  stamp is minus infinity: nobody's roles count.

:class:`CatchUp` is a mixin of :class:`~realtime.feeds.changes.ChangesFollower`; it uses
the follower's ``_agent``, ``_base``, ``_clock``, ``_admin_auth``, ``watchdog_seconds``,
``db``, ``last_seq``, ``last_byte_at``, ``_busy_row``, ``_body``, ``_paused``,
``_request``, ``_running``, ``_backoff``, ``_take``, ``_connect``,
``_schedule_reconnect``, ``_set_state`` and ``_credentials_hint``.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError

from realtime.feeds.couchreads import ChangesReader
from realtime.vocabulary import ROLES_BEFORE

#: changes per read of the backlog (their documents are held in memory together)
BACKLOG_BATCH = 200

#: a short batch ends the backlog only when its rows were processed within this many
#: seconds of asking for it (else another batch is read): changes made in between arrive
#: first on the stream, stamped live
LIVE_WITHIN = 0.5

_NEVER = float("-inf")


class CatchUp:
    """The backlog of a follower (see the module docstring)."""

    def _init_catch_up(self, track_backlog: bool, since) -> None:
        self.track_backlog = track_backlog
        self._behind = track_backlog and since != "now"
        self._caught_up_at = _NEVER  # the stamp of the backlog's rows
        self._requested_at = _NEVER  # when the last request was sent
        self._backlog_end = None  # (last_seq, caught up at) of a complete last batch
        self._reader = (ChangesReader(self._agent, self._base, self._clock,
                                      self._admin_auth, timeout=self.watchdog_seconds)
                        if track_backlog else None)

    @property
    def catching_up(self) -> bool:
        """The feed is behind: the backlog is read before streaming again."""
        return self.track_backlog and self._behind

    def caught_up_time(self) -> float:
        """When the feed was last known caught up: live, its last byte (or the moment it
        became live); behind, the last such time before it fell behind."""
        if self._behind:
            return self._caught_up_at
        at = max(self._caught_up_at, self.last_byte_at or _NEVER)
        busy = self._busy_row  # arrived, not yet processed: the index is behind it
        if busy is not None:
            at = min(at, busy.get(ROLES_BEFORE, at))
        return at

    def _live(self, caught_up_at: float) -> None:
        self._behind = False
        self._caught_up_at = caught_up_at

    def _fell_behind(self) -> None:
        """The stream is lost (called before each reconnection)."""
        if not self.track_backlog or self._behind:
            return
        self._caught_up_at = self.caught_up_time()
        self._behind = True

    def _stamp(self, row: dict) -> None:
        """A change row of the stream arrived: stamp it (see the module docstring)."""
        if self.track_backlog:
            row[ROLES_BEFORE] = self._caught_up_at if self._behind \
                else self._clock.seconds()

    def _shed(self) -> None:
        """Too many rows held behind a slow one: drop the stream, read them again later."""
        self._log.info("changes feed of {db}: changes wait behind a slow one; the stream "
                       "is dropped and they are read again as a backlog", db=self.db)
        self._paused = True  # nothing more is held or re-armed until it has ended
        self._stall_abort = True  # not an error
        self._body.abort()

    # -- reading the backlog ------------------------------------------------------------

    def _reading_backlog(self) -> bool:
        """Called by ``_connect`` (nothing being processed): True when it asked for the
        next batch of the backlog; False to stream (the backlog just ended, or none)."""
        if not self.catching_up or self.last_seq == "now":  # "now": the position first
            return False
        if self._backlog_end is not None:
            last, at = self._backlog_end
            self._backlog_end = None
            if self._clock.seconds() - at <= LIVE_WITHIN:
                if last is not None:
                    self.last_seq = last
                self._live(at)
                return False
        if self.state == self.STOPPED:  # started from an explicit seq
            self._set_state(self.CONNECTING)
        d = self._reader.changes(self.db, self.last_seq, BACKLOG_BATCH)
        self._request = d
        d.addCallbacks(self._batch_read, self._batch_failed, callbackArgs=(d,),
                       errbackArgs=(d,))
        return True

    def _batch_read(self, answer: dict, d) -> None:
        if self._request is not d:
            return
        self._request = None
        results = answer.get("results")
        if not isinstance(results, list):
            self._batch_failed(None, d, "CouchDB's _changes answer holds no results")
            return
        self.missing = False
        self.last_error = None  # (not a byte of a stream: last_byte_at stays)
        self._backoff.reset()
        self._set_state(self.CONNECTED)
        if len(results) < BACKLOG_BATCH:
            self._backlog_end = (answer.get("last_seq"), self._requested_at)
        for row in results:
            if isinstance(row, dict) and "id" in row and "seq" in row:
                row[ROLES_BEFORE] = self._caught_up_at
                self._take(row)
        self._connect()  # once they are processed: the next batch, or the stream

    def _batch_failed(self, failure, d, error: str = "") -> None:
        if failure is not None:
            if self._request is not d or failure.check(CancelledError):
                return
            self._request = None
            status = getattr(failure.value, "status", None)
            self.missing = status == 404
            error = (str(failure.value) or type(failure.value).__name__) + (
                self._credentials_hint(status) if status else "")
        if not self._running:
            return
        self._backlog_end = None
        self.last_error = "reading the backlog: " + error
        self._log.warn("changes feed of {db}: {error}; retrying", db=self.db,
                       error=self.last_error)
        self._schedule_reconnect()
