"""``lifecycle.watch = "kafka"``: aliases carried to every member by a compacted control topic.

The topic (``lifecycle.control_topic``, ``cleanup.policy=compact``, one partition) holds one
record per model, keyed by its name, whose value is the model's whole alias state (aliases and
their rollback stacks, as in ``aliases.json``); compaction keeps the latest. Whoever changes an
alias (``models promote``, ``models rollback``, an automatic rollback) writes the state file and
publishes it. Each member runs a :class:`ControlFollower`: a consumer *assigned* to the topic
from its beginning (outside the scoring group, so following aliases never rebalances scoring)
that mirrors each record into its local state directory, where the
:class:`~stream_scorer.lifecycle.watcher.PromotionWatcher` picks it up as in file mode. A member
started later reads the topic to its end before it scores, so it starts on the promoted version.

History entries travel the same way, each under its own key ``<name>/history/<id>`` (so
compaction keeps them all), and every host appends those it has not got: ``models history`` on
any host (it reads the topic to its end first) shows every instance's ``applied`` lines.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from stream_scorer.lifecycle.repository import HistoryEntry, LifecycleError, ModelRepository

__all__ = ["ControlFollower", "ControlTopic"]

log = structlog.get_logger(__name__)

#: Separates a model name from a history entry's id in a control record's key.
HISTORY_KEY = "/history/"
#: Seconds a control-topic call (create, publish, catch up) may take.
CONTROL_TIMEOUT_S = 30.0


class ControlTopic:
    """Creates the control topic and publishes alias states to it."""

    def __init__(self, client_config: Mapping[str, Any], topic: str) -> None:
        """Nothing connects until :meth:`ensure` or :meth:`publish`."""
        self._config = dict(client_config)
        self.topic = topic

    def ensure(self) -> None:
        """Create the topic (compacted, one partition) unless it exists.

        Raises:
            LifecycleError: The cluster refused or did not answer in time.
        """
        admin = AdminClient(self._config)
        topic = NewTopic(self.topic, 1, replication_factor=-1,
                         config={"cleanup.policy": "compact"})  # fmt: skip
        try:
            admin.create_topics([topic])[self.topic].result(timeout=CONTROL_TIMEOUT_S)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                msg = f"lifecycle.control_topic {self.topic!r}: cannot create it: {exc}"
                raise LifecycleError(msg) from exc

    def publish(self, name: str, state: Mapping[str, Any]) -> None:
        """Publish one model's alias state and wait for the acknowledgement.

        Raises:
            LifecycleError: Not acknowledged in time (the local state is already written:
                publish again with the same command).
        """
        self._send(name, json.dumps(state, sort_keys=True))

    def publish_entry(self, entry: HistoryEntry) -> None:
        """Publish one history entry under its own key, so compaction keeps every entry.

        Raises:
            LifecycleError: Not acknowledged in time.
        """
        self._send(f"{entry.model}{HISTORY_KEY}{entry.id}", entry.to_json())

    def _send(self, key: str, value: str) -> None:
        errors: list[str] = []
        producer = Producer({**self._config, "enable.idempotence": True})
        producer.produce(
            self.topic, key=key.encode(), value=value.encode(),
            on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
        )  # fmt: skip
        if producer.flush(CONTROL_TIMEOUT_S) or errors:
            msg = f"lifecycle.control_topic {self.topic!r}: alias change not acknowledged: {errors}"
            raise LifecycleError(msg)


class ControlFollower:
    """Mirrors the control topic into the local state directory, from a thread."""

    def __init__(
        self,
        client_config: Mapping[str, Any],
        topic: str,
        repo: ModelRepository,
        stop: threading.Event,
    ) -> None:
        """Assign a consumer to the whole topic from its beginning (no group membership)."""
        self.topic = topic
        self._repo = repo
        self._stop = stop
        self._consumer = Consumer({
            **client_config,
            # Only for the client's bookkeeping: nothing subscribes or commits with it.
            "group.id": f"{topic}-follower-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })  # fmt: skip
        metadata = self._consumer.list_topics(topic, timeout=CONTROL_TIMEOUT_S)
        partitions = list(metadata.topics[topic].partitions)
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self._partitions = partitions
        self._thread: threading.Thread | None = None

    def _apply(self, timeout_s: float) -> None:
        for message in self._consumer.consume(100, timeout=timeout_s):
            if message.error() is not None or message.key() is None:
                continue
            key = message.key()
            value = message.value()
            if value is None or key is None:
                continue  # a tombstone: keep the last aliases rather than none
            try:
                if HISTORY_KEY in key.decode():
                    self._repo.mirror_entry(HistoryEntry.from_json(value.decode()))
                else:
                    self._repo.mirror_aliases(key.decode(), json.loads(value))
            except (ValueError, TypeError, LifecycleError) as exc:
                log.error("control_record_refused", topic=self.topic, error=str(exc))

    def catch_up(self, timeout_s: float = CONTROL_TIMEOUT_S) -> None:
        """Read to the topic's current end, so a new member starts on the live aliases.

        Raises:
            LifecycleError: The end was not reached in time.
        """
        ends = {
            p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
            for p in self._partitions
        }
        deadline = time.monotonic() + timeout_s
        while True:
            positions = self._consumer.position(
                [TopicPartition(self.topic, p) for p in self._partitions]
            )
            if all(tp.offset >= ends[tp.partition] or ends[tp.partition] == 0 for tp in positions):
                return
            if time.monotonic() > deadline:
                msg = f"lifecycle.control_topic {self.topic!r}: not read to its end in time"
                raise LifecycleError(msg)
            self._apply(0.2)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._apply(0.5)
        finally:
            self._consumer.close()

    def close(self) -> None:
        """Close the consumer (a follower that only caught up, never started)."""
        self._consumer.close()

    def start(self) -> None:
        """Follow the topic until the stop event is set."""
        self._thread = threading.Thread(target=self._run, name="control-follower", daemon=True)
        self._thread.start()
