"""The BM25 hard-negative step on long documents: rare's whole step against the reference's, same data, same run.

Data: `corpus.py`'s synthetic rows with documents of --doc-words words (default 5,000 documents
of ~1,400 words, one 30-word question each).

rare: `BM25HardNeg` with `retriever=pyserini` and the default guards, in a fresh process:
`prepare` (index build included: nothing is cached) and `process_batch` over every question in
batches of 1000 (the runner's batch), with a breakdown of where the time goes.
The reference: DataFlow's RARE hard-negative operator, as `retriever=gensim` reproduces it: the
gensim BM25 index, then per question one dense row of N scores, sorted, the top 4 taken and the
positive left out (three negatives, their texts). A reference run longer than --budget seconds
searches --sample questions and its search time is extrapolated (marked ~).

Lucene alone, the floor of any step built on it: in a third process, the same Lucene index
(Anserini's SimpleIndexer, rare's settings and threads, fed the jsonl lines rare spools) and the
same searches (the bag-of-words query, `IndexSearcher.search(query, k)` on every core), with none
of rare's own work (no hashing, duplicate features, row map, exclusions, texts). Then both again
in the same JVM: the second pass shows what the cold JIT costs (see the README for why warming
the JIT up beforehand does not pay).

CPU seconds (every thread of the process) are printed beside the wall times: on a loaded box they
say what wall times cannot; on an idle one rare's wall time is about its CPU over the cores it keeps
busy, the reference's about its CPU.

All processes start the JVM before the clock starts (rare boots it while earlier steps run; the
reference needs it for pyserini's analyzer). They run one after the other, --repeats times, so
each ratio compares runs made in the same minutes.

Usage: python benchmarks/hardneg_long.py [--n 5000] [--doc-words 1400] [--repeats 2] [--save negatives.jsonl]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from corpus import synthetic_rows

BATCH = 1000


def corpus_file(workdir: Path, n: int, words: int, seed: int) -> Path:
    path = workdir / f"long-{n}-{words}-{seed}.jsonl"
    if not path.exists():
        partial = path.with_suffix(".partial")
        with open(partial, "w", encoding="utf-8") as fh:
            for row in synthetic_rows(n, seed, doc_len=words):
                fh.write(json.dumps(row) + "\n")
        partial.rename(path)
    return path


def timed(spent: dict, name: str, owner, attribute: str) -> None:
    """Wrap ``owner.attribute`` so the seconds spent in it add up under ``name``."""
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - started

    setattr(owner, attribute, wrapper)


def rare_child(args) -> dict:
    from rare.operators import bm25_hardneg
    from rare.retrieval import exclusions, index_cache, pool
    from rare.retrieval.lucene import retriever as lucene_retriever
    from rare.retrieval.lucene.java import import_lucene

    rows = [json.loads(line) for line in open(args.corpus, encoding="utf-8")]
    import_lucene()  # the JVM, before the clock (rare boots it in the background at start-up)
    spent: dict[str, float] = defaultdict(float)
    timed(spent, "read + hash the pool", index_cache, "spool_corpus")  # called from the cache
    timed(spent, "Lucene index", lucene_retriever.PyseriniRetriever, "_build")
    timed(spent, "duplicate features", index_cache, "write_features")
    timed(spent, "Lucene search", lucene_retriever.PyseriniRetriever, "search_rows")
    timed(spent, "exclusions", exclusions.Exclusions, "choose")
    timed(spent, "texts read back (also inside exclusions)", pool.DocStore, "texts")
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        retriever = lucene_retriever.PyseriniRetriever(cache_dir=tmp, show_progress=False)
        operator = bm25_hardneg.BM25HardNeg(retriever)
        started, cpu = time.perf_counter(), time.process_time()
        operator.prepare(rows)
        prepared = time.perf_counter()
        results = []
        for start in range(0, len(rows), BATCH):
            results += operator.process_batch(rows[start : start + BATCH])
        finished, cpu = time.perf_counter(), time.process_time() - cpu
    if args.save:
        with open(args.save, "w", encoding="utf-8") as fh:
            for row, result in zip(rows, results):
                fh.write(
                    json.dumps(
                        {
                            "id": row["id"],
                            "ids": result["hard_negative_ids"],
                            "scores": result["hard_negative_scores"],
                            "dropped": result["hard_negative_info"]["dropped"],
                        }
                    )
                    + "\n"
                )
    return {
        "step_s": finished - started,
        "cpu_s": cpu,
        "prepare_s": prepared - started,
        "mining_s": finished - prepared,
        "parts": dict(spent),
        "short": sum(1 for r in results if r["hard_negative_info"]["short"]),
    }


def reference_child(args) -> dict:
    from rare.retrieval.gensim_bm25 import GensimRetriever
    from rare.retrieval.lucene.java import import_lucene

    rows = [json.loads(line) for line in open(args.corpus, encoding="utf-8")]
    import_lucene()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        started, cpu = time.perf_counter(), time.process_time()
        retriever = GensimRetriever(cache_dir=tmp, show_progress=False)
        retriever.index((row["id"], row["text"]) for row in rows)
        indexed, index_cpu = time.perf_counter(), time.process_time() - cpu
        texts = {row["id"]: row["text"] for row in rows}
        searched = 0
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            hits = retriever.search([row["question"] for row in batch], 4)
            for row, found in zip(batch, hits):
                negatives = [texts[hit.doc_id] for hit in found if hit.doc_id != row["id"]][:3]
                assert len(negatives) <= 3
            searched += len(batch)
            if args.budget and (time.perf_counter() - indexed) / searched * len(rows) > args.budget:
                break
        search_s = (time.perf_counter() - indexed) / searched * len(rows)
        search_cpu = (time.process_time() - cpu - index_cpu) / searched * len(rows)
    index_s = indexed - started
    return {
        "step_s": index_s + search_s,
        "cpu_s": index_cpu + search_cpu,  # extrapolated as search_s is
        "index_s": index_s,
        "search_s": search_s,
        "extrapolated": searched < len(rows),
        "searched": searched,
    }


def lucene_child(args) -> dict:
    import threading

    from rare.retrieval.lucene import indexing, searcher
    from rare.retrieval.lucene.java import import_lucene

    rows = [json.loads(line) for line in open(args.corpus, encoding="utf-8")]
    lines = [json.dumps({"id": row["id"], "contents": row["text"]}, ensure_ascii=False) for row in rows]
    questions = [row["question"] for row in rows]
    lucene = import_lucene()
    threads = os.cpu_count() or 1
    depth = 3 + 10 + 1  # rare's search depth with the defaults: num_negatives + extra_candidates + 1
    passes = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for number in range(2):  # the first pass with a cold JIT, as rare's step; the second warm
            index_dir = Path(tmp) / f"pass{number}"
            started = time.perf_counter()
            indexer = lucene.SimpleIndexer(
                ["-index", str(index_dir), "-language", "en", "-memoryBuffer", str(indexing.INDEX_BUFFER_MB)]
                + ["-input", "", "-collection", "JsonCollection", "-threads", str(threads)]
            )
            for start in range(0, len(lines), BATCH):
                indexer.addRawDocuments(lines[start : start + BATCH])
            indexer.close()
            indexed = time.perf_counter()
            index = searcher.LuceneIndex(index_dir, "en", 0.9, 0.4, rows=None)
            opened = time.perf_counter()

            def search(part: list[str], index=index) -> None:
                build, run = index.generator.buildQuery, index.searcher.search
                for question in part:
                    run(build(searcher.FIELD, index.analyzer, question), depth)

            workers = [threading.Thread(target=search, args=(questions[i::threads],)) for i in range(1, threads)]
            for worker in workers:
                worker.start()
            search(questions[::threads])
            for worker in workers:
                worker.join()
            searched = time.perf_counter()
            index.close()
            passes.append({"index_s": indexed - started, "search_s": searched - opened})
    return {"cold": passes[0], "warm": passes[1]}


def run_child(args, which: str, save: str | None) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        which,
        "--corpus",
        str(args.corpus),
        "--workdir",
        str(args.workdir),
        "--budget",
        str(args.budget),
        *(["--save", save] if save else []),
    ]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--doc-words", type=int, default=1400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--budget", type=float, default=0, help="reference search longer than this (s): extrapolate; 0 = never"
    )
    parser.add_argument("--save", help="write rare's negatives (ids, scores, drop counts) here, to diff two versions")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "rare-hardneg-long"))
    parser.add_argument("--child", choices=("rare", "reference", "lucene"), help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = {"rare": rare_child, "reference": reference_child, "lucene": lucene_child}[args.child]
        print(json.dumps(child(args)))
        return
    args.workdir = Path(args.workdir)
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.corpus = corpus_file(args.workdir, args.n, args.doc_words, args.seed)
    print(
        f"{args.n:,} documents of ~{args.doc_words:,} words, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        file=sys.stderr,
    )
    pairs = []
    for repeat in range(args.repeats):
        rare = run_child(args, "rare", args.save if repeat == 0 else None)
        reference = run_child(args, "reference", None)
        floor = run_child(args, "lucene", None)
        pairs.append((rare, reference, os.getloadavg()[0], floor))
        print(
            f"run {repeat + 1}: rare {rare['step_s']:.1f} s, reference {reference['step_s']:.1f} s, "
            f"Lucene alone {floor['cold']['index_s'] + floor['cold']['search_s']:.1f} s",
            file=sys.stderr,
        )
    print()
    print("| run | rare step (prepare + mining) | reference step (index + search) | reference / rare | load |")
    print("|---|---|---|---|---|")
    for number, (rare, reference, load, _) in enumerate(pairs, 1):
        mark = "~" if reference["extrapolated"] else ""
        print(
            f"| {number} | {rare['step_s']:.1f} s ({rare['prepare_s']:.1f} + {rare['mining_s']:.1f}) | "
            f"{mark}{reference['step_s']:.1f} s ({reference['index_s']:.1f} + {mark}{reference['search_s']:.1f}) | "
            f"{mark}{reference['step_s'] / rare['step_s']:.1f}x | {load:.1f} |"
        )
    print()
    print("CPU seconds (all threads of the process; wall time under load is the share of the cores it got):")
    print("| run | rare step CPU | reference step CPU | reference / rare (CPU) |")
    print("|---|---|---|---|")
    for number, (rare, reference, _, _) in enumerate(pairs, 1):
        mark = "~" if reference["extrapolated"] else ""
        print(
            f"| {number} | {rare['cpu_s']:.1f} s | {mark}{reference['cpu_s']:.1f} s | "
            f"{mark}{reference['cpu_s'] / rare['cpu_s']:.1f}x |"
        )
    print()
    print("rare's step by part (s, per run; the rest is the operator's own bookkeeping):")
    names = list(pairs[0][0]["parts"])
    print("| part | " + " | ".join(f"run {i}" for i in range(1, len(pairs) + 1)) + " |")
    print("|---|" + "---|" * len(pairs))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{rare['parts'][name]:.2f}" for rare, *_ in pairs) + " |")
    print("| whole step | " + " | ".join(f"{rare['step_s']:.2f}" for rare, *_ in pairs) + " |")
    print()
    print("Lucene alone, the floor of a step built on it (s: index + search; the second pass in the same JVM):")
    print("| run | cold JIT (as in the step) | warm JIT | reference / cold floor | reference / rare |")
    print("|---|---|---|---|---|")
    for number, (rare, reference, _, floor) in enumerate(pairs, 1):
        cold, warm = floor["cold"], floor["warm"]
        cold_s = cold["index_s"] + cold["search_s"]
        mark = "~" if reference["extrapolated"] else ""
        print(
            f"| {number} | {cold_s:.1f} ({cold['index_s']:.1f} + {cold['search_s']:.1f}) | "
            f"{warm['index_s'] + warm['search_s']:.1f} ({warm['index_s']:.1f} + {warm['search_s']:.1f}) | "
            f"{mark}{reference['step_s'] / cold_s:.1f}x | {mark}{reference['step_s'] / rare['step_s']:.1f}x |"
        )


if __name__ == "__main__":
    main()
