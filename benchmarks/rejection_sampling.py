"""The qa recipe's rejection sampling against its expected numbers, through the `rare` command.

The local test server (its own process, 127.0.0.1 only) answers each labelled question right with
probability p per sampled path (each path is its own request and seed). With up to n paths, a
question is kept with probability 1 - (1 - p)^n, after (1 - (1 - p)^n) / p teacher calls on
average. For each (p, n) this runs `rare recipe=qa` on Q synthetic questions over a synthetic
knowledge corpus (response cache off: every path is a request), counts the requests the server
received, then resumes the finished run dir and counts again (it must be 0). Each run seed draws
other paths, so a few seeds show the spread of one 200-question draw (standard error of calls per
question: sqrt((1 - p) / p^2 / Q), about 0.10 at p = 0.5 and 0.18 at p = 0.25 for Q = 200).

Usage: python benchmarks/rejection_sampling.py [--questions 200] [--rates 0.25,0.5] [--samples 8] [--seeds 0,1,2]
Prints one table row per (p, seed), and their mean: kept share and calls per question, measured
and expected.
"""

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from corpus import synthetic_rows

from rare.testing.openai_server import ServerConfig, serve_process


def write_inputs(folder: Path, questions: int) -> tuple[Path, Path, dict[str, str]]:
    """(questions.jsonl, knowledge.jsonl, the server's answer key): question i is about document i."""
    rows = list(synthetic_rows(questions * 5, seed=19))
    knowledge, data = folder / "knowledge.jsonl", folder / "questions.jsonl"
    knowledge.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows), encoding="utf-8")
    key, lines = {}, []
    for i, row in enumerate(rows[:questions]):
        question = f"Item {i}: " + " ".join(row["question"].split()[:12]) + "?"
        options = [" ".join(rows[(i + 7 * j) % len(rows)]["text"].split()[:4]) for j in range(4)]
        gold = "ABCD"[i % 4]
        options[i % 4], options[0] = options[0], options[i % 4]
        lines.append(json.dumps({"id": f"q{i:04d}", "question": question, "options": options, "answer": gold}))
        key[question] = gold
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return data, knowledge, key


def rare(*args: str) -> float:
    started = time.time()
    subprocess.run(
        ["rare", *args],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TERM": "dumb"},
    )
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--rates", default="0.25,0.5", help="comma-separated p: chance that one path is right")
    parser.add_argument("--samples", type=int, default=8, help="paths per question at most")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated run seeds (each draws other paths)")
    args = parser.parse_args()
    header = [
        "p",
        "seed",
        "paths",
        "questions",
        "kept %",
        "expected %",
        "calls/q",
        "expected",
        "failed",
        "resume calls",
        "wall s",
    ]
    table = []
    with tempfile.TemporaryDirectory() as tmp, serve_process(ServerConfig()) as server:
        folder = Path(tmp)
        data, knowledge, key = write_inputs(folder, args.questions)
        for p, seed in ((float(rate), int(seed)) for rate in args.rates.split(",") for seed in args.seeds.split(",")):
            server.configure(answer_key=key, correct_rate=p)
            server.reset()
            run_dir = folder / f"run-{p}-{seed}"
            wall = rare(
                "recipe=qa",
                f"seed={seed}",
                f"data.input={data}",
                f"retriever.corpus={knowledge}",
                "retriever=bm25s",
                "llm=openai",
                f"llm.api_base={server.url}",
                "llm.api_key=bench",
                "llm.cache=false",
                "llm.concurrency=64",
                f"steps.answer_check.samples={args.samples}",
                f"hydra.run.dir={run_dir}",
                f"cache_dir={folder / 'cache'}",
            )
            calls = server.stats()["total_requests"]
            rows = [json.loads(line) for line in (run_dir / "dataset.jsonl").read_text().splitlines() if line.strip()]
            manifest = json.loads((run_dir / "manifest.json").read_text())
            server.reset()
            rare(f"resume={run_dir}", "llm.api_key=bench")
            resumed = server.stats()["total_requests"]
            miss = (1 - p) ** args.samples
            table.append(
                [
                    p,
                    seed,
                    args.samples,
                    len(rows),
                    100 * sum(r["correct"] for r in rows) / len(rows),
                    100 * (1 - miss),
                    calls / len(rows),
                    (1 - miss) / p,
                    manifest["failures"],
                    resumed,
                    wall,
                ]
            )
    for p in sorted({row[0] for row in table}):
        rows = [row for row in table if row[0] == p]
        mean = [sum(row[i] for row in rows) / len(rows) for i in range(len(header))]
        table.append([p, "mean", args.samples, *mean[3:]])
    print(" | ".join(header))
    for row in table:
        print(
            f"{row[0]:.2f} | {row[1]} | {row[2]} | {row[3]:.0f} | {row[4]:.1f} | {row[5]:.1f} | {row[6]:.2f} | {row[7]:.2f} | "
            f"{row[8]:.0f} | {row[9]:.0f} | {row[10]:.1f}"
        )


if __name__ == "__main__":
    main()
