"""Redis implementations only: the client, ``REDIS_URL`` parsing, broker, presence, stores."""
