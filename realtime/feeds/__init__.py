"""CouchDB ``_changes`` feeds: following a feed, and routing a change to its recipients."""
