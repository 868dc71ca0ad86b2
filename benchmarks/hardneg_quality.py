"""Hard-negative quality and speed: bm25, dense and hybrid, with and without the guards.

Quality. A corpus where the truth is known: 300 technical documents (the 12 bundled ones
plus 288 written from templates: 48 subjects x 6 aspects, so documents on one subject are
confusable), and for the first 100 a planted unlabeled positive: a paraphrase
(``rare.testing.paraphrase``: sentences reordered, every fifth word swapped for a synonym or
dropped, another title). Every document gets one question (one of its fact sentences with a
few words left out). For each back end and guard setting, through ``BM25HardNeg``:

* planted: share of the 100 rows whose negatives contain their own planted paraphrase;
* short: share of all 300 rows left with fewer than 3 negatives;
* q/s: questions per second of the mining step (index already built).

Guard settings: ``none`` (every guard off), ``lexical`` (today's defaults: score margin 0.05,
5-gram near-duplicates 0.8), ``all`` (lexical + relative_margin 0.95 +
max_similarity_to_positive 0.85; BM25 embeds its candidates with the bundled model).

Speed at 10k and 100k documents (synthetic ``corpus.py`` rows, 1000 questions): BM25
(pyserini) index build and search, measured; dense search (exact numpy, and FAISS when
installed) measured on a matrix of random unit vectors of the model's size (the search cost
does not depend on the values); dense embedding of the pool extrapolated from the rate
measured on the quality corpus (marked ~); hybrid = both searches + the fusion.

Usage: python benchmarks/hardneg_quality.py [--sizes 10k,100k]   (a few minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import synthetic_rows  # noqa: E402

from rare.config.paths import example_path  # noqa: E402
from rare.operators.bm25_hardneg import BM25HardNeg  # noqa: E402
from rare.retrieval.dense import DenseRetriever, top_k  # noqa: E402
from rare.retrieval.hybrid import HybridRetriever  # noqa: E402
from rare.retrieval.lucene.retriever import PyseriniRetriever  # noqa: E402
from rare.testing.paraphrase import paraphrase  # noqa: E402

SUBJECTS = [
    "PostgreSQL streaming replication",
    "TCP congestion control",
    "Kubernetes pod autoscaling",
    "Redis eviction",
    "TLS certificate rotation",
    "Kafka consumer groups",
    "ZFS snapshots",
    "DNS caching resolvers",
    "JVM garbage collection",
    "Linux cgroups memory limits",
    "NTP clock discipline",
    "RAID 6 rebuilds",
    "BGP route dampening",
    "OAuth refresh tokens",
    "SSD wear leveling",
    "Nginx rate limiting",
    "Elasticsearch shard allocation",
    "Prometheus recording rules",
    "Git packfiles",
    "SQLite write-ahead logging",
    "HTTP/2 flow control",
    "Cassandra compaction",
    "etcd leader election",
    "Terraform state locking",
    "Docker layer caching",
    "MySQL InnoDB buffer pool",
    "RabbitMQ dead-letter queues",
    "Ceph placement groups",
    "IPv6 neighbor discovery",
    "WireGuard handshakes",
    "Spark shuffle partitions",
    "Python asyncio event loops",
    "Rust borrow checking",
    "CPU branch prediction",
    "NVMe queue depth",
    "Varnish cache invalidation",
    "LDAP group sync",
    "SMTP greylisting",
    "GPU memory pinning",
    "HAProxy health checks",
    "Memcached slab allocation",
    "Raft log compaction",
    "S3 multipart uploads",
    "Let's Encrypt ACME challenges",
    "Consul service discovery",
    "Envoy circuit breaking",
    "MongoDB oplog sizing",
    "Vault secret leasing",
]
ASPECTS = {
    "configuration": ["setting", "default", "parameter", "file"],
    "failure modes": ["failure", "symptom", "outage", "cause"],
    "performance tuning": ["latency", "throughput", "benchmark", "bottleneck"],
    "security": ["attacker", "permission", "exposure", "audit"],
    "monitoring": ["metric", "alert", "dashboard", "threshold"],
    "capacity planning": ["growth", "headroom", "forecast", "budget"],
}
TEMPLATES = [
    "For {s}, the {a} guidance starts from the {w0}: operators usually keep it near {n1} unless measurements say otherwise.",
    "A common {w1} in {s} appears when the {w2} exceeds {n2} percent, and the fix is to lower the load before changing code.",
    "Teams that run {s} at scale track the {w3} every {n3} seconds, because slow drift hides behind averages.",
    "The documentation for {s} warns that the {w0} interacts with the {w2}, so a change to one needs a review of the other.",
    "In a measured case the {a} work on {s} cut the {w1} from {n4} to {n5} units within a week.",
    "When {s} is shared by several services, each one should get its own {w3} and a written owner.",
    "Rolling back a bad {w0} in {s} takes about {n3} minutes if the previous value was recorded.",
]


def template_documents(rng: random.Random) -> list[dict]:
    out = []
    for i, subject in enumerate(SUBJECTS):
        for aspect, words in ASPECTS.items():
            fill = {
                "s": subject,
                "a": aspect,
                "w0": words[0],
                "w1": words[1],
                "w2": words[2],
                "w3": words[3],
                "n1": rng.randint(2, 512),
                "n2": rng.randint(40, 95),
                "n3": rng.randint(5, 90),
                "n4": rng.randint(200, 900),
                "n5": rng.randint(10, 150),
            }
            sentences = [t.format(**fill) for t in rng.sample(TEMPLATES, 5)]
            out.append(
                {"id": f"t{i:02d}-{aspect.replace(' ', '_')}", "text": f"{subject}: {aspect}\n" + " ".join(sentences)}
            )
    return out


def quality_corpus(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(rows with questions, pool = rows + 100 planted paraphrases)."""
    rng = random.Random(seed)
    bundled = [
        json.loads(line) for line in Path(example_path("documents.jsonl")).read_text().splitlines() if line.strip()
    ]
    docs = [{"id": d["id"], "text": f"{d['title']}\n{d['text']}"} for d in bundled] + template_documents(rng)
    docs = docs[:300]
    rows = []
    for d in docs:
        body = d["text"].split("\n", 1)[-1]
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", body) if len(s.split()) > 8]
        words = rng.choice(sentences).rstrip(".").split()
        keep = sorted(rng.sample(range(len(words)), max(6, int(len(words) * 0.7))))
        rows.append({**d, "question": " ".join(words[i] for i in keep) + "?"})
    planted = [
        {"id": f"{r['id']}-para", "text": paraphrase(r["text"], i), "question": ""} for i, r in enumerate(rows[:100])
    ]
    return rows, rows + planted


