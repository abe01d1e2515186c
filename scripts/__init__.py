"""Developer scripts; a package so tests can ``from scripts.kafka_broker import KafkaBroker``."""
