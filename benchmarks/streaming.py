"""Streaming on vs off: two providers (two test servers) at the same latency, doc2query on one and
reason_distill on the other.

Step after step, the teacher idles until doc2query's last row; streaming, both providers work at
once and the first dataset row exists long before doc2query ends. Prints the wall time of each
run (process start to exit), their ratio (target: on <= 0.65x off), each step's wall time, and
how far doc2query had got when the first row reached the last step's journal (target: before
half its rows).

With `--executor ray` both runs are on a local Ray instance each starts (streaming on: each LLM
step's calls go to its own actors, the stream runs in the driver); the table adds the CPU time of
the `rare` process and the children it reaped (Ray's own processes are not all among them).

`--doc-words 1400`: documents of ~1,400 words (the Zipfian generator of `corpus.py`, as
`hardneg_long.py` uses), so a per-row cost that grows with the document shows.

Usage: python benchmarks/streaming.py [--n 256] [--latency 2.0] [--concurrency 32] [--executor local|ray]
    [--doc-words 150]
"""

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from llm_throughput import synthetic_corpus

from rare.testing.openai_server import ServerConfig, serve_process


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def streamed_run(
    corpus: Path, run_dir: Path, writer: str, teacher: str, concurrency: int, streaming: bool, executor: str
) -> dict:
    """One `rare` process; polls its run dir for the first row of the last step."""
    args = [
        "rare",
        "llm=openai",
        f"llm.api_base={writer}",
        "llm.api_key=bench",
        f"+teacher.api_base={teacher}",
        f"data.input={corpus}",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={run_dir.parent / (run_dir.name + '-cache')}",
        f"llm.concurrency={concurrency}",
        # one process, or one actor per LLM step: the same rows in flight per step, on or off
        *(["executor.workers=1"] if executor == "local" else [f"executor={executor}", "executor.actors=1"]),
        f"executor.streaming={str(streaming).lower()}",
    ]
    started = time.time()
    process = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TERM": "dumb"},
    )
    first_row_at, doc2query_then = None, None
    last_journal, last_file = run_dir / "rare_reason_distill.partial.jsonl", run_dir / "rare_reason_distill.jsonl"
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            break
        if first_row_at is None and (lines(last_journal) or last_file.exists()):
            first_row_at = time.time() - started
            done = run_dir / "rare_doc2query.jsonl"
            doc2query_then = lines(done) if done.exists() else lines(run_dir / "rare_doc2query.partial.jsonl")
        time.sleep(0.02)
    wall = time.time() - started
    if process.returncode != 0:
        raise RuntimeError(f"rare exited with {process.returncode}")
    steps = json.loads((run_dir / "manifest.json").read_text())["steps"]
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "wall": wall,
        "cpu": cpu,
        "first_row_s": first_row_at,
        "doc2query_rows_then": doc2query_then,
        "steps": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--doc-words", type=int, default=150, help="mean words per document (long: 1400)")
    args = parser.parse_args()
    config = ServerConfig(latency_s=args.latency)
    with (
        tempfile.TemporaryDirectory() as tmp,
        serve_process(config) as writer,
        serve_process(config) as teacher,
    ):
        tmp = Path(tmp)
        corpus = synthetic_corpus(tmp / "docs.jsonl", args.n, doc_len=args.doc_words)
        results = {}
        for streaming in (False, True):
            writer.reset()
            teacher.reset()
            results[streaming] = streamed_run(
                corpus, tmp / f"run-{streaming}", writer.url, teacher.url, args.concurrency, streaming, args.executor
            )
            assert writer.stats()["total_requests"] == args.n and teacher.stats()["total_requests"] == args.n
        same = (tmp / "run-False" / "dataset.jsonl").read_bytes() == (tmp / "run-True" / "dataset.jsonl").read_bytes()
    print(
        f"executor={args.executor}: {args.n} documents of ~{args.doc_words} words, {args.latency:.1f} s latency "
        f"on each of two servers, concurrency {args.concurrency}"
    )
    print(f"{'':34}{'off':>10}{'on':>10}")
    off, on = results[False], results[True]
    print(f"{'whole run, s (process start to exit)':34}{off['wall']:>10.1f}{on['wall']:>10.1f}")
    print(f"{'  CPU of rare (+ reaped children), s':34}{off['cpu']:>10.1f}{on['cpu']:>10.1f}")
    for a, b in zip(off["steps"], on["steps"]):
        print(f"{'  ' + a['name'] + ' wall, s':34}{a['wall_s']:>10.1f}{b['wall_s']:>10.1f}")
    print(f"{'first dataset row at, s':34}{off['first_row_s']:>10.1f}{on['first_row_s']:>10.1f}")
    print(
        f"{'  doc2query rows done by then':34}{off['doc2query_rows_then']:>10}{on['doc2query_rows_then']:>10}"
        f"  (of {args.n})"
    )
    print(f"on / off: {on['wall'] / off['wall']:.2f}x (target <= 0.65x); dataset bytes identical: {same}")


if __name__ == "__main__":
    main()
