"""In-flight claims: processes sharing a response cache send each request once, and a dead or
stuck claimer never blocks the others. Real processes, real SQLite, real HTTP to the test server.

The child processes skip litellm (its import alone takes seconds per process on a busy machine)
and post to the server with urllib: what is tested here is the claim, not the client.
"""

import asyncio
import json
import multiprocessing
import os
import signal
import time
import urllib.request

import pytest

from rare.llm.cache import ResponseCache, request_key
from rare.llm.inflight import InflightClaims

SPAWN = multiprocessing.get_context("spawn")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def post_chat(url: str, question: str) -> str:
    body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": question}]}).encode()
    request = urllib.request.Request(f"{url}/chat/completions", body, {"Content-Type": "application/json"})
    with _OPENER.open(request, timeout=30) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


async def ask(url: str, db, key: str, question: str) -> str:
    """What a client does with a claim: cache, else claim, else wait for the claimer's answer."""
    cache, claims = ResponseCache(db, write_every=1), InflightClaims(db)  # as the client sets it with claims on
    stored = cache.get(key)
    if stored is None:
        async with claims.claimed(key, lambda: cache.get(key)) as stored:
            if stored is None:
                stored = {"text": await asyncio.to_thread(post_chat, url, question)}
                cache.put(key, stored)
    return stored["text"]


def ask_all(url: str, db, questions: list[str], start, results) -> None:
    """Wait for the other processes, then ask every question at once."""

    async def main():
        answers = await asyncio.gather(*(ask(url, db, request_key({"q": q}), q) for q in questions))
        results.put(dict(zip(questions, answers)))

    start.wait()
    asyncio.run(main())


def hold_claim(db, key: str, seconds: float, answer: str | None, ready) -> None:
    """Claim `key`, signal, hold it `seconds`, then store `answer` (None: release without one)."""

    async def main():
        cache = ResponseCache(db, write_every=1)
        async with InflightClaims(db).claimed(key, lambda: cache.get(key)) as stored:
            assert stored is None
            ready.set()
            await asyncio.sleep(seconds)
            if answer is not None:
                cache.put(key, {"text": answer})

    asyncio.run(main())


def chat_requests(server) -> int:
    return server.stats()["endpoints"].get("POST /v1/chat/completions", 0)


def test_processes_racing_for_the_same_requests_send_each_once(tmp_path, server):
    server.configure(latency_s=0.5)  # every request is still in flight when the others ask
    db = tmp_path / "cache.sqlite"
    questions = [f"Explain topic number {n} in detail." for n in range(5)]
    results, start = SPAWN.Queue(), SPAWN.Barrier(3)
    workers = [SPAWN.Process(target=ask_all, args=(server.url, db, questions, start, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    answers = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    assert chat_requests(server) == len(questions)
    assert answers[0] == answers[1] == answers[2] and all(answers[0].values())


def test_a_waiter_gets_the_claimers_answer_without_asking(tmp_path):
    db, key = tmp_path / "cache.sqlite", "k1"
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=hold_claim, args=(db, key, 0.5, "the answer", ready))
    holder.start()
    assert ready.wait(30)
    cache = ResponseCache(db)

    async def wait():
        async with InflightClaims(db).claimed(key, lambda: cache.get(key)) as stored:
            return stored

    assert asyncio.run(wait()) == {"text": "the answer"}
    holder.join(timeout=10)


def test_a_claim_released_without_an_answer_passes_to_a_waiter(tmp_path):
    db, key = tmp_path / "cache.sqlite", "k2"
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=hold_claim, args=(db, key, 0.3, None, ready))  # its request failed
    holder.start()
    assert ready.wait(30)
    claims = InflightClaims(db)

    async def wait():
        async with claims.claimed(key, lambda: None) as stored:
            assert stored is None
            return claims.try_claim(key)  # the key is ours while the block runs

    assert asyncio.run(wait()) is None
    assert claims.try_claim(key) is not None  # and released after it
    holder.join(timeout=10)


@pytest.mark.parametrize("how", ["killed", "stuck"])
def test_a_dead_or_stuck_claimer_is_taken_over(tmp_path, how):
    db, key = tmp_path / "cache.sqlite", "k3"
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=hold_claim, args=(db, key, 120, "never stored", ready))
    holder.start()
    assert ready.wait(30)
    if how == "killed":
        os.kill(holder.pid, signal.SIGKILL)  # kill -9: the claim row stays behind
        holder.join(timeout=10)
    claims = InflightClaims(db, stale_after_s=120 if how == "killed" else 0.5)

    async def wait():
        async with claims.claimed(key, lambda: None) as stored:
            return stored

    started = time.monotonic()
    try:
        assert asyncio.run(asyncio.wait_for(wait(), 10)) is None
        assert time.monotonic() - started < 5
    finally:
        holder.kill()
        holder.join(timeout=10)
