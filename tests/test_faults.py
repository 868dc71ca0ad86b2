"""Faults at the provider: every row ends done or in failed.jsonl with its reason, none lost or doubled."""

import json
from collections import Counter

import pytest
from conftest import compose_config, read_jsonl, server_overrides, write_corpus

from rare.circuit import ProviderDown
from rare.runner import run
from rare.testing.faults import FAULTS

FAST_RETRIES = ["llm.max_retries=4", "llm.backoff_s=0.01", "llm.backoff_max_s=0.05", "llm.timeout_s=1.5"]


def corpus_of(tmp_path, n):
    words = "risk dose renal clearance contract breach liability bond yield duration inventory cost".split()
    documents = [{"id": f"r{i}", "text": " ".join(words[(i + j) % len(words)] for j in range(8)) + f" item{i}"} for i in range(n)]
    return write_corpus(tmp_path / "corpus.jsonl", documents)


def test_thirty_percent_faults_lose_and_duplicate_nothing(tmp_path, server):
    n = 1000
    corpus = corpus_of(tmp_path, n)
    rates = {fault: 0.3 / len(FAULTS) for fault in FAULTS}
    server.configure(faults=rates, retry_after_s=0.01, timeout_sleep_s=3.0, trickle_s=0.2, seed=7)
    cfg = compose_config(
        tmp_path, *server_overrides(server), f"data.input={corpus}", "llm.concurrency=64", "llm.cache=false", *FAST_RETRIES
    )
    manifest = run(cfg)

    run_dir = tmp_path / "run"
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    failed = read_jsonl(run_dir / "failed.jsonl")
    assert all(f["reason"] for f in failed)
    assert len({row["id"] for row in dataset}) == len(dataset)  # none duplicated
    for step in ("rare_step1", "rare_step2", "rare_step3"):
        ids = [row["id"] for row in read_jsonl(run_dir / f"{step}.jsonl")]
        assert len(ids) == len(set(ids))
    failed_ids = Counter(f["id"] for f in failed)
    assert max(failed_ids.values(), default=1) == 1  # a row fails at most once, in one step
    assert len(dataset) + len(failed) == n  # none lost
    assert manifest["failures"] == len(failed)
    injected = Counter(r["fault"] for r in server.stats()["recent"] if r["fault"])
    assert len(injected) >= 10, injected  # the faults really happened
    print(json.dumps({"done": len(dataset), "failed": len(failed), "injected": dict(injected)}))


def test_a_dead_provider_trips_the_breaker_and_the_run_resumes_later(tmp_path, server, small_corpus):
    server.configure(faults={"503": 1.0})
    overrides = [*server_overrides(server), f"data.input={small_corpus}", "llm.concurrency=2", "circuit_breaker.window=4", *FAST_RETRIES]
    with pytest.raises(ProviderDown, match="rows failed after retries.*rare resume="):
        run(compose_config(tmp_path, *overrides))
    asked = server.stats()["total_requests"]
    assert asked < 12 * 5  # stopped early instead of trying every row

    server.configure(faults={})
    manifest = run(compose_config(tmp_path, *overrides, "retry_failed=true"))
    assert manifest["failures"] == 0
    assert len(read_jsonl(tmp_path / "run" / "dataset.jsonl")) == 12
