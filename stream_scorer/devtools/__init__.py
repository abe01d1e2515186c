"""Tools around the service, not stages of it: the synthetic generator, the load producer,
the demo and the in-process development Schema Registry.

Nothing on the service's data path imports this package; ``cli.py`` imports its modules
lazily, only for the ``produce`` and ``demo`` commands, and tests and benchmarks use them as
fixtures.
"""

__all__: list[str] = []
