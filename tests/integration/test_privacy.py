"""Privacy on the real broker: pseudonymised keys on alerts and dead letters, encrypted
dead-letter payloads, and `dead-letters replay` bringing the original bytes back."""

from __future__ import annotations

from typing import Any

import pytest

from stream_scorer import cli
from stream_scorer.privacy import ENCRYPTION_HEADER, PayloadCipher, Pseudonymiser
from stream_scorer.settings import load_settings

from .helpers import RunningScorer, produce_values, read_topic, scorer_settings, stream_topics
from .scorer_process import encode_events, make_events

pytestmark = pytest.mark.integration

DLQ_KEY = "11" * 32
PSEUDO_KEY = "22" * 32
CORRUPT = [(f"card-bad-{i}".encode(), f"\x00not avro {i}".encode()) for i in range(3)]


def test_encrypted_dead_letters_replay_to_their_original_bytes(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Any
) -> None:
    """Keys leave pseudonymised; dead-letter payloads leave sealed; replay with the key puts
    each original value (with its pseudonymised key) back on a topic, without the reason
    headers."""
    topics = stream_topics(make_topic)
    events = make_events(300, seed=17)
    produce_values(kafka_bootstrap, topics["input"], [*encode_events(events), *CORRUPT])
    privacy = {
        "key": "pseudonymise",
        "pseudonymise_key": PSEUDO_KEY,
        "dead_letter_payload": "encrypt",
        "dead_letter_key": DLQ_KEY,
        "dead_letter_key_id": "k-test",
    }
    settings = scorer_settings(kafka_bootstrap, topics, None, privacy=privacy)
    scorer = RunningScorer(settings)
    try:
        scorer.wait_caught_up(topics["input"])
    finally:
        assert scorer.stop() == 0

    token = Pseudonymiser(bytes.fromhex(PSEUDO_KEY)).token
    alerts = read_topic(kafka_bootstrap, topics["alerts"])
    assert alerts, "the shipped model flags some of 300 events"
    card_ids = {e["card_id"].encode() for e in events}
    assert all(m.key() not in card_ids for m in alerts)
    assert {m.key() for m in alerts} <= {token(c).encode() for c in card_ids}
    dead = read_topic(kafka_bootstrap, topics["dead_letter"])
    assert len(dead) == len(CORRUPT)
    originals = {value for _, value in CORRUPT}
    for message in dead:
        assert message.value() not in originals
        assert dict(message.headers() or [])[ENCRYPTION_HEADER] == b"aes-256-gcm"
    assert {m.key() for m in dead} == {token(k).encode() for k, _ in CORRUPT}

    fresh = make_topic("replayed")
    config = tmp_path / "replay.toml"
    config.write_text(
        f'[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\n'
        f'[topics]\ninput = "{topics["input"]}"\nalerts = "{topics["alerts"]}"\n'
        f'dead_letter = "{topics["dead_letter"]}"\n'
        f'[schema]\nwire_format = "plain"\n'
        f'[privacy]\ndead_letter_payload = "encrypt"\ndead_letter_key = "{DLQ_KEY}"\n'
        f'dead_letter_key_id = "k-test"\n',
        encoding="utf-8",
    )
    load_settings(config, environ={})  # the file is a valid config

    assert cli.main(["dead-letters", "replay", "--config", str(config), "--to", fresh]) == 0

    replayed = read_topic(kafka_bootstrap, fresh)
    assert sorted(m.value() for m in replayed) == sorted(originals)
    for message in replayed:
        headers = dict(message.headers() or [])
        assert headers["replayed.from"].startswith(topics["dead_letter"].encode())
        assert not any(name.startswith(("error.", "dlq.", "source.")) for name in headers)


def test_replay_with_the_wrong_key_refuses_and_keeps_them(
    kafka_bootstrap: str, make_topic: Any
) -> None:
    """A dead letter that does not decrypt under the configured key is not replayed: it is
    counted, and the command's exit code says so."""
    from stream_scorer.dlq_replay import replay_dead_letters  # noqa: PLC0415

    topics = stream_topics(make_topic)
    produce_values(kafka_bootstrap, topics["input"], [*encode_events(make_events(20, 5)), *CORRUPT])
    settings = scorer_settings(
        kafka_bootstrap,
        topics,
        None,
        privacy={"dead_letter_payload": "encrypt", "dead_letter_key": DLQ_KEY},
    )
    scorer = RunningScorer(settings)
    try:
        scorer.wait_caught_up(topics["input"])
    finally:
        assert scorer.stop() == 0
    fresh = make_topic("replayed")

    counts = replay_dead_letters(
        {"bootstrap.servers": kafka_bootstrap},
        topics["dead_letter"],
        fresh,
        {"1": PayloadCipher(bytes.fromhex("33" * 32), "1")},
    )

    assert (counts.read, counts.replayed, counts.refused) == (3, 0, 3)
    assert read_topic(kafka_bootstrap, fresh) == []
