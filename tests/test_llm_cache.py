"""The response cache: real runs against the local server, counted on the server side."""

import json
import multiprocessing
import pickle
import sqlite3

import pytest
from conftest import compose_config, look_alike_documents, read_jsonl, server_overrides, write_corpus

from rare.llm.cache import ResponseCache
from rare.pipeline.runner import run

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


def _documents(n: int) -> list[dict]:
    words = "risk dose renal clearance contract breach liability bond yield duration inventory cost".split()
    return [
        {"id": f"d{i}", "text": " ".join(words[(i + j) % len(words)] for j in range(8)) + f" item{i}"} for i in range(n)
    ]


def test_a_raised_cap_asks_only_the_cut_answers(tmp_path, server):
    """max_tokens too small for 20% of the answers, then twice as big: only the cut rows are asked again."""
    n = 50
    corpus = write_corpus(tmp_path / "corpus.jsonl", _documents(n))
    server.configure(long_answer_share=0.2, long_answer_words=200)  # ~50-word answers, a fifth ~250 words
    shared = tmp_path / "shared-cache"
    first = run_in(tmp_path / "a", server, corpus, shared, "llm.params.max_tokens=150", *DOC2QUERY_ONLY)
    failed = read_jsonl(tmp_path / "a" / "run" / "failed.jsonl")
    cut = len(failed)
    assert 0.1 * n <= cut <= 0.3 * n
    assert all(f["kind"] == "length" and "llm.params.max_tokens (now 150)" in f["reason"] for f in failed)
    assert chat_requests(server) == n + cut  # a cut at the cap is asked once more, then it is the cap's fault
    assert first["steps"][0]["usage"]["failed_calls"] == 2 * cut

    server.reset()
    second = run_in(tmp_path / "b", server, corpus, shared, "llm.params.max_tokens=300", *DOC2QUERY_ONLY)
    assert chat_requests(server) == cut  # the answers that had finished under 150 tokens answer under 300 too
    assert second["failures"] == 0
    assert (second["steps"][0]["usage"]["cached_calls"], second["steps"][0]["usage"]["calls"]) == (n - cut, cut)
    print(
        json.dumps(
            {"rows": n, "cut_at_150": cut, "first_run_requests": n + cut, "second_run_requests": chat_requests(server)}
        )
    )


def test_retry_failed_by_kind_and_by_step(tmp_path, server):
    corpus = write_corpus(tmp_path / "corpus.jsonl", _documents(30))
    server.configure(long_answer_share=0.2, long_answer_words=200)
    base = (*server_overrides(server), f"data.input={corpus}", *DOC2QUERY_ONLY)
    run(compose_config(tmp_path, *base, "llm.params.max_tokens=150"))
    cut = len(read_jsonl(tmp_path / "run" / "failed.jsonl"))
    assert cut

    server.reset()
    with pytest.raises(Exception, match="neither a step of this run"):
        run(compose_config(tmp_path, *base, "llm.params.max_tokens=150", "retry_failed=nonsense"))
    run(compose_config(tmp_path, *base, "llm.params.max_tokens=150", "retry_failed=empty"))
    assert chat_requests(server) == 0  # no row failed empty
    run(
        compose_config(
            tmp_path, *base, "llm.params.max_tokens=300", "resume_force=true", "retry_failed=[doc2query,length]"
        )
    )
    assert chat_requests(server) == cut  # only the cut rows
    assert read_jsonl(tmp_path / "run" / "failed.jsonl") == []
    assert len(read_jsonl(tmp_path / "run" / "dataset.jsonl")) == 30


def test_which_stored_answer_answers_which_cap():
    from rare.llm.content import answers_under

    finished = {"finish_reason": "stop", "completion_tokens": 120, "max_tokens": 200}
    cut = {"finish_reason": "length", "completion_tokens": 200, "max_tokens": 200}
    assert answers_under(finished, 200) and answers_under(finished, 400) and answers_under(finished, None)
    assert answers_under(finished, 150)  # still longer than the answer: the cap never came into play
    assert not answers_under(finished, 100)  # it would have been cut
    assert answers_under(cut, 200) and not answers_under(cut, 400) and not answers_under(cut, None)


def test_answers_stored_under_the_old_keys_are_still_found(tmp_path, server):
    """Before cache keys left the cap out, the key was the whole request: those answers still count."""
    import asyncio

    from hydra.utils import instantiate

    from rare.llm.cache import request_key

    client = instantiate(compose_config(tmp_path, *server_overrides(server)).llm, _convert_="all")
    question = [{"role": "user", "content": "an old question"}]
    old_key = request_key({**client.request_kwargs(question), "endpoint": client.endpoint()})
    old_answer = {"text": "the old answer", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": 3}
    client.cache.put_many([(old_key, {**old_answer, "cost_usd": 0.1})])  # in the file, as the old rare left it
    assert asyncio.run(client.complete(question)).text == "the old answer"
    assert chat_requests(server) == 0


def test_a_cache_with_no_old_keys_is_marked_and_an_old_one_is_not(tmp_path):
    """Misses skip the old-key lookup only where no old answer can be: a file this rare wrote, once checked."""
    new = ResponseCache(tmp_path / "new.sqlite")
    new.put_many([("k", {"text": "a", "finish_reason": "stop", "max_tokens": 100})])
    assert not new.holds_old_keys()

    old = ResponseCache(tmp_path / "old.sqlite")
    old.put_many([("k", {"text": "a", "finish_reason": "stop"}), ("j", {"text": "b", "max_tokens": None})])
    assert old.holds_old_keys()
    assert ResponseCache(tmp_path / "old.sqlite").holds_old_keys()  # never marked: checked again next time
    assert not ResponseCache(tmp_path / "none.sqlite", "readonly").holds_old_keys()  # no file, no answers
