"""Rate limits, 429 slow-down and the run budget, against the local server through real litellm."""

import asyncio
import threading
import time

import pytest
from conftest import compose_config, read_jsonl, server_overrides
from hydra.utils import instantiate

from rare.llm.budget import BudgetExceeded, run_spend
from rare.llm.rate_limit import HEADROOM, reset_shared_limiters
from rare.llm.run_scope import start_run
from rare.pipeline.runner import run

DOC2QUERY_ONLY = ("steps.bm25_hardneg=null", "steps.reason_distill=null")


def chat_requests(server) -> int:
    return server.stats()["endpoints"].get("POST /v1/chat/completions", 0)


def client_from_config(tmp_path, server, *overrides):
    start_run()
    cfg = compose_config(tmp_path, *server_overrides(server), "llm.cache=false", *overrides)
    return instantiate(cfg.llm, _convert_="all")


async def ask_many(client, count: int, server, sample_at: float) -> tuple[float, int, list]:
    """Ask `count` different questions at once.

    Returns the seconds taken, the server's request count at `sample_at`, and the limiter's
    allowed rate sampled every 50 ms.
    """
    started = time.monotonic()
    rates = []

    async def ask(n: int):
        return await client.complete([{"role": "user", "content": f"question number {n}"}])

    async def sample() -> int:
        await asyncio.sleep(sample_at)
        return await asyncio.to_thread(chat_requests, server)

    async def watch() -> None:
        while True:
            rates.append(client._limiter().request_rate)
            await asyncio.sleep(0.05)

    seen, watcher = asyncio.create_task(sample()), asyncio.create_task(watch())
    answers = await asyncio.gather(*(ask(n) for n in range(count)))
    watcher.cancel()
    assert all(a.text for a in answers)
    return time.monotonic() - started, await seen, rates


def test_429_pauses_for_retry_after_and_slows_down(tmp_path, server):
    client = client_from_config(tmp_path, server, "llm.concurrency=8")  # no rpm ceiling: only 429s slow it
    asyncio.run(client.complete([{"role": "user", "content": "warm up litellm"}]))
    reset_shared_limiters()
    server.reset()
    # 50 ms per answer; every other one of the next 12 requests is refused with Retry-After: 0.6
    server.configure(latency_s=0.05, retry_after_s=0.6, script=["ok", "429"] * 6)
    elapsed, seen_early, rates = asyncio.run(ask_many(client, 60, server, sample_at=0.4))

    limiter = client._limiter()
    assert limiter.rate_limited == 6 and client.usage.calls == 61 and client.usage.retries == 6
    # the first 8 go out, 4 are refused at ~50 ms, then nothing until the pause ends at ~0.65 s
    # (unpaused, 8 in flight at 50 ms each would have sent ~60 by 0.4 s)
    assert 4 <= seen_early <= 16, f"{seen_early} requests by 0.4 s: none may go out during the Retry-After pause"
    learned = [rate for rate in rates if rate is not None]
    assert limiter.cuts >= 1 and learned and min(learned) < 160 / 2  # a rate limit was learned, below what it sent
    assert limiter.cuts < limiter.rate_limited  # one cut answers many 429s
    assert 1.0 < elapsed < 30, elapsed  # it neither stormed (pauses honoured) nor stalled


def test_rate_recovers_after_successes(tmp_path, server):
    client = client_from_config(tmp_path, server, "llm.rpm=6000")
    limiter = client._limiter()
    limiter.on_rate_limited(time.monotonic(), None)
    cut = limiter.request_rate
    assert cut == pytest.approx(50.0 * HEADROOM)
    for _ in range(30):
        limiter._last_growth -= 1.0  # as if a second passed between successes
        limiter.on_success()
    assert limiter.request_rate == pytest.approx(
        100.0 * HEADROOM
    )  # back at the ceiling (less the headroom), never above it


def test_rpm_ceiling_is_respected_in_a_run(tmp_path, server, small_corpus):
    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={small_corpus}",
        "llm.rpm=300",
        "llm.concurrency=16",
        *DOC2QUERY_ONLY,
    )  # 5 requests/s after a burst of 5
    counts = []
    worker = threading.Thread(target=run, args=(cfg,))
    started = time.monotonic()
    worker.start()
    while worker.is_alive():
        counts.append((time.monotonic() - started, chat_requests(server)))
        time.sleep(0.1)
    worker.join()
    elapsed = time.monotonic() - started
    assert len(read_jsonl(tmp_path / "run" / "dataset.jsonl")) == 12
    assert elapsed > 1.2  # 12 calls: 5 at once, 7 more at 5/s
    for at, seen in counts:
        assert seen <= 5 + 5 * at + 2, f"{seen} requests after {at:.2f} s"


