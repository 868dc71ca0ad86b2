"""The false-negative judge: an LLM drops negatives that answer the question; through the local
server, real litellm, real Lucene and real Hydra (`preset=judge`), priced by the dry run."""

import pytest
from conftest import compose_config, read_jsonl, server_overrides

from rare.llm.parsing import ParseError
from rare.operators.false_negative_judge import parse_judgement
from rare.pipeline.build import build_steps
from rare.pipeline.graph import run_order
from rare.pipeline.runner import run


def test_parse_judgement_takes_document_numbers_and_refuses_others():
    assert parse_judgement('{"answering": [2, 1, 2], "rationale": "both say it"}', 3) == [1, 2]
    assert parse_judgement('{"answering": [], "rationale": "none does"}', 3) == []
    for bad in (
        '{"answering": [4], "rationale": "x"}',
        '{"answering": "1", "rationale": "x"}',
        '{"answering": [true]}',
    ):
        with pytest.raises(ParseError):
            parse_judgement(bad, 3)


def test_off_by_default_and_runs_between_mining_and_the_teacher(tmp_path):
    assert "false_negative_judge" not in dict(build_steps(compose_config(tmp_path).steps))
    steps = build_steps(compose_config(tmp_path, "preset=judge").steps)
    assert [name for name, _ in run_order(steps)] == [
        "doc2query",
        "bm25_hardneg",
        "false_negative_judge",
        "reason_distill",
    ]


def test_dropped_negatives_are_counted_and_the_teacher_sees_the_rest(tmp_path, server, small_corpus):
    mined = tmp_path / "mined"
    run(compose_config(mined, *server_overrides(server), f"data.input={small_corpus}", "steps.reason_distill=null"))
    before = {row["id"]: row for row in read_jsonl(mined / "run" / "dataset.jsonl")}
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}", "preset=judge")
    manifest = run(cfg)
    rows = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    assert len(rows) == 12
    for row in rows:  # the test server's judge always names document 1
        first = before[row["id"]]
        assert row["hard_negative_ids"] == first["hard_negative_ids"][1:]
        assert row["hard_negatives"] == first["hard_negatives"][1:]
        info = row["hard_negative_info"]
        assert info["dropped"]["judge"] == 1 and info["judged_false_negatives"] == first["hard_negative_ids"][:1]
        assert info["short"] is True and len(info["negatives"]) == 2
        assert 1 <= row["positive_index"] <= 3  # the teacher saw the positive and the two kept negatives
    judge = next(step for step in manifest["steps"] if step["name"] == "false_negative_judge")
    assert judge["usage"]["calls"] == 12
    again = run(
        compose_config(
            tmp_path / "again",
            *server_overrides(server),
            f"data.input={small_corpus}",
            "preset=judge",
            f"cache_dir={tmp_path / 'cache'}",
        )
    )
    cached = next(step for step in again["steps"] if step["name"] == "false_negative_judge")
    assert cached["usage"]["cached_calls"] == 12  # the client's response cache answers a rerun


def test_dry_run_prices_the_judge(tmp_path, small_corpus, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    report = run(compose_config(tmp_path, "llm=openai", "dry_run=true", f"data.input={small_corpus}", "preset=judge"))
    judge = {step["step"]: step for step in report["steps"]}["false_negative_judge"]
    assert judge["calls"] == 12 and judge["prompt_tokens"] > 0 and judge["cost_usd"] > 0
    assert "hard negative 1" in judge["first_prompt"][-1]["content"]
