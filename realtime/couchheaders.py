"""
The headers of the gateway's own requests to CouchDB (feeds, replays, previous-revision
reads, document writes): JSON, and the admin credentials of ``COUCHDB_ADMIN_AUTH`` (base64
of ``user:password``) when they are set.  One place, so every reader sends the same.
"""

from __future__ import annotations

from typing import Dict, List, Optional


def couch_headers(admin_auth: Optional[str], json_body: bool = False) -> Dict[bytes, List[bytes]]:
    """``{name: [value]}`` for ``twisted.web.http_headers.Headers`` or treq."""
    headers = {b"Accept": [b"application/json"]}
    if json_body:
        headers[b"Content-Type"] = [b"application/json"]
    if admin_auth:
        headers[b"Authorization"] = [b"Basic " + admin_auth.encode("ascii")]
    return headers
