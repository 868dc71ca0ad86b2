"""Generating at a provider's rate limit: rare's doc2query time against the ideal the limits allow.

The local test server (its own process) enforces a requests-per-minute or a tokens-per-minute
limit, as hosted providers do: 429 with Retry-After beyond it, `x-ratelimit-*` headers on every
answer; its token limit counts the tokens really used (prompt on arrival, completion when
answered). Answers take `--latency` plus up to `--jitter` seconds (a long tail). rare runs
doc2query over `--rows` synthetic documents (response cache off: every row is a request) with
the same limit configured (`llm.rpm` / `llm.tpm`, `llm.tpm_counts=used`).

The ideal is the work divided by the limit: rows / rpm, or the tokens the server counted /
tpm. Generating time is the doc2query step's wall time in the manifest (start-up excluded).
Target: <= 1.05x the ideal, with few 429s.

Usage: python benchmarks/rate_limits.py [--rows 2000] [--rpm 6000] [--tpm 0 (= sized for ~20 s)]
    [--latency 0.1] [--jitter 0.4] [--concurrency 64] [--workers 0 (= executor.workers' default)]
Run it from the project root (it imports `rare` from there).
"""

import argparse
import json
import tempfile
from pathlib import Path

from corpus import synthetic_rows
from in_process import run_rare

from rare.testing.openai_server import ServerConfig, serve_process


def write_documents(path: Path, rows: int) -> Path:
    path.write_text(
        "".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in synthetic_rows(rows, seed=3)),
        encoding="utf-8",
    )
    return path


def generate(server, corpus: Path, folder: Path, concurrency: int, workers: int, *limits: str) -> dict:
    """One doc2query run against `server`; returns the manifest."""
    overrides = [
        f"llm.concurrency={concurrency}",
        "llm.tpm_counts=used",
        f"data.input={corpus}",
        "steps.bm25_hardneg=null",
        "steps.reason_distill=null",
        *limits,
        *([f"executor.workers={workers}"] if workers else []),
    ]
    return run_rare(folder, server, *overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--rpm", type=float, default=6000)
    parser.add_argument(
        "--tpm", type=float, default=0, help="0 = sized so the ideal is about as long as the rpm case's"
    )
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--jitter", type=float, default=0.4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--workers", type=int, default=0, help="executor.workers; 0 = the default (one process per core)"
    )
    args = parser.parse_args()
    config = ServerConfig(latency_s=args.latency, jitter_s=args.jitter, seed=5)
    header = ["limit", "rows", "work", "ideal s", "generating s", "ratio", "429s", "held by headers"]
    lines = []
    with tempfile.TemporaryDirectory() as tmp, serve_process(config) as server:
        folder = Path(tmp)
        corpus = write_documents(folder / "documents.jsonl", args.rows)
        tpm = args.tpm
        if not tpm:  # a small unlimited run measures the tokens per row
            small = write_documents(folder / "small.jsonl", 100)
            generate(server, small, folder / "probe", args.concurrency, args.workers)
            per_row = server.stats()["tokens"] / 100
            tpm = round(per_row * args.rows / (args.rows / (args.rpm / 60)) * 60, -3)
        for name, limit, overrides in (
            (f"rpm {args.rpm:g}", {"rpm": args.rpm, "tpm": None}, [f"llm.rpm={args.rpm:g}"]),
            (f"tpm {tpm:g}", {"rpm": None, "tpm": tpm}, [f"llm.tpm={tpm:g}"]),
        ):
            server.configure(**limit)
            server.reset()
            manifest = generate(
                server, corpus, folder / name.replace(" ", "_"), args.concurrency, args.workers, *overrides
            )
            stats = server.stats()
            step = manifest["steps"][0]
            if limit["rpm"]:
                work, ideal = f"{args.rows} requests", args.rows / (limit["rpm"] / 60)
            else:
                work, ideal = f"{stats['tokens']:,} tokens", stats["tokens"] / (limit["tpm"] / 60)
            limiter = step["usage"].get("limiter", {})
            lines.append(
                [
                    name,
                    str(step["rows_out"]),
                    work,
                    f"{ideal:.1f}",
                    f"{step['wall_s']:.1f}",
                    f"{step['wall_s'] / ideal:.3f}",
                    str(stats["rate_limited"]),
                    str(limiter.get("held", "-")),
                ]
            )
            print(" | ".join(lines[-1]), flush=True)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in lines:
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
