"""`rare dry_run=true`: estimates without a key, without calls, without an index."""

import json

import pytest
from conftest import compose_config

from rare.pipeline.runner import run


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_dry_run_needs_no_key_and_makes_no_calls(tmp_path, server, small_corpus, no_key, capsys):
    cfg = compose_config(tmp_path, "llm=openai", "dry_run=true", f"data.input={small_corpus}")
    assert cfg.llm.api_key is None
    report = run(cfg)

    assert server.stats()["total_requests"] == 0
    run_dir = tmp_path / "run"
    assert json.loads((run_dir / "dry_run.json").read_text()) == report
    assert not (run_dir / "manifest.json").exists() and not list(run_dir.glob("rare_step*"))
    assert not (tmp_path / "cache").exists()  # no retriever index was built, no response cached

    steps = {step["step"]: step for step in report["steps"]}
    doc2query, bm25, distill = steps["doc2query"], steps["bm25_hardneg"], steps["reason_distill"]
    assert report["input"]["rows"] == 12
    assert doc2query["calls"] == 12 and distill["calls"] == 12 and bm25["calls"] == 0
    assert doc2query["completion_tokens"] == 12 * 2048  # params.max_tokens
    assert 100 < doc2query["prompt_tokens_per_call"] < 2000
    assert distill["prompt_tokens_per_call"] > doc2query["prompt_tokens_per_call"]  # 4 documents, not 1
    assert doc2query["cost_usd"] > 0 and distill["cost_usd"] > 0  # gpt-4o from litellm's offline price table
    assert report["total"]["cost_usd"] == pytest.approx(doc2query["cost_usd"] + distill["cost_usd"], rel=1e-3)

    first_distill_prompt = distill["first_prompt"][1]["content"]
    assert "[DRY-RUN PLACEHOLDER: question" in first_distill_prompt
    assert "[DRY-RUN PLACEHOLDER: hard negative 3" in first_distill_prompt
    assert "warfarin" in doc2query["first_prompt"][1]["content"]  # the real first document

    printed = capsys.readouterr().err
    assert "rare dry run" in printed and "doc2query" in printed and "first prompt" in printed


def test_dry_run_counts_the_rows_the_run_would_have(tmp_path, small_corpus, no_key):
    """data.limit cuts the input; queries_per_doc multiplies the rows of every later step."""
    cfg = compose_config(
        tmp_path,
        "llm=openai",
        "dry_run=true",
        f"data.input={small_corpus}",
        "data.limit=5",
        "steps.doc2query.queries_per_doc=3",
    )
    report = run(cfg)
    assert report["input"]["rows"] == 5
    assert [step["calls"] for step in report["steps"]] == [5, 0, 15]


def test_dry_run_prices_batch_mode_and_expected_output(tmp_path, small_corpus, no_key):
    online = run(
        compose_config(
            tmp_path / "a", "llm=openai", "dry_run=true", f"data.input={small_corpus}", "llm.expected_output_tokens=300"
        )
    )
    batch = run(
        compose_config(
            tmp_path / "b",
            "llm=openai",
            "dry_run=true",
            f"data.input={small_corpus}",
            "llm.expected_output_tokens=300",
            "llm.mode=batch",
        )
    )
    assert online["steps"][0]["completion_tokens"] == 12 * 300
    assert batch["total"]["cost_usd"] == pytest.approx(online["total"]["cost_usd"] / 2, rel=1e-3)

    unpriced = run(
        compose_config(
            tmp_path / "c", "llm=openai", "dry_run=true", f"data.input={small_corpus}", "llm.model=openai/my-own-model"
        )
    )
    assert unpriced["total"]["cost_usd"] is None
    free = run(
        compose_config(
            tmp_path / "d",
            "llm=openai",
            "dry_run=true",
            f"data.input={small_corpus}",
            "llm.model=openai/my-own-model",
            "llm.price={input_per_mtok:0,output_per_mtok:0}",
        )
    )
    assert free["total"]["cost_usd"] == 0
