"""Row-step throughput of executor=local vs executor=ray, with 1 and 2 workers, in one run.

Starts the local OpenAI-compatible server with a fixed latency and runs doc2query on N
synthetic docs (cache off, so every row is a real request) four ways: local with
executor.workers=1 and 2, ray with executor.actors=1 and 2 (a local Ray instance this process
starts on 127.0.0.1). Prints rows/s inside the step and for the whole process, and the ratios.

Usage: python benchmarks/ray_scaling.py [--n 3000] [--latency 0.2]
"""

import argparse
import os
import tempfile
from pathlib import Path

from llm_throughput import rare_run, synthetic_corpus

from rare.testing.openai_server import ServerConfig, serve_process

ONLY_DOC2QUERY = ("steps.bm25_hardneg=null", "steps.reason_distill=null", "llm.cache=false")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    setups = {
        "local, 1 worker": ((), 1),
        "local, 2 workers": ((), 2),
        "ray, 1 actor": (("executor=ray", "executor.actors=1"), None),
        "ray, 2 actors": (("executor=ray", "executor.actors=2"), None),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp, serve_process(ServerConfig(latency_s=args.latency)) as server:
        tmp = Path(tmp)
        corpus = synthetic_corpus(tmp / "docs.jsonl", args.n)
        for number, (name, (extra, workers)) in enumerate(setups.items()):
            server.reset()
            wall, in_steps = rare_run(
                corpus, tmp / f"run{number}", tmp / "cache", server.url, *ONLY_DOC2QUERY, *extra, workers=workers
            )
            assert server.stats()["total_requests"] == args.n, f"{name}: {server.stats()['total_requests']} requests"
            results[name] = (args.n / in_steps, args.n / wall)
    print(f"N={args.n}, server latency {args.latency * 1000:.0f} ms, load average {os.getloadavg()[0]:.1f}")
    print(f"{'setup':20s} {'rows/s in step':>15s} {'rows/s process':>15s}")
    for name, (step, process) in results.items():
        print(f"{name:20s} {step:15.1f} {process:15.1f}")
    for kind, one, two in (("local", "local, 1 worker", "local, 2 workers"), ("ray", "ray, 1 actor", "ray, 2 actors")):
        print(f"{kind} 2 vs 1 (step): {results[two][0] / results[one][0]:.2f}x")
    print(f"ray 2 actors / local 2 workers (step): {results['ray, 2 actors'][0] / results['local, 2 workers'][0]:.2f}x")


if __name__ == "__main__":
    main()
