"""Hard-negative mining speed and memory: the three BM25 back ends through BM25HardNeg.

For each corpus size N (synthetic, deterministic by seed) and each back end, a fresh
subprocess builds the index (`prepare`, timed), mines one question per document
(`process_batch` over batches of 1000, timed) and reports its peak RSS
(`resource.getrusage`). The pyserini child also times, on the same index and the first
20k questions, pyserini's own `LuceneSearcher.batch_search` (the "raw" baseline, same k
and threads) and rare's Lucene search path alone (`search_rows`: no exclusions, no
texts), after warming the JVM up on 5000 questions.

Synthetic data: `corpus.py` (Zipfian vocabulary with stopwords, ~150-token documents,
one 30-token question per document drawn from it).

A run whose mining would take longer than --budget seconds is stopped once it has run
for --sample seconds and its total time is extrapolated from the measured rate (marked
"~" in the table). Gensim's cost per query grows linearly with N, so sizes where even its
index is not built (--gensim-max-n) are extrapolated from its largest measured size.

Usage:
  python benchmarks/hardneg.py                        # N = 10k, 50k, 100k; all back ends
  python benchmarks/hardneg.py --sizes 1m --backends pyserini --budget 0   # the full 1M run
  python benchmarks/hardneg.py --sizes 1m --backends pyserini --max-query-terms 12   # rarest 12 terms per question
Prints a table of N x back end and the ratios the targets are stated in.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from corpus import synthetic_rows

BACKENDS = ("pyserini", "gensim", "bm25s")
BATCH = 1000
WARM_UP = 5000  # questions searched (twice) before anything is timed, pyserini only (JVM JIT)
BASELINE_QUESTIONS = 20_000  # the baselines (and the operator rate compared with them) use the first ones


def corpus_file(workdir: Path, n: int, seed: int) -> Path:
    path = workdir / f"corpus-{n}-{seed}.jsonl"
    if not path.exists():
        started = time.time()
        partial = path.with_suffix(".partial")
        with open(partial, "w", encoding="utf-8") as fh:
            for row in synthetic_rows(n, seed):
                fh.write(json.dumps(row) + "\n")
        partial.rename(path)
        log(f"generated {path.name} in {time.time() - started:.0f} s")
    return path


def read_rows(path: Path):
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


# -- one (back end, N) measurement, in its own process --------------------------------------


def child(args) -> dict:
    from rare.operators.bm25_hardneg import BM25HardNeg

    path, n = Path(args.corpus), args.n
    cache = tempfile.mkdtemp(prefix=f"hardneg-{args.backend}-", dir=args.workdir)
    retriever = make_retriever(args.backend, cache, args.max_query_terms)
    operator = BM25HardNeg(retriever)
    out = {"backend": args.backend, "n": n, "load_start": os.getloadavg()[0]}

    started = time.time()
    operator.prepare(read_rows(path))
    out["index_s"] = time.time() - started
    out["index_rss_mb"] = peak_rss_mb()
    log(f"{args.backend} N={n}: index {out['index_s']:.1f} s, rss {out['index_rss_mb']:.0f} MB")

    depth = operator.num_negatives + operator.skip_top + operator.extra_candidates + 1
    if args.backend == "pyserini":  # let the JVM compile both search paths first (it takes a few thousand queries)
        warm = [row["question"] for row in islice(read_rows(path), WARM_UP)]
        for _ in range(2):
            retriever.search_rows(warm, depth, progress=False)
        raw_pyserini_qps(retriever, warm, depth)
    questions = short = 0
    mining = 0.0
    compared = None  # (questions, seconds) of the operator on the questions the baselines also run
    last_report = time.time()
    rows = read_rows(path)
    while batch := list(islice(rows, BATCH)):
        started = time.time()
        results = operator.process_batch(batch)
        mining += time.time() - started
        questions += len(batch)
        short += sum(1 for r in results if isinstance(r, dict) and r["hard_negative_info"]["short"])
        if questions <= BASELINE_QUESTIONS:
            compared = (questions, mining)
        if args.budget and mining / questions * n > args.budget and mining >= args.sample:
            break
        if time.time() - last_report > 60:
            last_report = time.time()
            log(
                f"{args.backend} N={n}: {questions}/{n} questions, {questions / mining:.1f} q/s, "
                f"rss {peak_rss_mb():.0f} MB, load {os.getloadavg()[0]:.1f}"
            )
    out.update(
        questions=questions,
        mining_s=mining,
        qps=questions / mining,
        mining_total_s=mining / questions * n,
        extrapolated=questions < n,
        short_rows=short,
        rss_mb=peak_rss_mb(),
    )
    if args.backend == "pyserini":  # the baselines, on the same questions and index
        measured = [row["question"] for row in islice(read_rows(path), compared[0])]
        out["compared_questions"] = compared[0]
        out["operator_qps_compared"] = compared[0] / compared[1]
        out["raw_pyserini_qps"] = raw_pyserini_qps(retriever, measured, depth)
        started = time.time()
        for start in range(0, len(measured), BATCH):
            retriever.search_rows(measured[start : start + BATCH], depth, progress=False)
        out["rare_lucene_qps"] = len(measured) / (time.time() - started)
    out["load_end"] = os.getloadavg()[0]
    log(f"{args.backend} N={n}: {json.dumps(out)}")
    shutil.rmtree(cache, ignore_errors=True)
    return out


def make_retriever(backend: str, cache: str, max_query_terms: int | None = None):
    if backend == "pyserini":
        from rare.retrieval.lucene.retriever import PyseriniRetriever

        return PyseriniRetriever(cache_dir=cache, show_progress=False, max_query_terms=max_query_terms)
    if backend == "gensim":
        from rare.retrieval.gensim_bm25 import GensimRetriever

        return GensimRetriever(cache_dir=cache, show_progress=False)
    from rare.retrieval.bm25s_bm25 import BM25sRetriever

    return BM25sRetriever(cache_dir=cache, show_progress=False)


def raw_pyserini_qps(retriever, questions: list[str], depth: int) -> float:
    """pyserini's own LuceneSearcher.batch_search (sorted ranking, hit documents loaded), same threads."""
    from pyserini.search.lucene import LuceneSearcher

    searcher = LuceneSearcher(str(retriever.index_path / "lucene"))
    searcher.set_bm25(retriever.k1, retriever.b)
    qids = [str(i) for i in range(BATCH)]
    searcher.batch_search(
        questions[:BATCH], qids[: len(questions[:BATCH])], k=depth, threads=retriever.threads
    )  # warm up
    started = time.time()
    for start in range(0, len(questions), BATCH):
        chunk = questions[start : start + BATCH]
        searcher.batch_search(chunk, qids[: len(chunk)], k=depth, threads=retriever.threads)
    return len(questions) / (time.time() - started)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the parent: run every child, print the table -------------------------------------------


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def run_child(args, backend: str, n: int, corpus: Path) -> dict | None:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--backend",
        backend,
        "--n",
        str(n),
        "--corpus",
        str(corpus),
        "--workdir",
        str(args.workdir),
        "--budget",
        str(args.budget),
        "--sample",
        str(args.sample),
        *(["--max-query-terms", str(args.max_query_terms)] if args.max_query_terms else []),
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        log(f"{backend} N={n} failed with exit code {done.returncode}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def extrapolate_gensim(measured: dict, n: int) -> dict:
    """Gensim at size n from its largest measured size: cost per query linear in N."""
    scale = n / measured["n"]
    return {
        "backend": "gensim",
        "n": n,
        "index_s": measured["index_s"] * scale,
        "qps": measured["qps"] / scale,
        "mining_total_s": measured["mining_total_s"] * scale * scale,
        "rss_mb": None,
        "extrapolated": True,
        "not_run": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10k,50k,100k", help="comma-separated corpus sizes, e.g. 10k,50k,100k,1m")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget", type=float, default=600, help="stop mining that would take longer (s); 0 = never")
    parser.add_argument("--sample", type=float, default=60, help="seconds of mining measured before stopping")
    parser.add_argument("--gensim-max-n", type=int, default=100_000, help="larger sizes: gensim extrapolated")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rare-hardneg-bench"))
    parser.add_argument("--max-query-terms", type=int, help="pyserini: search with each question's N rarest terms")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    args.workdir = Path(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    log(f"sizes {sizes}, back ends {backends}, load {os.getloadavg()}, {os.cpu_count()} cores")
    results: dict[tuple[str, int], dict] = {}
    for n in sizes:
        corpus = corpus_file(args.workdir, n, args.seed)
        for backend in backends:
            if backend == "gensim" and n > args.gensim_max_n:
                measured = [r for (b, m), r in results.items() if b == "gensim" and not r.get("not_run")]
                if measured:
                    results[(backend, n)] = extrapolate_gensim(max(measured, key=lambda r: r["n"]), n)
                continue
            result = run_child(args, backend, n, corpus)
            if result:
                results[(backend, n)] = result
    print_table(results, sizes, backends)


def print_table(results: dict, sizes: list[int], backends: list[str]) -> None:
    def fmt_time(r, key):
        value = r.get(key)
        if value is None:
            return "-"
        text = f"{value:.0f} s" if value < 3600 else f"{value / 3600:.1f} h"
        return ("~" if r.get("extrapolated") and key != "index_s" else "") + text

    print()
    print(
        "| N | back end | index | mining q/s | mining all N questions | index+mining | peak RSS "
        "| raw pyserini batch_search q/s | rare Lucene search q/s | load |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for backend in backends:
            r = results.get((backend, n))
            if not r:
                continue
            note = " (not run: extrapolated)" if r.get("not_run") else ""
            total = r["index_s"] + r["mining_total_s"]
            rss = f"{r['rss_mb'] / 1024:.2f} GB" if r.get("rss_mb") else "-"
            raw = f"{r['raw_pyserini_qps']:.0f}" if "raw_pyserini_qps" in r else "-"
            lucene = f"{r['rare_lucene_qps']:.0f}" if "rare_lucene_qps" in r else "-"
            load = f"{r['load_start']:.1f}-{r['load_end']:.1f}" if "load_start" in r else "-"
            print(
                f"| {n:,} | {backend}{note} | {r['index_s']:.0f} s | {'~' if r.get('extrapolated') else ''}{r['qps']:.1f} | "
                f"{fmt_time(r, 'mining_total_s')} | {'~' if r.get('extrapolated') else ''}{total / 60:.1f} min | {rss} | "
                f"{raw} | {lucene} | {load} |"
            )
    print()
    for n in sizes:
        p, g = results.get(("pyserini", n)), results.get(("gensim", n))
        if p and g:
            print(f"N={n:,}: pyserini / gensim mining q/s = {p['qps'] / g['qps']:.1f}x  (target at 50k: >= 40x)")
    for n in sizes:
        p = results.get(("pyserini", n))
        if p and "raw_pyserini_qps" in p:
            op = p["operator_qps_compared"]
            print(
                f"N={n:,} (first {p['compared_questions']:,} questions): operator {op:.0f} q/s / raw pyserini "
                f"batch_search {p['raw_pyserini_qps']:.0f} q/s = {op / p['raw_pyserini_qps']:.0%} (target >= 80%); "
                f"operator / rare's Lucene search alone ({p['rare_lucene_qps']:.0f} q/s) = {op / p['rare_lucene_qps']:.0%}"
            )


if __name__ == "__main__":
    main()