GUARDS = {
    "none": {
        "score_margin": None,
        "near_duplicate_threshold": None,
        "relative_margin": None,
        "max_similarity_to_positive": None,
    },
    "lexical": {"relative_margin": None, "max_similarity_to_positive": None},
    "all": {},
}
JUDGED = ("lexical", "all")  # guard settings also run with false_negative_judge after the mining
_DOCUMENT = re.compile(r"Document (\d+):\n<<<\n(.*?)\n>>>", re.S)


@functools.lru_cache(maxsize=1)
def _planted() -> dict[str, str]:
    """Each planted paraphrase's text -> the question of the document it paraphrases."""
    rows, pool = quality_corpus()
    questions = {row["id"]: row["question"] for row in rows}
    return {
        doc["text"].strip(): questions[doc["id"].removesuffix("-para")] for doc in pool if doc["id"].endswith("-para")
    }


def oracle_judge(body: dict) -> str:
    """The test server's judge (``ServerConfig.responder``): it knows the planted pairs and names a
    document exactly when it is the planted paraphrase of the question's own document. An oracle:
    it tests the judge step's plumbing (prompt, client, parsing, drops and their accounting) and
    shows the best a judge could do here, not how well an LLM judges."""
    text = body["messages"][-1]["content"]
    question = text.split("\n", 1)[0].removeprefix("Question: ").strip()
    planted = _planted()
    answering = [
        int(number) for number, document in _DOCUMENT.findall(text) if planted.get(document.strip()) == question
    ]
    return json.dumps({"answering": answering, "rationale": "the planted paraphrase of the question's document"})


