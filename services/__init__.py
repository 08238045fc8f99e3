"""Everything that is not HTTP: auth, the hub, the bus, presence, dedupe, Kafka, settings."""
