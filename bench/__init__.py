"""Benchmarks: stream-scorer against baselines on the repo's real Kafka broker (``make bench``)."""
