"""Faults at the provider: every row ends done or in failed.jsonl with its reason, none lost or doubled."""

import json
from collections import Counter

import pytest
from conftest import compose_config, read_jsonl, server_overrides, write_corpus

from rare.pipeline.circuit_breaker import ProviderDown
from rare.pipeline.runner import run
from rare.testing.faults import RETRYABLE_FAULTS, fault_outcomes

FAST_RETRIES = ["llm.max_retries=6", "llm.backoff_s=0.01", "llm.backoff_max_s=0.05", "llm.timeout_s=1.0"]
DOC2QUERY_ONLY = ("steps.bm25_hardneg=null", "steps.reason_distill=null")


def corpus_of(tmp_path, n):
    words = "risk dose renal clearance contract breach liability bond yield duration inventory cost".split()
    documents = [
        {"id": f"r{i}", "text": " ".join(words[(i + j) % len(words)] for j in range(8)) + f" item{i}"} for i in range(n)
    ]
    return write_corpus(tmp_path / "corpus.jsonl", documents)


def run_with_faults(tmp_path, server, n: int, share: float, *extra) -> tuple[dict, list, list]:
    """A 3-step run over `n` rows with `share` of all requests faulty (every retryable kind alike);
    checks that no row is lost or doubled; returns the manifest, the dataset and the failures."""
    rates = {fault: share / len(RETRYABLE_FAULTS) for fault in RETRYABLE_FAULTS}
    server.configure(faults=rates, retry_after_s=0.01, timeout_sleep_s=2.0, trickle_s=0.2, seed=7)
    corpus = corpus_of(tmp_path, n)
    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={corpus}",
        "llm.concurrency=64",
        "llm.cache=false",
        *FAST_RETRIES,
        *extra,
    )
    manifest = run(cfg)
    run_dir = tmp_path / "run"
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    failed = read_jsonl(run_dir / "failed.jsonl") if (run_dir / "failed.jsonl").exists() else []
    assert all(f["reason"] and f["kind"] for f in failed)
    assert len({row["id"] for row in dataset}) == len(dataset)  # none duplicated
    for step in manifest["steps"]:
        ids = [row["id"] for row in read_jsonl(run_dir / step["output"]["path"])]
        assert len(ids) == len(set(ids))
    assert max(Counter(f["id"] for f in failed).values(), default=1) == 1  # a row fails at most once, in one step
    assert len(dataset) + len(failed) == n  # none lost
    assert manifest["failures"] == len(failed)
    return manifest, dataset, failed


@pytest.mark.parametrize("share, most_failed", [(0.3, 0), (0.5, 0.01)])
def test_faults_a_retry_survives_cost_time_not_rows(tmp_path, server, share, most_failed):
    """Every kind of fault a fresh attempt survives (13 kinds) is retried within the run, in every
    LLM step (benchmarks/faults.py does the same with 1,000 rows)."""
    n = 300
    manifest, dataset, failed = run_with_faults(tmp_path, server, n, share)
    assert len(failed) <= most_failed * n, failed
    outcomes = fault_outcomes(server.stats()["recent"])
    assert set(outcomes) == RETRYABLE_FAULTS  # the faults really happened
    given_up = 0  # a fault left as a prompt's last answer: its row must be in failed.jsonl
    for fault, outcome in outcomes.items():
        if fault not in ("trickle", "malformed_json", "truncated_json"):  # slow but fine; plain text to reason_distill
            assert outcome["retried"] + outcome["kept"] == outcome["injected"], (fault, outcome)
            given_up += outcome["kept"]
    assert given_up <= len(failed), outcomes
    for step in (s for s in manifest["steps"] if s["name"] != "bm25_hardneg"):
        usage = step["usage"]
        assert usage["retries"] == sum(usage["retried"].values()) > 0  # the retry count is in the manifest
        assert usage["failed_calls"] > 0 and usage["failed_cost_usd"] > 0  # billed unusable answers count
        assert usage["failed_tokens"] <= usage["prompt_tokens"] + usage["completion_tokens"]
    print(json.dumps({"done": len(dataset), "failed": len(failed), "outcomes": outcomes}))


def test_an_unusable_answer_is_asked_again_and_never_cached(tmp_path, server, small_corpus):
    cfg = (*server_overrides(server), f"data.input={small_corpus}", f"cache_dir={tmp_path / 'cache'}", *DOC2QUERY_ONLY)
    server.configure(script=["empty", "truncated_json", "length", "malformed_json"])  # the first four answers
    manifest = run(compose_config(tmp_path / "a", *cfg))
    assert manifest["failures"] == 0
    usage = manifest["steps"][0]["usage"]
    assert usage["failed_calls"] == 4 and usage["retried"] == {"empty": 1, "unusable": 2, "length": 1}
    asked = server.stats()["endpoints"]["POST /v1/chat/completions"]
    assert asked == 12 + 4

    again = run(compose_config(tmp_path / "b", *cfg))  # the same cache: only the good answers were stored
    assert server.stats()["endpoints"]["POST /v1/chat/completions"] == asked
    assert again["steps"][0]["usage"]["cached_calls"] == 12


def test_what_the_provider_refuses_fails_at_once_with_its_kind(tmp_path, server, small_corpus):
    server.configure(script=["400", "content_filter"])
    overrides = (
        *server_overrides(server),
        f"data.input={small_corpus}",
        "llm.concurrency=1",
        *DOC2QUERY_ONLY,
        *FAST_RETRIES,
    )
    manifest = run(compose_config(tmp_path, *overrides))
    failed = read_jsonl(tmp_path / "run" / "failed.jsonl")
    assert [f["kind"] for f in failed] == ["refused", "refused"]
    assert "content filter" in failed[1]["reason"]
    assert manifest["steps"][0]["usage"]["retries"] == 0
    assert server.stats()["endpoints"]["POST /v1/chat/completions"] == 12


def test_a_dead_provider_trips_the_breaker_and_the_run_resumes_later(tmp_path, server, small_corpus):
    server.configure(faults={"503": 1.0})
    overrides = [
        *server_overrides(server),
        f"data.input={small_corpus}",
        "llm.concurrency=2",
        "circuit_breaker.window=4",
        *FAST_RETRIES,
    ]
    with pytest.raises(ProviderDown, match="rows failed after retries.*rare resume="):
        run(compose_config(tmp_path, *overrides))
    asked = server.stats()["total_requests"]
    assert asked < 12 * 5  # stopped early instead of trying every row

    server.configure(faults={})
    manifest = run(compose_config(tmp_path, *overrides, "retry_failed=true"))
    assert manifest["failures"] == 0
    assert len(read_jsonl(tmp_path / "run" / "dataset.jsonl")) == 12
