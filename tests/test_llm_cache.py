"""The response cache: real runs against the local server, counted on the server side."""

import json
import multiprocessing
import pickle
import sqlite3

import pytest

from conftest import compose_config, look_alike_documents, read_jsonl, server_overrides, write_corpus

from rare.llm.cache import ResponseCache
from rare.runner import run

DOC2QUERY_ONLY = ("steps.bm25_hardneg=null", "steps.reason_distill=null")


def chat_requests(server) -> int:
    return server.stats()["endpoints"].get("POST /v1/chat/completions", 0)


def run_in(base, server, corpus, cache_dir, *extra):
    cfg = compose_config(base, *server_overrides(server), f"data.input={corpus}", f"cache_dir={cache_dir}", *extra)
    return run(cfg)


def test_a_second_identical_run_asks_nothing_and_gives_the_same_dataset(tmp_path, server, small_corpus):
    shared = tmp_path / "shared-cache"
    first = run_in(tmp_path / "a", server, small_corpus, shared, "retriever=bm25s")
    asked = chat_requests(server)
    assert asked >= 24  # doc2query + reason_distill

    second = run_in(tmp_path / "b", server, small_corpus, shared, "retriever=bm25s")
    assert chat_requests(server) == asked, "the identical run reached the server"
    assert read_jsonl(tmp_path / "a" / "run" / "dataset.jsonl") == read_jsonl(tmp_path / "b" / "run" / "dataset.jsonl")
    for before, after in zip(first["steps"], second["steps"]):
        if before["name"] == "bm25_hardneg":
            continue
        assert after["usage"]["calls"] == 0
        assert after["usage"]["cached_calls"] == before["usage"]["calls"]
        assert after["usage"]["cost_usd"] == 0
        assert after["usage"]["saved_usd"] > 0 and abs(after["usage"]["saved_usd"] - before["usage"]["cost_usd"]) < 1e-9
        assert after["usage"]["prompt_tokens"] == before["usage"]["prompt_tokens"]


def test_changing_one_document_asks_only_its_request(tmp_path, server):
    documents = look_alike_documents()
    corpus = write_corpus(tmp_path / "corpus.jsonl", documents)
    shared = tmp_path / "shared-cache"
    run_in(tmp_path / "a", server, corpus, shared, *DOC2QUERY_ONLY)
    assert chat_requests(server) == 12

    documents[5] = {**documents[5], "text": documents[5]["text"] + " Updated with a new paragraph."}
    changed = write_corpus(tmp_path / "changed.jsonl", documents)
    manifest = run_in(tmp_path / "b", server, changed, shared, *DOC2QUERY_ONLY)
    assert chat_requests(server) == 13
    usage = manifest["steps"][0]["usage"]
    assert (usage["calls"], usage["cached_calls"]) == (1, 11)


def test_cache_false_always_asks(tmp_path, server, small_corpus):
    shared = tmp_path / "shared-cache"
    run_in(tmp_path / "a", server, small_corpus, shared, "llm.cache=false", *DOC2QUERY_ONLY)
    run_in(tmp_path / "b", server, small_corpus, shared, "llm.cache=false", *DOC2QUERY_ONLY)
    assert chat_requests(server) == 24
    assert not (shared / "llm_cache.sqlite").exists()


def test_readonly_cache_reads_but_never_writes(tmp_path, server):
    documents = look_alike_documents()
    shared = tmp_path / "shared-cache"
    run_in(tmp_path / "a", server, write_corpus(tmp_path / "first.jsonl", documents[:6]), shared, *DOC2QUERY_ONLY)
    assert chat_requests(server) == 6
    stored = len(ResponseCache(shared / "llm_cache.sqlite"))
    assert stored == 6

    everything = write_corpus(tmp_path / "all.jsonl", documents)
    readonly = ("llm.cache_mode=readonly", *DOC2QUERY_ONLY)
    manifest = run_in(tmp_path / "b", server, everything, shared, *readonly)
    assert chat_requests(server) == 12  # 6 cached, 6 asked
    assert (manifest["steps"][0]["usage"]["cached_calls"], manifest["steps"][0]["usage"]["calls"]) == (6, 6)
    run_in(tmp_path / "c", server, everything, shared, *readonly)
    assert chat_requests(server) == 18  # the 6 new answers were not stored
    assert len(ResponseCache(shared / "llm_cache.sqlite")) == stored

    missing = tmp_path / "no-cache-yet"
    run_in(tmp_path / "d", server, everything, missing, *readonly)
    assert not (missing / "llm_cache.sqlite").exists()


def _write_many(path: str, cache_blob: bytes, worker: int, count: int) -> None:
    cache = pickle.loads(cache_blob)  # as a worker process receives it
    for n in range(count):
        cache.put(f"shared-{n}", {"text": f"from {worker}", "n": n})
        cache.put(f"own-{worker}-{n}", {"text": "x" * 200, "n": n})
        assert cache.get(f"own-{worker}-{n}")["n"] == n
    cache.close()  # writes what it still keeps in memory


@pytest.mark.parametrize("write_every", [1, 64])  # each answer at once (claims on), or in batches
def test_two_processes_writing_at_once_do_not_corrupt_it(tmp_path, write_every):
    path = tmp_path / "cache" / "llm_cache.sqlite"
    cache = ResponseCache(path, write_every=write_every)
    cache.put("before", {"text": "kept"})
    blob = pickle.dumps(cache)  # the open connection is not part of it
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_many, args=(str(path), blob, w, 400)) for w in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0]

    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(cache) == 1 + 400 + 2 * 400
    assert cache.get("before") == {"text": "kept"}
    assert json.dumps(cache.get("shared-7")) in (json.dumps({"text": f"from {w}", "n": 7}) for w in range(2))


def test_a_used_client_pickles_for_a_worker_process(tmp_path, server):
    import asyncio

    from hydra.utils import instantiate

    cfg = compose_config(tmp_path, *server_overrides(server))
    client = instantiate(cfg.llm, _convert_="all")
    question = [{"role": "user", "content": "what is a hard negative?"}]
    first = asyncio.run(client.complete(question))
    copy = pickle.loads(pickle.dumps(client))  # as a spawned worker receives it: no connection, no loop state
    again = asyncio.run(copy.complete(question))
    assert again.text == first.text
    assert (copy.usage.calls, copy.usage.cached_calls) == (1, 1)
    assert chat_requests(server) == 1
