"""The alternatives stream-scorer is measured against, each a standalone process.

Every module here imports only the standard library, numpy, fastavro, onnxruntime and
confluent-kafka (plus quixstreams for :mod:`bench.baselines.quix_app`), because the Quix Streams
job runs in its own virtual environment without stream-scorer's dependencies.
"""
