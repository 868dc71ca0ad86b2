"""Dense and hybrid hard negatives and the positive-aware guards: real sentence-transformers
(the bundled all-MiniLM-L6-v2), real Lucene, real Hydra composition, planted unlabeled positives."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, read_jsonl, server_overrides

from rare.config.paths import example_path
from rare.operators.bm25_hardneg import BM25HardNeg
from rare.pipeline.build import build_steps
from rare.retrieval import dense as dense_module
from rare.retrieval.dense import DenseRetriever, top_k
from rare.retrieval.hybrid import HybridRetriever
from rare.retrieval.lucene.retriever import PyseriniRetriever
from rare.testing.paraphrase import paraphrase

OFF = {
    "score_margin": None,
    "near_duplicate_threshold": None,
    "relative_margin": None,
    "max_similarity_to_positive": None,
}
# 36 medical, legal and financial documents in topic groups (the bundled example keeps 12 of them):
# enough look-alikes that every row still has 3 negatives once the guards have dropped the copies
TECHNICAL_DOCUMENTS = Path(__file__).parent / "data" / "technical_documents.jsonl"
PLANTED = 6  # documents with a planted paraphrase and a sentence-reordered copy


def _documents() -> list[dict]:
    documents = [json.loads(line) for line in TECHNICAL_DOCUMENTS.read_text().splitlines() if line.strip()]
    rows = []
    for d in documents:
        sentences = re.split(r"(?<=[.!?])\s+", d["text"])
        rows.append({"id": d["id"], "text": f"{d['title']}\n{d['text']}", "question": sentences[1]})
    return rows


ROWS = _documents()
ASKED = ROWS[:PLANTED]
POOL = (
    ROWS
    + [{"id": f"{r['id']}-para", "text": paraphrase(r["text"], i), "question": "unused"} for i, r in enumerate(ASKED)]
    + [
        {"id": f"{r['id']}-reordered", "text": "\n".join(reversed(r["text"].split("\n"))), "question": "unused"}
        for r in ASKED
    ]
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("dense-indexes")


def make(backend: str, cache, **args):
    if backend == "bm25":
        return PyseriniRetriever(cache_dir=cache, show_progress=False)
    if backend == "dense":
        return DenseRetriever(cache_dir=cache, show_progress=False, **args)
    return HybridRetriever(
        PyseriniRetriever(cache_dir=cache, show_progress=False),
        DenseRetriever(cache_dir=cache, show_progress=False),
        depth=30,
    )


def mine(cache, backend: str, **options) -> list[dict]:
    operator = BM25HardNeg(make(backend, cache), similarity_model="default", **options)
    assert operator.check() == []
    operator.prepare(iter(POOL))
    return operator.process_batch(ASKED)


def planted(results: list[dict], kind: str) -> int:
    """Planted copies of `kind` ("para", "reordered", "any") among the negatives of their own rows."""
    kinds = ("para", "reordered") if kind == "any" else (kind,)
    return sum(f"{row['id']}-{k}" in result["hard_negative_ids"] for row, result in zip(ASKED, results) for k in kinds)


BACKENDS = ("bm25", "dense", "hybrid")


@pytest.mark.parametrize("backend", BACKENDS)
def test_without_guards_the_planted_positives_come_back_as_negatives(cache, backend):
    results = mine(cache, backend, **OFF)
    assert planted(results, "para") + planted(results, "reordered") >= PLANTED
    for row, result in zip(ASKED, results):
        assert row["id"] not in result["hard_negative_ids"]  # the positive itself is always dropped


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "guard,value,reason,kind",
    [
        ("score_margin", 0.05, "margin", "reordered"),  # the same words: the same BM25 score (cosine for dense)
        ("near_duplicate_threshold", 0.8, "near_duplicate", "reordered"),  # the same 5-grams but one
        ("max_similarity_to_positive", 0.85, "similar_to_positive", "para"),  # other words, the same meaning
        ("relative_margin", 0.95, "relative_margin", "any"),  # closer to the question than 95% of the positive
    ],
)
def test_each_guard_catches_a_planted_positive(cache, backend, guard, value, reason, kind):
    off = mine(cache, backend, **OFF)
    on = mine(cache, backend, **{**OFF, guard: value})
    assert planted(on, kind) < planted(off, kind)
    assert sum(r["hard_negative_info"]["dropped"][reason] for r in on) >= planted(off, kind) - planted(on, kind)
    # the score margin is exact only on BM25 scores (hybrid: a copy only the dense list ranks has none; dense: cosines)
    if guard in ("near_duplicate_threshold", "max_similarity_to_positive") or (guard, backend) == (
        "score_margin",
        "bm25",
    ):
        assert planted(on, kind) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_guards_leave_no_planted_positive_and_record_where_negatives_came_from(cache, backend):
    results = mine(cache, backend)
    assert planted(results, "para") == planted(results, "reordered") == 0
    for result in results:
        info = result["hard_negative_info"]
        assert not info["short"] and len(result["hard_negative_ids"]) == 3
        assert info["positive_similarity"] is not None and 0 < info["positive_similarity"] <= 1
        assert info["options"]["relative_margin"] == 0.95 and info["options"]["max_similarity_to_positive"] == 0.85
        for negative in info["negatives"]:
            assert negative["found_by"] == sorted(negative["ranks"]) and all(r >= 1 for r in negative["ranks"].values())
        json.dumps(result)
    if backend == "hybrid":
        assert {name for r in results for n in r["hard_negative_info"]["negatives"] for name in n["found_by"]} == {
            "bm25",
            "dense",
        }


def test_bm25_without_a_similarity_model_keeps_the_dense_guards_off_and_torch_unloaded(cache):
    code = (
        "import sys; from rare.operators.bm25_hardneg import BM25HardNeg; import rare.cli, rare.pipeline.runner, rare.retrieval.dense, "
        "rare.retrieval.hybrid; bad = [m for m in ('torch', 'sentence_transformers', 'faiss') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    operator = BM25HardNeg(make("bm25", cache))
    assert operator.options["relative_margin"] is None and operator.options["max_similarity_to_positive"] is None


def test_dense_ranks_by_meaning_and_caches_the_embeddings(cache):
    retriever = make("dense", cache)
    retriever.prepare((r["id"], r["text"]) for r in ROWS)
    built = retriever.index_path
    hits = retriever.search(["How do you stop bleeding in a patient on warfarin?"], 3)[0]
    assert hits[0].doc_id == "med-01"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    again = make("dense", cache)
    again.prepare((r["id"], r["text"]) for r in ROWS)
    assert again.index_reused is True and again.index_path == built
    assert (built / dense_module.EMBEDDINGS).is_file() and built.name.startswith("dense-")
    np.testing.assert_allclose(
        again.score(["warfarin reversal"], [ROWS[0]["text"]]),
        retriever.score(["warfarin reversal"], [ROWS[0]["text"]]),
        rtol=1e-5,
    )


def test_chunked_exact_search_and_faiss_give_the_brute_force_answer(cache, monkeypatch):
    rng = np.random.default_rng(0)
    docs = rng.normal(size=(1000, 16)).astype(np.float32)
    queries = rng.normal(size=(7, 16)).astype(np.float32)
    monkeypatch.setattr(dense_module, "SEARCH_CHUNK", 97)  # many chunks, a ragged last one
    scores, rows = top_k(queries, docs, 10)
    expected = np.argsort(-(queries @ docs.T), axis=1)[:, :10]
    for got_rows, got_scores, want in zip(rows, scores, expected):
        assert [r for r, _ in dense_module.ranked(got_rows, got_scores)] == want.tolist()
    pytest.importorskip("faiss")
    exact, with_faiss = make("dense", cache), make("dense", cache, index="faiss")
    assert with_faiss.check() is None
    for retriever in (exact, with_faiss):
        retriever.prepare((r["id"], r["text"]) for r in ROWS)
    questions = [r["question"] for r in ROWS[:8]]
    a, b = exact.search_rows(questions, 5), with_faiss.search_rows(questions, 5)
    assert [[row for row, _ in hits] for hits in a] == [[row for row, _ in hits] for hits in b]


def test_hybrid_fuses_by_reciprocal_rank(cache):
    retriever = HybridRetriever(
        PyseriniRetriever(cache_dir=cache, show_progress=False),
        DenseRetriever(cache_dir=cache, show_progress=False),
        k=10,
        weights={"bm25": 2.0, "dense": 1.0},
        depth=20,
    )
    retriever.prepare((r["id"], r["text"]) for r in ROWS)
    question = [ROWS[3]["question"]]
    lexical = [row for row, _ in retriever.bm25.search_rows(question, 20)[0]]
    semantic = [row for row, _ in retriever.dense.search_rows(question, 20)[0]]
    fused = retriever.search_ranked(question, 20)[0]
    for hit in fused:
        expected = sum(
            w / (10 + lst.index(hit.row) + 1) for w, lst in ((2.0, lexical), (1.0, semantic)) if hit.row in lst
        )
        assert hit.score == pytest.approx(expected, abs=1e-6)
        assert hit.ranks == {
            n: lst.index(hit.row) + 1 for n, lst in (("bm25", lexical), ("dense", semantic)) if hit.row in lst
        }
    assert [h.score for h in fused] == sorted((h.score for h in fused), reverse=True)
    with pytest.raises(ValueError, match="weights"):
        HybridRetriever(retriever.bm25, retriever.dense, weights={"sparse": 1})


def test_chinese_documents_take_the_same_path(cache):
    documents = [
        json.loads(line) for line in Path(example_path("documents_zh.jsonl")).read_text().splitlines() if line.strip()
    ]
    retriever = make("dense", cache)
    retriever.prepare((d["id"], d["text"]) for d in documents)
    hits = retriever.search([documents[2]["text"][:200]], 3)[0]
    assert hits[0].doc_id == documents[2]["id"]


@pytest.mark.parametrize("backend", ["dense", "hybrid"])
def test_chinese_documents_are_mined_end_to_end_with_the_zh_analyzer(cache, backend):
    """The code path only: the bundled MiniLM is English-only, so no claim about the quality of Chinese negatives."""
    documents = [
        json.loads(line) for line in Path(example_path("documents_zh.jsonl")).read_text().splitlines() if line.strip()
    ]
    rows = [{"id": d["id"], "text": d["text"], "question": d["text"][:40]} for d in documents]
    dense = DenseRetriever(cache_dir=cache, show_progress=False, language="zh")
    retriever = (
        dense
        if backend == "dense"
        else HybridRetriever(PyseriniRetriever(language="zh", cache_dir=cache, show_progress=False), dense, depth=30)
    )
    operator = BM25HardNeg(retriever, num_negatives=2)
    operator.prepare(rows)
    results = operator.process_batch(rows)
    for row, result in zip(rows, results):
        assert isinstance(result, dict), result
        assert row["id"] not in result["hard_negative_ids"]
        assert result["hard_negatives"] and all(re.search("[\u4e00-\u9fff]", text) for text in result["hard_negatives"])
        assert result["hard_negative_info"]["options"]["retriever"] == backend
    if backend == "hybrid":  # the Lucene list was built with the CJK analyzer and found candidates
        assert retriever.bm25.language == "zh"
        assert any("bm25" in n["found_by"] for r in results for n in r["hard_negative_info"]["negatives"])


@pytest.mark.parametrize("option", ["dense", "hybrid"])
def test_hydra_composes_each_back_end_and_a_whole_run_mines_with_it(tmp_path, server, small_corpus, option):
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}", f"retriever={option}")
    operator = dict(build_steps(cfg.steps))["bm25_hardneg"]
    assert operator.retriever.backend == option and operator.check() == []
    if option == "hybrid":
        assert operator.retriever.bm25.backend == "pyserini" and operator.retriever.weights == {
            "bm25": 1.0,
            "dense": 1.0,
        }
        from rare.pipeline.runner import run

        run(cfg)
        rows = read_jsonl(tmp_path / "run" / "dataset.jsonl")
        assert len(rows) == 12
        for row in rows:
            assert row["id"] not in row["hard_negative_ids"]
            assert row["hard_negative_info"]["options"]["retriever"] == "hybrid"
            assert all(n["found_by"] for n in row["hard_negative_info"]["negatives"])
        from rare.tools.view.report import build_report

        page = build_report(tmp_path / "run")  # rare view shows where each negative came from and what was dropped
        assert re.search(r"found by (bm25 #\d+, dense #\d+|bm25 #\d+|dense #\d+)", page)
        assert "hybrid " in page and ("Candidates dropped" in page) == any(
            any(row["hard_negative_info"]["dropped"].values()) for row in rows[:50]
        )


def test_a_missing_model_is_reported_before_any_work(tmp_path):
    from rare.retrieval.base import RetrieverUnavailable

    retriever = DenseRetriever(model=str(tmp_path / "no-such-model"), cache_dir=tmp_path, show_progress=False)
    with pytest.raises(RetrieverUnavailable, match="not a directory"):
        retriever.check()
    operator = BM25HardNeg(retriever)
    assert any("no-such-model" in problem for problem in operator.check())
