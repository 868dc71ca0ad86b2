"""doc2query's options: several distinct questions per document (each its own row with a stable id),
a reference answer in the same call, and exact resume after the fan-out."""

import json

import pytest
from conftest import compose_config, look_alike_documents, read_jsonl, server_overrides

from rare.errors import ConfigError
from rare.llm.parsing import ParseError
from rare.operators.doc2query import parse_hard_queries
from rare.pipeline.runner import run
from rare.testing.responder import default_responder

DOCS = [d["id"] for d in look_alike_documents()]
ONLY_DOC2QUERY = ["steps.bm25_hardneg=null", "steps.reason_distill=null", "llm.cache=false"]


def doc2query_run(tmp_path, server, corpus, *overrides):
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={corpus}", *ONLY_DOC2QUERY, *overrides)
    return run(cfg), tmp_path / "run" / "rare_doc2query.jsonl"


def test_queries_per_doc_fans_out_into_distinct_rows_with_stable_ids(tmp_path, server, small_corpus):
    manifest, step_file = doc2query_run(tmp_path, server, small_corpus, "steps.doc2query.queries_per_doc=3")
    rows = read_jsonl(step_file)
    assert [row["id"] for row in rows] == [f"{doc}#q{k}" for doc in DOCS for k in (1, 2, 3)]
    assert [row["source_id"] for row in rows] == [doc for doc in DOCS for _ in range(3)]
    for doc in DOCS:
        mine = [row for row in rows if row["source_id"] == doc]
        assert len({row["question"] for row in mine}) == 3
        assert all(row["reference_answer"].strip() and row["scenario"].strip() for row in mine)
    assert server.stats()["total_requests"] == len(DOCS)  # one call per document, not per question
    step = manifest["steps"][0]
    assert (step["rows_in"], step["rows_out"], step["failed"]) == (12, 36, 0)


def test_one_query_per_doc_keeps_the_document_id(tmp_path, server, small_corpus):
    _, step_file = doc2query_run(tmp_path, server, small_corpus)
    rows = read_jsonl(step_file)
    assert [row["id"] for row in rows] == DOCS
    assert all(row["source_id"] == row["id"] and row["reference_answer"] for row in rows)


def test_resume_after_fan_out_asks_only_documents_not_fully_written(tmp_path, server, small_corpus):
    _, step_file = doc2query_run(tmp_path, server, small_corpus, "steps.doc2query.queries_per_doc=3")
    first = read_jsonl(step_file)
    # As if the run died while journaling: docs 0-4 complete, doc 5 with one row of three.
    journal = step_file.with_name("rare_doc2query.partial.jsonl")
    journal.write_text("".join(json.dumps(row) + "\n" for row in first[:16]), encoding="utf-8")
    step_file.unlink()
    server.reset()

    manifest, _ = doc2query_run(tmp_path, server, small_corpus, "steps.doc2query.queries_per_doc=3")

    assert server.stats()["total_requests"] == len(DOCS) - 5  # docs 5..11 only
    assert read_jsonl(step_file) == first  # same ids, same order, same rows
    assert manifest["steps"][0]["resumed"] == 5 and not journal.exists()


def duplicating_responder(body: dict) -> str:
    """First asks get the same question three times; a re-ask gets the default (distinct) answer."""
    content = default_responder(body)
    if len(body["messages"]) == 2 and "hard_queries" in content:
        data = json.loads(content)
        data["hard_queries"] = [data["hard_queries"][0]] * len(data["hard_queries"])
        return json.dumps(data)
    return content


def test_duplicate_questions_are_asked_again(tmp_path, server, small_corpus):
    server.configure(responder="test_doc2query_options:duplicating_responder")
    try:
        manifest, step_file = doc2query_run(tmp_path, server, small_corpus, "steps.doc2query.queries_per_doc=3")
    finally:
        server.configure(responder=None)
    rows = read_jsonl(step_file)
    assert len(rows) == 36 and manifest["failures"] == 0
    assert all(len({r["question"] for r in rows if r["source_id"] == doc}) == 3 for doc in DOCS)
    assert server.stats()["total_requests"] == 2 * len(DOCS)


QUERY = {
    "question": "Why does the rule apply in this case?",
    "scenario": "A firm buys stock while prices rise fast.",
    "reference_answer": "Because costs rise.",
}


def test_parse_keeps_distinct_questions_and_names_what_is_missing():
    other = {**QUERY, "question": "WHY does the rule apply, in this case"}  # same words: a duplicate
    third = {**QUERY, "question": "Which cost method lowers the taxable income here?"}
    text = json.dumps({"hard_queries": [QUERY, other, third]})
    assert [q["question"] for q in parse_hard_queries(text, 2)] == [QUERY["question"], third["question"]]
    with pytest.raises(ParseError, match="2 distinct questions .1 repeated.*3 different"):
        parse_hard_queries(text, 3)
    with pytest.raises(ParseError, match="reference_answer"):
        parse_hard_queries(json.dumps({"hard_queries": [{**QUERY, "reference_answer": ""}]}), 1)
    # the DataFlow shape still reads, as one question without a reference answer
    legacy = json.dumps({"hard_query": {"question": QUERY["question"], "scenario": QUERY["scenario"]}})
    assert parse_hard_queries(legacy, 1)[0]["reference_answer"] is None


def test_queries_per_doc_below_one_is_refused(tmp_path):
    from rare.pipeline.build import build_steps

    with pytest.raises(ConfigError, match="queries_per_doc must be at least 1"):
        build_steps(compose_config(tmp_path, "steps.doc2query.queries_per_doc=0").steps)