def judge_rows(judge, rows: list[dict], results: list[dict]) -> list[dict]:
    """``false_negative_judge`` over the mined rows (its own calls, through the real client and server)."""
    import asyncio

    async def all_rows():
        return await asyncio.gather(*(judge.process({**row, **result}) for row, result in zip(rows, results)))

    return asyncio.run(all_rows())


def make_judge(url: str):
    from omegaconf import OmegaConf

    from rare.llm.client import LLMClient
    from rare.operators.false_negative_judge import FalseNegativeJudge

    preset = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "preset" / "judge.yaml")
    prompt = OmegaConf.to_container(preset.steps.false_negative_judge.prompt)
    client = LLMClient(model="openai/judge", api_base=url, api_key="sk-test", cache=False, concurrency=32)
    return FalseNegativeJudge(client, prompt)


def make(backend: str, cache: str, depth: int = 50):
    bm25 = lambda: PyseriniRetriever(cache_dir=cache, show_progress=False)  # noqa: E731
    dense = lambda: DenseRetriever(cache_dir=cache, show_progress=False)  # noqa: E731
    return {"bm25": bm25, "dense": dense, "hybrid": lambda: HybridRetriever(bm25(), dense(), depth=depth)}[backend]()


def quality(cache: str, judge=None) -> tuple[list[tuple], float]:
    rows, pool = quality_corpus()
    table, embed_rate = [], None

    def add(backend, guard, results, seconds):
        leaked = sum(f"{r['id']}-para" in x["hard_negative_ids"] for r, x in zip(rows[:100], results[:100]))
        short = sum(x["hard_negative_info"]["short"] for x in results)
        table.append((backend, guard, leaked / 100, short / len(rows), len(rows) / seconds))
        print(
            f"  {backend:7s} {guard:14s} planted {leaked:3d}/100  short {short:3d}/{len(rows)}  {len(rows) / seconds:7.1f} q/s",
            file=sys.stderr,
            flush=True,
        )

    for backend in ("bm25", "dense", "hybrid"):
        for guard, options in GUARDS.items():
            operator = BM25HardNeg(make(backend, cache), similarity_model="default", **options)
            started = time.perf_counter()
            operator.prepare(iter(pool))
            build = time.perf_counter() - started
            if backend == "dense" and not operator.retriever.index_reused:
                embed_rate = len(pool) / build
            started = time.perf_counter()
            results = operator.process_batch(rows)
            seconds = time.perf_counter() - started
            add(backend, guard, results, seconds)
            if judge is not None and guard in JUDGED:  # q/s: mining + judging
                started = time.perf_counter()
                judged = judge_rows(judge, rows, results)
                add(backend, f"{guard} + judge*", judged, seconds + time.perf_counter() - started)
    return table, embed_rate


