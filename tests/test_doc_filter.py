"""doc_filter: length bounds, exact and near duplicates are removed before any call, recorded
with their reason in dropped.jsonl, counted as filtered (not failed), and never asked about."""

import json

import pytest
from conftest import compose_config, look_alike_documents, read_jsonl, server_overrides, write_corpus

from rare.errors import ConfigError
from rare.pipeline.build import build_steps
from rare.pipeline.runner import run

LONG = " ".join(
    f"clause {n} sets the {word} limit for shipment {n * 7} under tariff code {n * 13}"
    for n, word in enumerate(["import", "export", "transit", "storage", "customs", "excise", "duty", "quota"] * 3)
)
FILTER_ONLY_THEN_DOC2QUERY = [
    "preset=full",
    "steps.bm25_hardneg=null",
    "steps.reason_distill=null",
    "steps.verify=null",
    "export.enabled=false",
    "steps.doc_filter.min_words=5",
    "steps.doc_filter.max_words=400",
    "llm.cache=false",
]


@pytest.fixture
def messy_corpus(tmp_path):
    docs = look_alike_documents()
    docs += [
        {"id": "long", "text": LONG},
        {"id": "stub", "text": "Page 3 of 9."},
        {"id": "copy", "text": "  " + docs[0]["text"].upper().replace(". Related:", " -- related;") + " "},
        {"id": "near", "text": LONG.replace("shipment 35", "consignment 35")},
        {"id": "huge", "text": LONG + " " + LONG.replace("clause", "article")},
    ]
    return write_corpus(tmp_path / "messy.jsonl", docs)


def test_removed_documents_are_recorded_counted_and_never_asked(tmp_path, server, messy_corpus):
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={messy_corpus}", *FILTER_ONLY_THEN_DOC2QUERY)
    manifest = run(cfg)
    run_dir = tmp_path / "run"

    dropped = {record["id"]: record for record in read_jsonl(run_dir / "dropped.jsonl")}
    assert set(dropped) == {"stub", "copy", "near", "huge"}
    assert all(record["step"] == "doc_filter" for record in dropped.values())
    assert dropped["stub"]["reason"].startswith("too_short: 4 words < min_words=5")
    assert dropped["huge"]["reason"].startswith("too_long:")
    assert dropped["copy"]["reason"] == "exact_duplicate: the same words as doc-00"
    assert dropped["near"]["reason"].startswith("near_duplicate:") and "with long" in dropped["near"]["reason"]

    kept = [d["id"] for d in read_jsonl(messy_corpus) if d["id"] not in dropped]
    assert [row["id"] for row in read_jsonl(run_dir / "rare_doc_filter.jsonl")] == kept
    assert [row["id"] for row in read_jsonl(run_dir / "dataset.jsonl")] == kept
    assert server.stats()["total_requests"] == len(kept)  # the question writer never saw a removed one

    doc_filter, doc2query = manifest["steps"]
    assert (doc_filter["rows_in"], doc_filter["rows_out"], doc_filter["filtered"], doc_filter["failed"]) == (
        17,
        13,
        4,
        0,
    )
    assert doc2query["rows_in"] == 13 and doc2query["filtered"] == 0
    assert manifest["failures"] == 0  # a filter's decision is not a failure: the exit code stays 0
    assert not (run_dir / "failed.jsonl").exists() or not (run_dir / "failed.jsonl").read_text().strip()

    # Resuming the finished run asks nothing and records nothing twice.
    server.reset()
    again = run(cfg)
    assert server.stats()["total_requests"] == 0
    assert len(read_jsonl(run_dir / "dropped.jsonl")) == 4 and again["steps"][0]["filtered"] == 4


def test_filter_decisions_are_in_input_order_and_switchable(tmp_path, messy_corpus):
    """Without the LLM steps: only the filter runs; turning a check off keeps what it removed."""
    overrides = [f"data.input={messy_corpus}", *FILTER_ONLY_THEN_DOC2QUERY, "steps.doc2query=null"]
    run(
        compose_config(
            tmp_path,
            *overrides,
            "steps.doc_filter.near_duplicate_threshold=null",
            "steps.doc_filter.exact_duplicates=false",
        )
    )
    dropped = [record["id"] for record in read_jsonl(tmp_path / "run" / "dropped.jsonl")]
    assert dropped == ["stub", "huge"]


@pytest.mark.parametrize(
    "override,message",
    [
        ("steps.doc_filter.max_words=10", "min_words=20 is above max_words=10; no document could pass"),
        ("steps.doc_filter.near_duplicate_threshold=1.5", "near_duplicate_threshold must be in"),
        ("steps.doc_filter.min_chars=-1", "min_chars must be >= 0"),
    ],
)
def test_impossible_settings_are_refused_with_the_cause(tmp_path, override, message):
    cfg = compose_config(tmp_path, "preset=full", override)
    with pytest.raises(ConfigError, match=message):
        build_steps(cfg.steps)


def test_dropped_records_are_json_lines_a_viewer_can_read(tmp_path, messy_corpus):
    overrides = [f"data.input={messy_corpus}", *FILTER_ONLY_THEN_DOC2QUERY, "steps.doc2query=null"]
    run(compose_config(tmp_path, *overrides))
    for line in (tmp_path / "run" / "dropped.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert set(record) == {"step", "id", "reason"}
        assert record["reason"].split(":")[0] in {"too_short", "too_long", "exact_duplicate", "near_duplicate"}
