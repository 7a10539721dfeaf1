"""
The demo application database of the run command (``make run``): a ``notes`` database and
its rule file, seeded into the embedded pouchdb-server, so that a newcomer sees documents
move between two users within a minute.

Used only when the run command starts the embedded CouchDB and no ``REALTIME_CONFIG`` is
given.  The rule file is written next to the embedded server's data (its path is printed in
the banner, to copy and edit); the users are the demo user (role ``member``) and a second
one, ``<demo>2``, with the same password; the notes:

- ``welcome``: owned by the demo user, the second user a member (both see it);
- ``mine``: the demo user's alone;
- ``theirs``: the second user's alone;
- ``team``: shared with the role ``member`` (both).

Take the second user out of ``welcome``'s members (in Fauxton, or with the demo page) and
that user's browser gets ``removed`` for it.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from realtime.databases.rulefile import parse_rules
from realtime.databases.rules import RuleSet

DEMO_DB = "notes"

DEMO_RULES = f"""\
# The demo application database of `make run` (docs/databases.rst explains every key).
[databases.{DEMO_DB}]
users  = ["owner", "members"]     # users named in these fields may read a note
roles  = ["shared_with"]          # and any user holding a role named here
hidden = ["draft"]                # never sent to a browser
write  = ["owner", "members"]     # who may edit a note through the gateway
fields = ["title", "body"]        # what they may edit
owner  = "owner"                  # set to the creator by doc.create
"""


def second_user(user: str) -> str:
    return user + "2"


def demo_notes(user: str) -> dict:
    other = second_user(user)
    return {
        "welcome": {"owner": user, "members": [other], "title": "Welcome",
                    "body": f"{user} and {other} both see this note.",
                    "draft": "never leaves the server"},
        "mine": {"owner": user, "members": [], "title": f"{user}'s note",
                 "body": f"Only {user} sees this one."},
        "theirs": {"owner": other, "members": [], "title": f"{other}'s note",
                   "body": f"Only {other} sees this one."},
        "team": {"owner": user, "shared_with": ["member"], "title": "Team note",
                 "body": "Every user with the role 'member' sees this one."},
    }


def write_rules(directory: str) -> str:
    """Write the demo rule file into ``directory``; returns its path."""
    path = os.path.join(directory, "demo-rules.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(DEMO_RULES)
    return path


def demo_rules(path: str) -> RuleSet:
    return parse_rules(DEMO_RULES, path)


def seed(server, user: str, password: str) -> None:
    """Create the second user, the ``notes`` database and its notes (blocking)."""
    server.create_user(second_user(user), password, roles=["member"],
                       email=f"{second_user(user)}@example.com")
    status, body = server.request("PUT", "/" + DEMO_DB)
    if status not in (201, 412):
        raise RuntimeError(f"creating the demo database: HTTP {status}")
    for doc_id, doc in demo_notes(user).items():
        status, body = server.request("PUT", f"/{DEMO_DB}/{quote(doc_id, safe='')}",
                                      json.dumps(doc))
        if status not in (201, 202, 409):
            raise RuntimeError(f"seeding the demo database: HTTP {status}")
