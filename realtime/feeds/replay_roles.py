"""
Roles in a ``resume`` replay (:mod:`realtime.feeds.replay`): why a replay never judges an
old revision by a role, and the earlier revisions it reads.

Live, a change is judged with the roles a connection holds at that moment, and its previous
revision was current just before: a ``removed`` goes to a user who could read that
revision then.  A replay has no such moment.  ``since`` is the client's word (any seq it
likes, per database), and nothing places a role in a database's seqs: a JWT's roles have no
position at all, and a ``_users`` document's changes are seqs of another database.  So:

- An earlier revision readable through a role the user holds *now* may be from before they
  held it.  Judged by it, a user granted ``hr`` today and resuming from ``0`` would be told
  the ids and revs of documents ``hr`` opened before it was theirs.
- Roles the user's ``_users`` document gave before (its earlier revisions) may have been
  lost before a document was written.  Judged by them, a user who lost ``hr`` long ago and
  resumes with an old ``_users`` seq would be told the ids of documents ``hr`` opens today
  (this module once found those with ``_find``: removed, as a leak).

Decision: an earlier revision makes a ``removed`` or ``deleted`` only when it was readable
by the user as a user (a users field naming them, or ``public``): that is true of them at
any moment.  For one that only a role opened nothing is sent, and it is not counted in
``realtime_replay_undecidable_total`` either: that count is public, and a user holding a
role could bisect ``since`` to learn how many documents it used to open.
The client sees its roles in the replayed ``user-change`` and its documents in the replay;
what a lost role opened is reloaded from the app (``docs/resume.rst`` says so).
"""

from __future__ import annotations

#: earlier revisions read back to decide ``removed`` / ``deleted`` for a document the user
#: may not read now
ANCESTORS_READ = 3


def ancestors(doc: dict):
    """The revisions before ``doc``'s, newest first, from its ``_revisions`` (the last
    :data:`ANCESTORS_READ`)."""
    revisions = doc.get("_revisions")
    if not isinstance(revisions, dict):
        return []
    start, ids = revisions.get("start"), revisions.get("ids")
    if not isinstance(start, int) or not isinstance(ids, list):
        return []
    return [f"{start - i}-{rev_id}" for i, rev_id in enumerate(ids)
            if i > 0 and isinstance(rev_id, str)][:ANCESTORS_READ]
