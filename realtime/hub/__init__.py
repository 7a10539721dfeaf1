"""The connections of a process and the events between processes: registry and delivery,
the broker interface and memory broker, topics, one-process presence, the gateway."""
