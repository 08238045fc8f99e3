"""marshmallow schemas: client frames, server frames and Kafka event envelopes."""
