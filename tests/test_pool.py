"""The BM25 pool is the input documents, each once: not doc2query's output, whatever became of
the questions. Real runs: the local test server, real litellm, real Lucene."""

import logging
import re

import pytest
from conftest import compose_config, look_alike_documents, read_jsonl, request_keys, server_overrides, write_corpus

from rare.errors import ConfigError
from rare.pipeline.build import build_steps
from rare.pipeline.graph import pool_step
from rare.pipeline.runner import run

DOCS = look_alike_documents()
NO_TEACHER = ["steps.reason_distill=null", "llm.max_retries=0", "llm.backoff_s=0.01"]


def hardneg_run(tmp_path, server, corpus, *overrides, caplog=None):
    """Run up to bm25_hardneg; the dataset rows and the pool size bm25_hardneg logged."""
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={corpus}", *NO_TEACHER, *overrides)
    caplog.set_level(logging.INFO, logger="rare")
    manifest = run(cfg)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step 'bm25_hardneg': the pool is")]
    assert len(logged) == 1, logged
    pool = int(re.search(r"the pool is (\d+) documents", logged[0]).group(1))
    return manifest, read_jsonl(tmp_path / "run" / "dataset.jsonl"), pool


def test_a_document_whose_question_failed_is_still_a_negative(tmp_path, server, small_corpus, caplog):
    """doc-00's question fails; doc-01 and doc-02 repeat its topic, so it is their look-alike."""
    doomed = request_keys(tmp_path, "doc2query", DOCS[:1])["doc-00"]
    server.configure(fail_prompt_keys={doomed: "500"})
    try:
        manifest, rows, pool = hardneg_run(tmp_path, server, small_corpus, caplog=caplog)
    finally:
        server.configure(fail_prompt_keys={})  # the `server` fixture does not clear these
    assert [(s["name"], s["failed"]) for s in manifest["steps"]] == [("doc2query", 1), ("bm25_hardneg", 0)]
    assert len(rows) == 11 and "doc-00" not in {row["id"] for row in rows}
    assert pool == 12  # every document, the one without a question too
    negatives = {row["id"]: row["hard_negative_ids"] for row in rows}
    assert "doc-00" in negatives["doc-01"] and "doc-00" in negatives["doc-02"]


def test_queries_per_doc_3_indexes_each_document_once(tmp_path, server, small_corpus, caplog):
    _, rows, pool = hardneg_run(tmp_path, server, small_corpus, "steps.doc2query.queries_per_doc=3", caplog=caplog)
    assert pool == len(DOCS) == 12  # not 36
    assert len(rows) == 36
    texts = {doc["id"]: doc["text"] for doc in DOCS}
    for row in rows:
        assert row["hard_negative_ids"] and set(row["hard_negative_ids"]) <= set(texts)  # documents, not rows
        assert row["source_id"] not in row["hard_negative_ids"]  # never its own document
        assert row["text"] not in row["hard_negatives"]  # nor a copy of it
        dropped = row["hard_negative_info"]["dropped"]
        assert dropped["positive"] == 1 and dropped["duplicate"] == 0  # found by its document's id; no copies
    # the three rows of one document share its positive: the same document is excluded, by id
    for doc in texts:
        assert {row["source_id"] for row in rows if row["id"].startswith(f"{doc}#")} == {doc}


def test_a_document_doc_filter_removed_is_not_in_the_pool(tmp_path, server, caplog):
    copy = {"id": "copy", "text": "  " + DOCS[1]["text"].upper() + " "}  # doc-01's words: an exact duplicate
    stub = {"id": "stub", "text": "Page 3 of 9."}
    corpus = write_corpus(tmp_path / "messy.jsonl", [*DOCS, copy, stub])
    manifest, rows, pool = hardneg_run(
        tmp_path, server, corpus, "+steps=doc_filter", "steps.doc_filter.min_words=5", caplog=caplog
    )
    assert [s["name"] for s in manifest["steps"]] == ["doc_filter", "doc2query", "bm25_hardneg"]
    assert manifest["steps"][0]["filtered"] == 2
    assert pool == 12  # what doc_filter kept
    assert not {"copy", "stub"} & {i for row in rows for i in row["hard_negative_ids"]}
    assert any("doc-01" in row["hard_negative_ids"] for row in rows)  # the kept original still is a negative


def test_the_documents_are_the_input_as_the_leading_filters_left_it(tmp_path):
    """pool_step: bm25_hardneg's documents are doc_filter's rows, else the input; other corpus steps
    see the step before."""
    built = build_steps(compose_config(tmp_path, "llm=openai", "+steps=doc_filter").steps)
    assert [name for name, _ in built] == ["doc_filter", "doc2query", "bm25_hardneg", "reason_distill"]
    steps = [op for _, op in built]
    assert [pool_step(steps, index) for index in (1, 2, 3, 4)] == [0, 1, 1, 3]
    without = [op for _, op in build_steps(compose_config(tmp_path, "llm=openai").steps)]
    assert pool_step(without, 2) == 0


def test_a_text_column_the_documents_lack_is_refused_before_any_call(tmp_path, server, small_corpus):
    """bm25_hardneg indexes the documents by `text`: pointing it at a column only a row step writes
    would index nothing, so the graph check names it (an external pool is fine)."""
    overrides = [*server_overrides(server), f"data.input={small_corpus}", *NO_TEACHER]
    cfg = compose_config(tmp_path, *overrides, "steps.bm25_hardneg.inputs.text=scenario")
    with pytest.raises(ConfigError, match=r"step 'bm25_hardneg' indexes the documents, but they have no 'scenario'"):
        run(cfg)
    assert server.stats()["total_requests"] == 0