def speed(cache: str, sizes: list[int], embed_rate: float, dimension: int = 384, queries: int = 1000) -> list[tuple]:
    table = []
    for n in sizes:
        data = list(synthetic_rows(n, seed=1))
        questions = [r["question"] for r in data[:queries]]
        bm25 = PyseriniRetriever(cache_dir=cache, show_progress=False)
        started = time.perf_counter()
        bm25.index((r["id"], r["text"]) for r in data)
        bm25_build = time.perf_counter() - started
        started = time.perf_counter()
        lexical = bm25.search_rows(questions, 50)
        bm25_search = time.perf_counter() - started
        rng = np.random.default_rng(0)
        matrix = rng.normal(size=(n, dimension)).astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        q = matrix[rng.integers(0, n, queries)] + 0.1 * rng.normal(size=(queries, dimension)).astype(np.float32)
        started = time.perf_counter()
        scores, rows = top_k(q, matrix, 50)
        exact = time.perf_counter() - started
        faiss_s = None
        try:
            import faiss

            index = faiss.IndexFlatIP(dimension)
            index.add(matrix)
            started = time.perf_counter()
            index.search(q, 50)
            faiss_s = time.perf_counter() - started
        except ImportError:
            pass
        from rare.retrieval.dense import ranked

        semantic = [ranked(r, s) for r, s in zip(rows, scores)]
        fuser = HybridRetriever(bm25, DenseRetriever(cache_dir=cache, show_progress=False))
        started = time.perf_counter()
        for a, b in zip(lexical, semantic):
            fuser._fuse(a, b)
        fuse = time.perf_counter() - started
        dense_search = min(exact, faiss_s or exact)
        table.append(
            (
                n,
                bm25_build,
                queries / bm25_search,
                n / embed_rate,
                queries / exact,
                None if faiss_s is None else queries / faiss_s,
                queries / (bm25_search + dense_search + fuse),
            )
        )
        print(f"  N={n}: bm25 build {bm25_build:.1f}s", file=sys.stderr, flush=True)
        bm25.close()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10k,100k")
    parser.add_argument(
        "--judge",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run false_negative_judge (an oracle judge on the test server) after the guards",
    )
    args = parser.parse_args()
    sizes = [
        int(float(s.lower().rstrip("k")) * (1000 if s.lower().endswith("k") else 1)) for s in args.sizes.split(",")
    ]
    from rare.testing.openai_server import ServerConfig, serve

    with (
        tempfile.TemporaryDirectory(prefix="rare-hardneg-quality-") as cache,
        serve(ServerConfig(responder="hardneg_quality:oracle_judge")) as server,
    ):
        print("quality (300 documents, 100 planted paraphrases, 3 negatives per row):", file=sys.stderr)
        table, embed_rate = quality(cache, make_judge(server.url) if args.judge else None)
        print("\n| retriever | guards | rows with a planted positive among negatives | rows short | questions/s |")
        print("|---|---|---|---|---|")
        for backend, guard, leaked, short, qps in table:
            print(f"| {backend} | {guard} | {leaked:.1%} | {short:.1%} | {qps:.1f} |")
        if args.judge:
            print(
                "\n* judge = false_negative_judge through the real client and the repo's test server, whose judge is an "
                "oracle (it knows which document is each question's planted paraphrase): these rows measure the step's "
                "plumbing and accounting and the best a judge could do, not an LLM's judgement. q/s = mining + judging."
            )
        print(f"\nembedding rate measured on the quality corpus: {embed_rate:.1f} documents/s (all-MiniLM-L6-v2, CPU)")
        speed_table = speed(cache, sizes, embed_rate)
        print(
            "\n| N docs | BM25 index build s | BM25 q/s | dense embedding s | dense exact q/s | dense FAISS q/s | hybrid q/s |"
        )
        print("|---|---|---|---|---|---|---|")
        for n, build, bq, embed, exact, faiss_q, hybrid in speed_table:
            faiss_text = "-" if faiss_q is None else f"{faiss_q:.0f}"
            print(f"| {n:,} | {build:.1f} | {bq:.0f} | ~{embed:,.0f} | {exact:.0f} | {faiss_text} | {hybrid:.0f} |")
        print(
            "\nq/s = 1000 questions, top 50, search only (dense: embedded questions; add the question embedding "
            "rate above). ~ = extrapolated from the measured embedding rate."
        )


if __name__ == "__main__":
    main()
