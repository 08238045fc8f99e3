"""Kafka: the ingest producer (producer.py), the event consumer (consumer.py) and what they share
(common.py: client settings, the envelope, outage logging). Off unless KAFKA_BROKER_URL is set."""
