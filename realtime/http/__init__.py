"""HTTP: the JSON resource kit, the REST API under ``/websocket`` and the site."""
