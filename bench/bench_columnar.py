"""Benchmark: fastavro per-record decoding vs the columnar decoder on transaction.avsc.

Run: ``.venv/bin/python bench/bench_columnar.py [--n 20000] [--repeat 5]``. Prints µs/record per
batch size and writes ``bench/results/columnar.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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


def main() -> None:
    """Run the benchmark, print the table and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="records per pass")
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best is kept")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    payloads = encode(make_records(args.n, args.seed))
    parsed = fastavro.parse_schema(SCHEMA)

    def fastavro_batch(batch: list[bytes]) -> object:
        return [fastavro.schemaless_reader(io.BytesIO(p), parsed) for p in batch]

    all_fields = ColumnarDecoder(SCHEMA)
    model_fields = ColumnarDecoder(SCHEMA, fields=MODEL_FIELDS)
    rows = []
    print(
        f"{'batch':>6} {'fastavro':>10} {'col all':>10} {'col 11':>10} "
        f"{'x all':>7} {'x 11':>7}   (µs/record, best of {args.repeat})"
    )
    for size in BATCH_SIZES:
        batches = [payloads[i : i + size] for i in range(0, len(payloads) - size + 1, size)]
        base = best_us_per_record(fastavro_batch, batches, max(1, args.repeat // 2))
        col_all = best_us_per_record(all_fields.decode, batches, args.repeat)
        col_sub = best_us_per_record(model_fields.decode, batches, args.repeat)
        rows.append(
            {
                "batch": size,
                "fastavro_us": base,
                "columnar_all_us": col_all,
                "columnar_model_fields_us": col_sub,
                "speedup_all": base / col_all,
                "speedup_model_fields": base / col_sub,
            }
        )
        print(
            f"{size:>6} {base:>10.2f} {col_all:>10.2f} {col_sub:>10.2f} "
            f"{base / col_all:>6.1f}x {base / col_sub:>6.1f}x"
        )
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
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
