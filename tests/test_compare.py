"""`rare compare` on a real sweep run through the CLI against the test server."""

import json

import pytest
from conftest import read_jsonl
from test_sweep import rare_cli, sweep

from rare.tools.compare import compare, differing_keys, main


@pytest.fixture
def swept(tmp_path, server, small_corpus):
    """A two-run sweep over the prompt variants, every step on (so rows carry `verified`)."""
    return sweep(tmp_path, server, small_corpus, "preset=full", choices=("prompts=rare,rare_case",))


def test_compare_shows_each_run_with_what_differs_and_its_numbers(swept, capsys, monkeypatch):
    runs = compare(swept)
    assert [run.name for run in runs] == ["0", "1"]
    assert differing_keys(runs) == ["prompts"]  # llm, data, ... are the same in both
    assert [run.overrides["prompts"] for run in runs] == ["rare", "rare_case"]
    for run in runs:
        manifest = json.loads((swept / run.name / "manifest.json").read_text())
        rows = read_jsonl(swept / run.name / "dataset.jsonl")
        assert run.status == "completed" and run.rows == len(rows) == manifest["dataset"]["rows"]
        assert run.failures == manifest["failures"]
        usages = [s["usage"] for s in manifest["steps"] if s["usage"]]
        assert run.tokens == sum(u["prompt_tokens"] + u["completion_tokens"] for u in usages) > 0
        assert run.cost_usd == pytest.approx(sum(u["cost_usd"] for u in usages))
        assert run.mean_reasoning_chars == pytest.approx(sum(len(r["reasoning"]) for r in rows) / len(rows))
        assert run.verified_rate == pytest.approx(sum(r["verified"] for r in rows) / len(rows))

    monkeypatch.setenv("COLUMNS", "200")
    assert main([str(swept)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if "prompts" in line)
    for column in ("run", "prompts", "rows out", "failures", "tokens", "cost $", "reasoning chars", "verified"):
        assert column in header
    assert "rare_case" in out and "llm" not in header


def test_compare_without_runs_says_what_to_pass(tmp_path):
    (tmp_path / "empty").mkdir()
    done = rare_cli("compare", str(tmp_path / "empty"), cwd=tmp_path)
    assert done.returncode == 2
    assert "holds no rare runs" in done.stderr and "outputs/multirun/" in done.stderr
    done = rare_cli("compare", str(tmp_path / "missing"), cwd=tmp_path)
    assert done.returncode == 2 and "is not a folder" in done.stderr