def test_budget_stops_the_run_and_keeps_finished_rows(tmp_path, server, small_corpus):
    priced = ("llm.price={input_per_mtok:2000,output_per_mtok:0}", "llm.concurrency=1")  # ~$0.5 a call
    base = (*server_overrides(server), f"data.input={small_corpus}", *priced, *DOC2QUERY_ONLY)
    cfg = compose_config(tmp_path, *base, "llm.max_cost_usd=1.2")
    with pytest.raises(BudgetExceeded, match="max_cost_usd=1.2"):
        run(cfg)

    run_dir = tmp_path / "run"
    asked = chat_requests(server)
    finished = read_jsonl(run_dir / "rare_doc2query.partial.jsonl")
    assert 1 <= len(finished) < 12
    assert asked == len(finished)  # every paid answer became a kept row
    assert all(row["question"] for row in finished)
    assert not (run_dir / "dataset.jsonl").exists()
    assert read_jsonl_manifest(run_dir)["status"].startswith("aborted: the budget")

    resumed = run(compose_config(tmp_path, *base, "llm.max_cost_usd=100", "resume_force=true"))
    assert resumed["status"] == "completed"
    assert chat_requests(server) == 12  # the finished rows were not asked again
    assert len(read_jsonl(run_dir / "dataset.jsonl")) == 12


def test_a_client_pickled_for_a_spawned_worker_spends_from_the_same_budget(tmp_path, server, monkeypatch):
    """What a sharded step's spawned worker does on unpickling its client (checked in-process:
    a real spawn re-imports litellm, which takes longer than this whole file)."""
    import rare.llm.client as client_module

    client = client_from_config(tmp_path, server, "llm.max_cost_usd=1.0")
    parent = run_spend()
    monkeypatch.setattr(client_module, "get_spawning_popen", lambda: object())  # as during Process.start()
    state = client.__getstate__()
    assert state["_run_counter"] is parent.counter

    start_run()  # the worker process: its own, fresh tracker ...
    worker_client = client_module.LLMClient.__new__(client_module.LLMClient)
    worker_client.__setstate__(state)  # ... until the client joins the parent's counter
    run_spend().add(0.75)
    assert parent.spent_usd == 0.75
    parent.add(0.5)
    with pytest.raises(BudgetExceeded):
        asyncio.run(worker_client.complete([{"role": "user", "content": "over budget"}]))
    assert chat_requests(server) == 0


def read_jsonl_manifest(run_dir):
    import json

    return json.loads((run_dir / "manifest.json").read_text())


def test_a_tpm_limit_is_paced_by_measured_completions_not_max_tokens(tmp_path, server):
    """60 calls of ~70 tokens under a 120k tpm limit the server enforces (counting tokens used):
    reserving max_tokens=2048 for each would take about a minute; the measured mean takes ~1-2 s."""
    tpm = 120_000
    client = client_from_config(
        tmp_path, server, f"llm.tpm={tpm}", "llm.tpm_counts=used", "llm.concurrency=8", "llm.params.max_tokens=2048"
    )
    asyncio.run(client.complete([{"role": "user", "content": "warm up litellm"}]))
    reset_shared_limiters()
    server.reset()
    server.configure(tpm=tpm, latency_s=0.02)
    elapsed, _, _ = asyncio.run(ask_many(client, 60, server, sample_at=0.1))
    stats = server.stats()
    mean = client._limiter().estimate.completion_mean
    assert mean is not None and mean < 200  # learned from the answers, far below the cap
    assert elapsed < 8, elapsed
    assert stats["rate_limited"] <= 2, stats["rate_limited"]


def test_rate_headers_hold_new_requests_until_the_provider_has_room():
    from rare.llm.rate_limit import RateLimiter, duration_seconds

    assert (
        duration_seconds("6m0s") == 360
        and duration_seconds("20ms") == pytest.approx(0.02)
        and duration_seconds("1.5") == 1.5
    )
    limiter = RateLimiter()  # no ceiling configured: only the headers say anything
    before = time.monotonic()
    limiter.follow_headers({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "0"}, 0)
    assert 0.9 < limiter.held_until - before < 1.1  # one request's worth at 60 rpm
    limiter.follow_headers({"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "2s"}, 500)
    assert 1.9 < limiter.held_until - before < 2.1  # no limit header: the reset time
    started = time.monotonic()
    asyncio.run(limiter.acquire())
    assert time.monotonic() - started > 1.5
    assert limiter.state()["held"] == 2
