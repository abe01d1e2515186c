"""Benchmark: fastavro per-record decoding vs the columnar decoder on transaction.avsc.

Run: ``.venv/bin/python bench/bench_columnar.py [--n 20000] [--repeat 5] [--baseline REF]``.
Prints µs/record per batch size and the slowest crafted 1 KiB message, decoded (issue 12,
finding 1: hostile writer schemas with zero-byte items, long arrays, nested arrays, deep
recursion), and writes ``bench/results/columnar.json``.

``--baseline REF`` also times the columnar decoder of git ref REF (one where it was still the
single self-contained ``stream_scorer/decode/columnar.py``, e.g. 6fcdd2f) in the same run,
alternating with the current one, so before/after ratios come from one run on one machine.
A crafted message is given at most ``--cap`` seconds by the baseline (SIGALRM).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import json
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import fastavro
import numpy as np

from stream_scorer.decode.columnar import ColumnarDecoder

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "schemas" / "transaction.avsc").read_text())
RESULTS = ROOT / "bench" / "results" / "columnar.json"
BATCH_SIZES = (100, 500, 1000, 2000)
MODEL_FIELDS = (
    "amount",
    "merchant_category",
    "mcc",
    "channel",
    "card_present",
    "country",
    "home_country",
    "distance_from_home_km",
    "txn_count_1h",
    "seconds_since_last_txn",
    "is_new_device",
)


def make_records(n: int, seed: int) -> list[dict[str, Any]]:
    """Transactions from the project generator, or a seeded numpy stand-in without it."""
    try:
        from stream_scorer.devtools.generate import TransactionGenerator  # noqa: PLC0415
    except ImportError:
        pass
    else:
        return TransactionGenerator(seed).generate(n)[0]
    rng = np.random.default_rng(seed)
    cats = ["grocery", "electronics", "travel", "fuel", "restaurant"]
    return [
        {
            "transaction_id": f"{int(rng.integers(1 << 62)):032x}",
            "card_id": f"card-{int(rng.integers(1 << 60)):016x}",
            "account_id": f"acct-{int(rng.integers(1 << 60)):016x}",
            "amount": round(float(rng.lognormal(3, 1)), 2),
            "currency": "EUR",
            "merchant_id": f"M{int(rng.integers(10**8))}",
            "merchant_name": f"Shop {int(rng.integers(1000))}",
            "merchant_category": cats[int(rng.integers(len(cats)))],
            "mcc": int(rng.integers(1000, 9999)),
            "channel": ["POS", "ECOM", "ATM", "CONTACTLESS", "MOTO"][int(rng.integers(5))],
            "card_present": bool(rng.integers(2)),
            "country": "DE",
            "home_country": "FR",
            "distance_from_home_km": None if rng.random() < 0.1 else float(rng.exponential(20)),
            "txn_count_1h": int(rng.integers(10)),
            "seconds_since_last_txn": None if rng.random() < 0.05 else int(rng.integers(10**7)),
            "device_id": None,
            "ip_address": None,
            "is_new_device": bool(rng.random() < 0.1),
            "event_time": 1_767_225_600_000 + i,
        }
        for i in range(n)
    ]


def encode(records: Sequence[dict[str, Any]]) -> list[bytes]:
    """Avro bodies of the records."""
    parsed = fastavro.parse_schema(SCHEMA)
    out = []
    for rec in records:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, rec)
        out.append(buf.getvalue())
    return out


def best_us_per_record(
    run: Callable[[list[bytes]], object], batches: list[list[bytes]], repeat: int
) -> float:
    """Best of ``repeat`` passes over all batches, in µs per record."""
    n = sum(len(b) for b in batches)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for batch in batches:
            run(batch)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def zigzag(n: int) -> bytes:
    """Avro's zigzag varint of ``n``."""
    u = (n << 1) ^ (n >> 63)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def _with_field(field_type: Any) -> dict[str, Any]:
    writer = copy.deepcopy(SCHEMA)
    writer["fields"].append({"name": "pad", "type": field_type})
    return writer


#: Writer schemas a hostile producer could register: the transaction plus one field.
_NULL_ITEMS = {"type": "array", "items": "null"}
_LIST = {"type": "record", "name": "Node", "fields": [{"name": "next", "type": ["null", "Node"]}]}


