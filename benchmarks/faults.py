"""Faults at the provider cost retries, not rows: the whole pipeline over 1,000 rows at 30% and 50% faults.

The local test server (its own process) injects every fault a fresh attempt survives, each kind
equally often: 429 (with and without Retry-After), 500, 502, 503, timeouts, dropped connections,
slow trickled answers, 200s that are not a completion, empty answers, malformed JSON, truncated
JSON and answers cut short with `finish_reason=length`. rare runs doc2query -> bm25_hardneg ->
reason_distill (response cache off) with fast backoff. The same checks as tests/test_faults.py
(which runs 300 rows) are printed: rows done, failed, lost and duplicated, retries per step.

Per fault kind, from the server's own request log: injected, retried (the same prompt asked
again afterwards), kept (the last answer its prompt got: reason_distill, a plain-text step,
takes "JSON" faults as text; a row given up on would also show here, and in failed.jsonl).

Usage: python benchmarks/faults.py [--rows 1000] [--shares 0.3,0.5]
"""

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

from in_process import run_rare

from rare.testing.faults import RETRYABLE_FAULTS, fault_outcomes
from rare.testing.openai_server import ServerConfig, serve_process

RETRIES = (
    "llm.max_retries=6",
    "llm.backoff_s=0.01",
    "llm.backoff_max_s=0.05",
    "llm.timeout_s=1.0",
    "llm.concurrency=64",
)


def read_jsonl(path: Path) -> list[dict]:
    return (
        [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
        if path.exists()
        else []
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--shares", default="0.3,0.5", help="comma-separated shares of faulty requests")
    args = parser.parse_args()
    words = "risk dose renal clearance contract breach liability bond yield duration inventory cost".split()
    with tempfile.TemporaryDirectory() as tmp, serve_process(ServerConfig()) as server:
        folder = Path(tmp)
        corpus = folder / "corpus.jsonl"
        corpus.write_text(
            "".join(
                json.dumps(
                    {"id": f"r{i}", "text": " ".join(words[(i + j) % len(words)] for j in range(8)) + f" item{i}"}
                )
                + "\n"
                for i in range(args.rows)
            ),
            encoding="utf-8",
        )
        for share in (float(s) for s in args.shares.split(",")):
            rates = {fault: share / len(RETRYABLE_FAULTS) for fault in RETRYABLE_FAULTS}
            server.reset()
            server.configure(faults=rates, retry_after_s=0.01, timeout_sleep_s=2.0, trickle_s=0.2, seed=7)
            run_dir = folder / f"share{share}"
            manifest = run_rare(run_dir, server, f"data.input={corpus}", *RETRIES)
            dataset, failed = (
                read_jsonl(run_dir / "run" / "dataset.jsonl"),
                read_jsonl(run_dir / "run" / "failed.jsonl"),
            )
            ids = Counter(row["id"] for row in dataset)
            outcomes = fault_outcomes(server.stats()["recent"])
            print(
                f"\n{share:.0%} faults, {args.rows} rows: {len(dataset)} done, {len(failed)} failed "
                f"({len(failed) / args.rows:.2%}), {args.rows - len(ids) - len(failed)} lost, "
                f"{sum(c - 1 for c in ids.values())} duplicated, {manifest['wall_s']:.1f} s; failed kinds "
                f"{dict(Counter(f['kind'] for f in failed))}"
            )
            for step in manifest["steps"]:
                usage = step["usage"] or {}
                if "retries" in usage:
                    print(
                        f"  {step['name']}: {usage['calls']} calls, {usage['retries']} retries {usage['retried']}, "
                        f"{usage['failed_calls']} billed unusable answers (${usage['failed_cost_usd']:.4f} of ${usage['cost_usd']:.4f})"
                    )
            print("\n| fault | injected | retried | kept |\n|---|---|---|---|")
            for fault in sorted(outcomes):
                row = outcomes[fault]
                print(f"| {fault} | {row['injected']} | {row['retried']} | {row['kept']} |")


if __name__ == "__main__":
    main()
