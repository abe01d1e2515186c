"""No secret leaves the process: distinct secrets planted in every secret slot of a running
scorer (a real `stream-scorer run` on the real broker, with a dead letter to write) never appear
in its output, its logs, `/metrics`, `/readyz`, its dead letters or its alerts."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    committed_offsets,
    end_offsets,
    produce_values,
    read_topic,
    stream_topics,
    wait_until,
)
from .scorer_process import ScorerProcess, base_config, encode_events, make_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRETS = {
    "sasl_password": "S3CR3T-sasl-0a1b2c",
    "registry_password": "S3CR3T-registry-3d4e5f",
    "metrics_password": "S3CR3T-metrics-6a7b8c",
    "ssl_key_password": "S3CR3T-sslkey-9d0e1f",
    "pseudonymise_key": "ab" * 32,
    "dead_letter_key": "cd" * 32,
}


def _get(url: str, auth: bool) -> tuple[int, str]:
    request = urllib.request.Request(url)  # noqa: S310 - a loopback URL the test built
    if auth:
        token = base64.b64encode(f"prom:{SECRETS['metrics_password']}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


def test_planted_secrets_never_leave_the_process(
    kafka_bootstrap: str, make_topic: Any, tmp_path: Path
) -> None:
    """Every secret slot filled with a distinct value; scored, dead-lettered, scraped and
    stopped: none of the values is anywhere the process wrote."""
    topics = stream_topics(make_topic)
    events = make_events(300, seed=23)
    produce_values(
        kafka_bootstrap,
        topics["input"],
        [*encode_events(events), (b"card-bad", b"\x00not avro at all")],
    )
    password_file = tmp_path / "sasl.txt"
    password_file.write_text(SECRETS["sasl_password"], encoding="utf-8")
    config = base_config(
        kafka_bootstrap,
        topics,
        kafka={
            # PLAINTEXT: the SASL password is set but unused, as a misconfigured file would be.
            "sasl_username": "svc",
            "sasl_password_file": str(password_file),
            "common": {"ssl.key.password": SECRETS["ssl_key_password"]},
        },
        schema={"registry_username": "svc", "registry_password": SECRETS["registry_password"]},
        metrics={
            "basic_auth_username": "prom",
            "basic_auth_password": SECRETS["metrics_password"],
        },
        privacy={
            "key": "pseudonymise",
            "pseudonymise_key": SECRETS["pseudonymise_key"],
            "dead_letter_payload": "encrypt",
            "dead_letter_key": SECRETS["dead_letter_key"],
        },
    )
    scorer = ScorerProcess(tmp_path, config)
    try:
        base = scorer.metrics_url()
        ends = end_offsets(kafka_bootstrap, topics["input"])
        group = config["kafka"]["group_id"]
        wait_until(
            lambda: committed_offsets(kafka_bootstrap, group, topics["input"]) == ends,
            120,
            "the scorer to commit every offset",
        )
        refused, _ = _get(f"{base}/metrics", auth=False)
        status, metrics_text = _get(f"{base}/metrics", auth=True)
        _, readyz = _get(f"{base}/readyz", auth=False)
        scorer.terminate()
        assert scorer.wait() == 0
    finally:
        scorer.close()

    assert (refused, status) == (401, 200)
    assert "stream_scorer_records_consumed_total" in metrics_text
    written = [scorer.log_path.read_text(errors="replace"), metrics_text, readyz]
    dead = read_topic(kafka_bootstrap, topics["dead_letter"])
    assert len(dead) == 1
    alerts = read_topic(kafka_bootstrap, topics["alerts"])
    for message in [*dead, *alerts]:
        written.append(repr(message.key()) + repr(message.value()))
        written.extend(repr(v) for _, v in message.headers() or [])
    everything = "\n".join(written)
    for slot, secret in SECRETS.items():
        assert secret not in everything, f"the {slot} leaked"
        assert secret.encode().hex() not in everything, f"the {slot} leaked, hex-encoded"