def crafted_messages(kib: int = 1) -> list[tuple[str, dict[str, Any], bytes]]:
    """Bodies of about ``kib`` KiB built to be slow to decode: (name, writer schema, body).

    Each is a valid transaction followed by bytes for the extra field, crafted against a
    decoder that walks items one by one: as many zero-byte items as a block allows, blocks of
    one item, long arrays of 1-byte items, arrays of empty arrays, deep recursion.
    """
    base = encode(make_records(1, 3))[0]
    room = kib * 1024 - len(base) - 1
    big = zigzag(65_536)
    return [
        ("null items, 65,536 per block", _with_field(_NULL_ITEMS), base + big * (room // 3)),
        (
            "null items, one per block",
            _with_field(_NULL_ITEMS),
            base + zigzag(1) * room + b"\x00",
        ),
        (
            "booleans, one block",
            _with_field({"type": "array", "items": "boolean"}),
            base + zigzag(room - 3) + b"\x01" * (room - 3) + b"\x00",
        ),
        (
            "empty arrays of nulls",
            _with_field({"type": "array", "items": _NULL_ITEMS}),
            base + zigzag(room - 3) + b"\x00" * (room - 3) + b"\x00",
        ),
        (
            "map of empty keys to nulls",
            _with_field({"type": "map", "values": "null"}),
            base + zigzag(room - 3) + b"\x00" * (room - 3) + b"\x00",
        ),
        ("linked list", _with_field(_LIST), base + b"\x02" * room + b"\x00"),
    ]


def load_baseline(ref: str) -> ModuleType:
    """The single-file columnar decoder of git ref ``ref``, imported under its own name."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{ref}:stream_scorer/decode/columnar.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_columnar.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_columnar", path)
    assert spec is not None and spec.loader is not None  # noqa: S101
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_columnar"] = module
    spec.loader.exec_module(module)
    return module


class _Cap(Exception):
    """A crafted message ran past its time cap."""


def _alarm(signum: int, frame: object) -> None:
    raise _Cap


def slowest_crafted(decoder_class: Any, cap_s: float) -> list[dict[str, Any]]:
    """Seconds per crafted 1 KiB message, decoded alone (model fields), capped at ``cap_s``."""
    rows = []
    signal.signal(signal.SIGALRM, _alarm)
    for name, writer, body in crafted_messages():
        decoder = decoder_class(writer, SCHEMA, MODEL_FIELDS)
        signal.setitimer(signal.ITIMER_REAL, cap_s)
        t0 = time.perf_counter()
        try:
            batch = decoder.decode([body])
            verdict = "decoded" if bool(batch.ok[0]) else "rejected"
        except _Cap:
            verdict = "capped"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        seconds = time.perf_counter() - t0
        rows.append({"message": name, "bytes": len(body), "seconds": seconds, "verdict": verdict})
    return rows


def main() -> None:
    """Run the benchmark, print the table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="records per pass")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best is kept")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--baseline", help="git ref of a single-file columnar decoder to compare")
    parser.add_argument("--cap", type=float, default=10.0, help="baseline's seconds per crafted")
    args = parser.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None
    payloads = encode(make_records(args.n, args.seed))
    parsed = fastavro.parse_schema(SCHEMA)

    def fastavro_batch(batch: list[bytes]) -> object:
        return [fastavro.schemaless_reader(io.BytesIO(p), parsed) for p in batch]

    all_fields = ColumnarDecoder(SCHEMA)
    model_fields = ColumnarDecoder(SCHEMA, fields=MODEL_FIELDS)
    old_fields = baseline.ColumnarDecoder(SCHEMA, fields=MODEL_FIELDS) if baseline else None
    rows = []
    print(
        f"{'batch':>6} {'fastavro':>10} {'col all':>10} {'col 11':>10} "
        f"{'x all':>7} {'x 11':>7} {'base 11':>8} {'new/base':>8}   "
        f"(µs/record, best of {args.repeat})"
    )
    for size in BATCH_SIZES:
        batches = [payloads[i : i + size] for i in range(0, len(payloads) - size + 1, size)]
        base = best_us_per_record(fastavro_batch, batches, max(1, args.repeat // 2))
        col_all = best_us_per_record(all_fields.decode, batches, args.repeat)
        # Current and baseline alternate pass by pass, so load drifts hit both alike.
        col_sub = old_sub = float("inf")
        for _ in range(args.repeat):
            col_sub = min(col_sub, best_us_per_record(model_fields.decode, batches, 1))
            if old_fields is not None:
                old_sub = min(old_sub, best_us_per_record(old_fields.decode, batches, 1))
        row = {
            "batch": size,
            "fastavro_us": base,
            "columnar_all_us": col_all,
            "columnar_model_fields_us": col_sub,
            "speedup_all": base / col_all,
            "speedup_model_fields": base / col_sub,
        }
        if old_fields is not None:
            row |= {"baseline_model_fields_us": old_sub, "ratio_to_baseline": col_sub / old_sub}
        rows.append(row)
        print(
            f"{size:>6} {base:>10.2f} {col_all:>10.2f} {col_sub:>10.2f} "
            f"{base / col_all:>6.1f}x {base / col_sub:>6.1f}x"
            + (f" {old_sub:>8.2f} {col_sub / old_sub:>7.2f}x" if old_fields is not None else "")
        )
    crafted = {"current": slowest_crafted(ColumnarDecoder, cap_s=60.0)}
    if baseline is not None:
        crafted["baseline"] = slowest_crafted(baseline.ColumnarDecoder, cap_s=args.cap)
    print("\nslowest crafted 1 KiB message, decoded (ms):")
    for label, found in crafted.items():
        for row in found:
            print(
                f"  {label:>8}  {row['message']:<30} {row['bytes']:>5} B "
                f"{row['seconds'] * 1e3:>10.2f} ms  {row['verdict']}"
            )
        worst = max(found, key=lambda r: r["seconds"])
        print(f"  {label:>8}  slowest: {worst['message']}, {worst['seconds'] * 1e3:.2f} ms")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "records": args.n,
                "repeat": args.repeat,
                "model_fields": list(MODEL_FIELDS),
                "mean_payload_bytes": float(np.mean([len(p) for p in payloads])),
                "python": platform.python_version(),
                "numpy": np.__version__,
                "fastavro": fastavro.__version__,
                "rows": rows,
                "baseline": args.baseline,
                "crafted_1kib": crafted,
                "slowest_crafted_1kib_s": {
                    label: max(r["seconds"] for r in found) for label, found in crafted.items()
                },
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
