"""LLM-step throughput of rare vs the reference way, measured side by side in one run.

Starts the local OpenAI-compatible server in its own process with a fixed latency, then:
  1. doc2query on N synthetic docs through `rare` (litellm, worker processes), cache off;
  2. the reference baseline: blocking HTTP requests in a thread pool (DataFlow's
     APILLMServing_request way), at 64 threads;
  3. the same rare run again with a warm cache: zero requests may reach the server;
  (after each cold run) the litellm ceiling: two processes of bare `litellm.acompletion`
     (`bare_litellm.py`), the most any client built on litellm gets on this machine;
  4. the whole three-step pipeline on M docs, in pairs: one rare process (process start to exit),
     streamed and then step after step, each followed at once by the reference (threads + gensim
     BM25); the ratio is taken within each pair and the median of the pairs reported; after each
     round, the litellm floor: two bare-litellm processes making as many calls (with doc2query's
     short prompts, so a generous floor): what the ratio would be for a client that did nothing else;
  5. peak RSS of a streamed rare pipeline at two sizes, per process (the run's own and each worker,
     `process_rss.py`): it must not grow with N.

`--doc-words 1400` runs it all on long documents (the same Zipfian generator, `corpus.py`, as
`hardneg_long.py`): the per-step table of the pipeline then shows whether a step's per-row cost
grows with the document (target: each LLM step >= 1.3x the reference's rows/s, at any length).

Usage: python benchmarks/llm_throughput.py [--n 5000] [--pipeline-n 2000] [--latency 0.2] [--repeats 3]
       [--pairs 3] [--doc-words 150]   (--n 0 skips 1-3, --pairs 0 skips 4, --rss-sizes "" skips 5)
Prints a table of rows/s and the ratios the targets are stated in. The cold rare run is
repeated (fresh cache each time) and its median reported with the range: on this 2-core
machine the same run varies by up to ~25% from one minute to the next.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from corpus import synthetic_rows
from process_rss import tree_peaks

from rare.testing.openai_server import ServerConfig, serve_process


def synthetic_corpus(path: Path, n: int, seed: int = 0, doc_len: int = 150) -> Path:
    """n documents of the shared synthetic corpus (`corpus.py`), as rare's input file."""
    with open(path, "w") as handle:
        for row in synthetic_rows(n, seed, doc_len=doc_len):
            handle.write(json.dumps({"id": row["id"], "text": row["text"]}) + "\n")
    return path


def rare_args(
    corpus: Path, run_dir: Path, cache_dir: Path, url: str, *extra: str, workers: int | None = 2, concurrency: int = 128
) -> list[str]:
    """The `rare` command line of a run against the test server at `url`. `workers`: executor.workers;
    None = rare's default."""
    return [
        "rare",
        "llm=openai",
        f"llm.api_base={url}",
        "llm.api_key=bench",
        f"data.input={corpus}",
        f"hydra.run.dir={run_dir}",
        f"cache_dir={cache_dir}",
        f"llm.concurrency={concurrency}",
        *([] if workers is None else [f"executor.workers={workers}"]),
        *extra,
    ]


def rare_process(
    corpus: Path, run_dir: Path, cache_dir: Path, url: str, *extra: str, workers: int | None = 2, concurrency: int = 128
) -> tuple[float, list[dict]]:
    """One `rare` process run against the test server at `url`: its wall seconds (start-up
    included) and its manifest's steps."""
    args = rare_args(corpus, run_dir, cache_dir, url, *extra, workers=workers, concurrency=concurrency)
    started = time.time()
    subprocess.run(
        args,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TERM": "dumb"},
    )
    wall = time.time() - started
    return wall, json.loads((run_dir / "manifest.json").read_text())["steps"]


def rare_run(
    corpus: Path, run_dir: Path, cache_dir: Path, url: str, *extra: str, workers: int | None = 2
) -> tuple[float, float]:
    """One `rare` process run: (process wall seconds incl. start-up, seconds inside its steps)."""
    wall, steps = rare_process(corpus, run_dir, cache_dir, url, *extra, workers=workers)
    return wall, sum(step["wall_s"] for step in steps)


