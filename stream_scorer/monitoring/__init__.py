"""Model monitoring inside the stream: drift per input and of the score against the model
card's reference, shadow and canary scoring on the champion's decoded batch, and the
comparison of champion and challengers.

The pipeline calls one :class:`~stream_scorer.monitoring.monitor.Monitor` once per batch, after
the champion's decision; everything here reads what the batch already decoded and scored.
"""

__all__: list[str] = []
