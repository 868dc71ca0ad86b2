"""How long a user waits for a trial run: whole `rare` processes on documents of realistic length.

Starts the local OpenAI-compatible server in its own process (answering at once unless
--latency), writes documents of ~1,400 words, and times, each as one whole process:
  1. a trial: 10 documents, fresh cache (index built, every request sent);
  2. the same trial again: every answer and the index come from the cache;
  3. a large cached rerun: N documents (default 2,000), run once to fill the cache, then timed.
For each it prints the process wall time, the time inside the steps (the manifest's wall_s),
the rest (start-up, checks, writing the dataset) and the requests that reached the server.
Targets (issue #15): trial <= 6 s, cached N=2,000 rerun <= 8 s.

Usage: python benchmarks/trial_run.py [--n 2000] [--words 1400] [--repeats 3] [--latency 0]
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from llm_throughput import rare_process, synthetic_corpus

from rare.testing.openai_server import ServerConfig, serve_process


def timed_run(corpus: Path, run_dir: Path, cache_dir: Path, url: str) -> dict:
    """One whole `rare` process: wall seconds, seconds in its steps, and per-step seconds."""
    wall, steps = rare_process(corpus, run_dir, cache_dir, url, workers=None, concurrency=64)
    return {"wall": wall, "steps": sum(s["wall_s"] for s in steps), "per_step": {s["name"]: s["wall_s"] for s in steps}}


def measure(label: str, corpus: Path, work: Path, cache: Path, server, repeats: int, warm: bool) -> dict:
    """Median of `repeats` runs; warm=True fills the cache once first, warm=False uses a fresh cache each run."""
    slug = "".join(c if c.isalnum() else "-" for c in label)
    if warm:
        timed_run(corpus, work / f"{slug}-fill", cache, server.url)
    runs, sent = [], []
    for i in range(repeats):
        before = server.stats()["total_requests"]
        runs.append(timed_run(corpus, work / f"{slug}-{i}", cache if warm else work / f"{slug}-cache-{i}", server.url))
        sent.append(server.stats()["total_requests"] - before)
    walls = [r["wall"] for r in runs]
    median = runs[walls.index(statistics.median_low(walls))]
    return {"label": label, "walls": walls, "run": median, "requests": max(sent)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="documents in the large cached rerun (0 = skip it)")
    parser.add_argument("--words", type=int, default=1400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serve_process(ServerConfig(latency_s=args.latency)) as server:
        work = Path(tmp)
        trial = synthetic_corpus(work / "trial.jsonl", 10, seed=1, doc_len=args.words)
        results = [
            measure("trial, cold", trial, work, work / "unused", server, args.repeats, warm=False),
            measure("trial, cached", trial, work, work / "trial-cache", server, args.repeats, warm=True),
        ]
        if args.n:
            large = synthetic_corpus(work / "large.jsonl", args.n, seed=1, doc_len=args.words)
            results.append(
                measure(f"{args.n} docs, cached", large, work, work / "large-cache", server, args.repeats, warm=True)
            )
    print(
        f"\n{'run':<20} {'wall s (median)':>16} {'runs':>22} {'in steps':>9} {'outside':>8} {'requests':>9}  per step"
    )
    for result in results:
        run = result["run"]
        runs = "/".join(f"{w:.1f}" for w in result["walls"])
        per_step = ", ".join(f"{name} {s:.2f}" for name, s in run["per_step"].items())
        print(
            f"{result['label']:<20} {run['wall']:>16.2f} {runs:>22} {run['steps']:>9.2f} {run['wall'] - run['steps']:>8.2f} {result['requests']:>9}  {per_step}"
        )


if __name__ == "__main__":
    main()