def litellm_ceiling(corpus: Path, url: str, processes: int = 2) -> float:
    """Calls/s of `processes` bare-litellm processes (`bare_litellm.py`) started together: the
    most any client built on litellm can reach on this machine."""
    script = Path(__file__).with_name("bare_litellm.py")
    children = [
        subprocess.Popen(
            [sys.executable, str(script), url, str(corpus)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    try:
        for child in children:
            assert child.stdout.readline().strip() == "ready"
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [json.loads(child.stdout.readline()) for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    calls = processes * sum(1 for _ in open(corpus))
    return calls / max(result["wall_s"] for result in results)


def reference_requests(texts: list[str], url: str, threads: int, prompt: str) -> tuple[float, list[str]]:
    """The reference way: one blocking POST per row in a thread pool; returns (wall seconds, answers)."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=threads, pool_maxsize=threads))

    def ask(text: str) -> str:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt + text}]}
        answer = session.post(
            f"{url}/chat/completions", json=body, headers={"Authorization": "Bearer bench"}, timeout=120
        )
        return answer.json()["choices"][0]["message"]["content"]

    started = time.time()
    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(ask, texts))
    assert len(answers) == len(texts)
    return time.time() - started, answers


def reference_pipeline(corpus: Path, url: str, threads: int) -> dict[str, float]:
    """Reference pipeline: threaded doc2query, gensim BM25 (dense row per query) over the questions,
    threaded reasoning over the positive and its three negatives; the seconds of each step, by rare's step names."""
    from rare.retrieval.gensim_bm25 import GensimRetriever

    rows = [json.loads(line) for line in open(corpus)]
    texts = [row["text"] for row in rows]
    seconds = {}
    seconds["doc2query"], answers = reference_requests(texts, url, threads, "Write a hard_query JSON for: ")
    started = time.time()
    questions = [json.loads(answer)["hard_query"]["question"] for answer in answers]
    retriever = GensimRetriever(show_progress=False)
    retriever.index((row["id"], row["text"]) for row in rows)
    hits = retriever.search(questions, 4)
    by_id = {row["id"]: row["text"] for row in rows}
    prompts = [
        "\n\n".join([question, text, *[by_id[hit.doc_id] for hit in found if hit.doc_id != row["id"]][:3]])
        for question, text, row, found in zip(questions, texts, rows, hits)
    ]
    seconds["bm25_hardneg"] = time.time() - started
    seconds["reason_distill"], _ = reference_requests(prompts, url, threads, "Reason step by step over: ")
    return seconds


def streamed_peaks(size: int) -> dict[str, float]:
    """Peak RSS MiB of each process (parent, worker N) of the streamed pipeline on `size` documents."""
    with tempfile.TemporaryDirectory() as tmp, serve_process(ServerConfig(latency_s=0.0)) as server:
        tmp = Path(tmp)
        corpus = synthetic_corpus(tmp / "docs.jsonl", size, seed=2)
        streamed = rare_args(corpus, tmp / "run", tmp / "cache", server.url, PIPELINE_MODES["streamed"])
        peaks = tree_peaks(streamed, env={**os.environ, "TERM": "dumb"})
    return {role: mib for role, mib in peaks.items() if role == "parent" or role.startswith("worker")}


PIPELINE_MODES = {"streamed": "executor.streaming=true", "step after step": "executor.streaming=false"}


def pipeline_pairs(corpus: Path, tmp: Path, url: str, pairs: int) -> tuple[dict[str, list[tuple]], list[float]]:
    """For each mode, `pairs` times: (rare's whole-process seconds, its manifest's steps, the reference
    pipeline's seconds by step, measured right after); and after each round, the seconds two bare-litellm
    processes take for as many calls as the pipeline makes (one per document and LLM step): the floor
    of any client on litellm here, before start-up, the index and the searches."""
    found: dict[str, list[tuple]] = {mode: [] for mode in PIPELINE_MODES}
    floors = []
    documents = sum(1 for _ in open(corpus))
    for pair in range(pairs):
        for mode, flag in PIPELINE_MODES.items():
            name = f"pipeline-{mode.replace(' ', '-')}-{pair}"
            wall, steps = rare_process(corpus, tmp / name, tmp / f"{name}-cache", url, flag)
            found[mode].append((wall, steps, reference_pipeline(corpus, url, 64)))
        floors.append(2 * documents / litellm_ceiling(corpus, url))
    return found, floors


def pipeline_lines(n: int, found: dict[str, list[tuple]], floors: list[float]) -> list[str]:
    """Each pair's whole-run seconds and ratio, the median ratio per mode, the ratio a client doing nothing
    but litellm's calls would get, and the per-step table of the step-after-step pair with the median ratio."""
    lines = [f"{'pipeline of ' + str(n) + ' docs, pair':34}{'rare s':>9}{'ref s':>9}{'ref/rare':>10}   rare's steps, s"]
    for mode, runs in found.items():
        for wall, steps, reference in runs:
            per_step = " ".join(f"{step['name']} {step['wall_s']:.1f}" for step in steps)
            total = sum(reference.values())
            lines.append(f"{'  ' + mode:34}{wall:>9.1f}{total:>9.1f}{total / wall:>10.2f}   {per_step}")
        ratios = [sum(reference.values()) / wall for wall, _, reference in runs]
        lines.append(
            f"{'  ' + mode + ', median of pairs':34}{'':>18}{statistics.median(ratios):>10.2f}   (target >= 2)"
        )
    reference = statistics.median(sum(run[2].values()) for runs in found.values() for run in runs)
    lines.append(
        f"{'  litellm floor: 2 bare processes':34}{statistics.median(floors):>9.1f}{reference:>9.1f}"
        f"{reference / statistics.median(floors):>10.2f}   (the most any litellm client gets here)"
    )
    # a step's rows/s means something only while it runs alone: the per-step table is step after step's
    alone = sorted(found["step after step"], key=lambda run: sum(run[2].values()) / run[0])
    _, steps, reference = alone[len(alone) // 2]
    return [*lines, *step_table(n, steps, reference)]


def step_table(n: int, rare_steps: list[dict], reference: dict[str, float]) -> list[str]:
    """Rows/s of each pipeline step, rare's (its manifest's wall_s: first row to last) beside the reference's."""
    lines = [f"{'pipeline step, rows/s':28}{'rare':>10}{'reference':>11}{'ratio':>8}  target"]
    for step in rare_steps:
        ours, theirs = n / step["wall_s"], n / reference[step["name"]]
        target = ">= 1.3" if step["name"] != "bm25_hardneg" else ""
        lines.append(f"{'  ' + step['name']:28}{ours:>10.1f}{theirs:>11.1f}{ours / theirs:>8.2f}  {target}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--pipeline-n", type=int, default=2000)
    parser.add_argument("--rss-sizes", default="1000,20000")
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3, help="pipeline pairs (rare, then the reference) per mode")
    parser.add_argument("--doc-words", type=int, default=150, help="mean words per document (long: 1400)")
    args = parser.parse_args()
    only_doc2query = ["steps.bm25_hardneg=null", "steps.reason_distill=null"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp, serve_process(ServerConfig(latency_s=args.latency)) as server:
        tmp = Path(tmp)
        corpus = synthetic_corpus(tmp / "docs.jsonl", args.n, doc_len=args.doc_words)

        texts = [json.loads(line)["text"] for line in open(corpus)]
        step_rates, process_rates, ceilings, references = [], [], [], []
        for repeat in range(args.repeats if args.n else 0):  # the last one's cache is the warm cache below
            server.reset()
            wall, in_steps = rare_run(
                corpus, tmp / f"cold{repeat}", tmp / f"cache{repeat}", server.url, *only_doc2query
            )
            step_rates.append(args.n / in_steps)
            process_rates.append(args.n / wall)
            assert server.stats()["total_requests"] == args.n
            # the others right after, in the same minute: this machine's speed drifts from one minute to the next
            ceilings.append(litellm_ceiling(corpus, server.url))
            references.append(args.n / reference_requests(texts, server.url, 64, "Question for: ")[0])
        if args.n:
            results["rare doc2query rows/s (step, median)"] = statistics.median(step_rates)
            results["  min / max over repeats"] = f"{min(step_rates):.1f} / {max(step_rates):.1f}"
            results["rare doc2query rows/s (whole process incl. start-up, median)"] = statistics.median(process_rates)
            results["bare litellm, 2 processes, calls/s (median): the ceiling"] = statistics.median(ceilings)
            results["  rare step / ceiling, median of pairs"] = statistics.median(
                r / c for r, c in zip(step_rates, ceilings)
            )
            results["reference 64 threads rows/s (median)"] = statistics.median(references)
            results["  rare step / reference@64, median of pairs (target >= 1.3)"] = statistics.median(
                r / ref for r, ref in zip(step_rates, references)
            )
            results["  ceiling / reference@64, median of pairs"] = statistics.median(
                c / ref for c, ref in zip(ceilings, references)
            )

            results["reference 10 threads rows/s"] = (
                args.n / reference_requests(texts, server.url, 10, "Question for: ")[0]
            )

            server.reset()
            wall, in_steps = rare_run(
                corpus, tmp / "warm", tmp / f"cache{args.repeats - 1}", server.url, *only_doc2query
            )
            results["rare cached rerun rows/s (step)"] = args.n / in_steps
            results["rare cached rerun rows/s (whole process)"] = args.n / wall
            results["requests reaching the server on the cached rerun"] = server.stats()["total_requests"]

        small = synthetic_corpus(tmp / "pipeline.jsonl", args.pipeline_n, seed=1, doc_len=args.doc_words)
        pipeline, floors = pipeline_pairs(small, tmp, server.url, args.pairs)
        results["load average during the run"] = os.getloadavg()[0]

    sizes = [int(s) for s in args.rss_sizes.split(",") if s]
    peaks = {size: streamed_peaks(size) for size in sizes}
    for size, by_role in peaks.items():
        for role, mib in by_role.items():
            results[f"peak RSS MiB, streamed pipeline, N={size}, {role}"] = mib
    if len(sizes) > 1:
        for role in peaks[sizes[0]]:
            ratio = peaks[sizes[-1]].get(role, 0.0) / peaks[sizes[0]][role]
            results[f"  peak RSS N={sizes[-1]} / N={sizes[0]}, {role} (target ~1.0)"] = ratio

    for name, value in results.items():
        shown = (
            f"{value:>10.2f}"
            if isinstance(value, float) and abs(value) < 10
            else f"{value:>10.1f}"
            if isinstance(value, float | int)
            else f"{value:>10s}"
        )
        print(f"{name:60s} {shown}")
    print(f"documents of ~{args.doc_words} words")
    if args.pairs:
        print("\n".join(pipeline_lines(args.pipeline_n, pipeline, floors)))


if __name__ == "__main__":
    main()
