"""Row steps spread over worker processes: every row is asked once, whoever asks it."""

import multiprocessing

import pytest
from conftest import compose_config, read_jsonl, server_overrides, sharing_processes, write_corpus
from hypothesis import given, settings
from hypothesis import strategies as st

from rare.executors.local.executor import workers_for
from rare.executors.local.workers import CHUNK_ROWS, ChunkClaims, prestart_workers
from rare.pipeline.build import build_steps
from rare.pipeline.runner import run


@settings(max_examples=200, deadline=None)
@given(
    rows=st.integers(min_value=0, max_value=5 * CHUNK_ROWS + 7),
    schedule=st.lists(st.integers(min_value=0, max_value=2), max_size=600),
)
def test_readers_claiming_chunks_in_any_interleaving_take_every_row_exactly_once(rows, schedule):
    claims = ChunkClaims(multiprocessing.get_context("spawn"), 3)
    readers = [claims.rows(({"id": str(i)} for i in range(rows)), slot) for slot in range(3)]
    taken: list[str] = []
    alive = set(range(3))
    for turn in [*schedule, *([0, 1, 2] * (rows + 2))]:  # a random start, then everyone reads to the end
        if turn in alive:
            row = next(readers[turn], None)
            if row is None:
                alive.discard(turn)
            else:
                taken.append(row["id"])
    assert sorted(taken, key=int) == [str(i) for i in range(rows)]
    assert (
        claims.idle_after_stop(rows)
        == [slot for slot in range(3) if not any(int(row_id) // CHUNK_ROWS == claims.first[slot] for row_id in taken)]
        or rows == 0
    )


def test_a_process_that_comes_after_the_input_was_read_to_the_end_reads_none_of_it():
    """The parent takes what the workers left: once one of them has read the whole input, the parent
    does not parse a million rows to find nothing."""
    claims = ChunkClaims(multiprocessing.get_context("spawn"), 2)
    worker = list(claims.rows(({"id": str(i)} for i in range(3 * CHUNK_ROWS + 1)), 1))
    assert len(worker) == 3 * CHUNK_ROWS + 1

    def unread():
        raise AssertionError("the input was read again")
        yield

    assert list(claims.rows(unread(), 0)) == []


def test_a_worker_that_took_no_chunk_is_idle_and_one_that_did_is_not():
    claims = ChunkClaims(multiprocessing.get_context("spawn"), 3)
    parent = claims.rows(({"id": str(i)} for i in range(2 * CHUNK_ROWS)), 0)
    worker = claims.rows(({"id": str(i)} for i in range(2 * CHUNK_ROWS)), 1)
    assert next(parent)["id"] == "0" and next(worker)["id"] == str(CHUNK_ROWS)  # the worker took chunk 1
    assert claims.idle_after_stop(2 * CHUNK_ROWS) == [2]  # slot 2 never started
    assert [row["id"] for row in parent][-1] == str(CHUNK_ROWS - 1)  # nothing more is handed out


def test_two_worker_processes_give_the_same_step_file_and_ask_each_row_once(tmp_path, server):
    documents = [
        {"id": f"doc-{i}", "text": f"Document {i} on renal dosing of drug {i % 17} and clearance {i}."}
        for i in range(450)
    ]
    corpus = write_corpus(tmp_path / "docs.jsonl", documents)
    only_doc2query = ["steps.bm25_hardneg=null", "steps.reason_distill=null", "llm.cache=false", f"data.input={corpus}"]

    one = run(compose_config(tmp_path / "one", *server_overrides(server), *only_doc2query, "executor.workers=1"))
    server.reset()
    server.configure(latency_s=0.3)  # slow enough that the worker is up before the parent is done
    two = run(
        compose_config(
            tmp_path / "two", *server_overrides(server), *only_doc2query, "executor.workers=2", "llm.concurrency=8"
        )
    )

    assert server.stats()["total_requests"] == 450  # no row asked twice, none skipped
    assert two["steps"][0]["usage"]["calls"] == 450  # every process's calls, merged
    assert two["steps"][0]["rows_out"] == 450
    by_process = two["steps"][0]["usage"]["rows_by_process"]
    assert set(by_process) == sharing_processes(2) and min(by_process.values()) > 0
    assert sum(by_process.values()) == 450
    assert read_jsonl(tmp_path / "two" / "run" / "rare_doc2query.jsonl") == read_jsonl(
        tmp_path / "one" / "run" / "rare_doc2query.jsonl"
    )
    assert not list((tmp_path / "two" / "run").glob("*.partial*.jsonl"))
    assert one["steps"][0]["usage"]["calls"] == 450


def test_the_worker_server_starts_only_for_runs_that_may_shard(tmp_path):
    big = write_corpus(tmp_path / "big.jsonl", [{"id": f"d{i}", "text": f"Document {i}."} for i in range(400)])
    small = write_corpus(tmp_path / "small.jsonl", [{"id": f"d{i}", "text": f"Document {i}."} for i in range(399)])

    def starts(corpus, *overrides: str) -> bool:
        return prestart_workers(compose_config(tmp_path, f"data.input={corpus}", *overrides))

    assert not starts(big, "llm=openai", "executor.workers=1")
    assert not starts(big, "llm=openai", "executor.workers=2", "data.limit=10")  # a prompt trial: too few rows to shard
    assert not starts(small, "llm=openai", "executor.workers=2")  # the same, told by the file's first 400 lines
    assert not starts(big, "llm=openai", "llm.workers=2", "executor=ray")  # Ray runs its own actors
    assert not starts(big)  # the embedded model: one process
    assert not starts(big, "llm=openai", "llm.rpm=600")  # a rate-limited step runs in one process
    assert starts(big, "llm=openai", "executor.workers=2")
    assert starts(big, "llm=openai", "llm.workers=2")  # the deprecated key still counts


def test_workers_see_the_environment_of_the_run_not_of_the_worker_server_start(tmp_path, server, monkeypatch):
    """The key the run reads from its environment reaches the workers, even when it was set after
    the forkserver the workers come from had started (a notebook, a test)."""
    only_doc2query = ["steps.bm25_hardneg=null", "steps.reason_distill=null", "llm.cache=false"]
    corpus = write_corpus(
        tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": f"Clearance {i} of drug {i % 13}."} for i in range(450)]
    )
    overrides = [
        "llm=openai",
        f"llm.api_base={server.url}",
        "llm.api_key=null",
        "llm.api_key_env=RARE_TEST_WORKER_KEY",
        f"data.input={corpus}",
        "executor.workers=2",
        "llm.concurrency=8",
        *only_doc2query,
    ]
    assert prestart_workers(compose_config(tmp_path, *overrides))  # started before the key is set
    monkeypatch.setenv("RARE_TEST_WORKER_KEY", "key-set-after-the-start")
    server.configure(latency_s=0.3, require_api_key="key-set-after-the-start")

    manifest = run(compose_config(tmp_path, *overrides))

    step = manifest["steps"][0]
    assert step["failed"] == 0 and step["rows_out"] == 450
    assert step["usage"]["rows_by_process"]["1"] > 0  # a worker asked, with the key


def test_worker_processes_spend_from_one_budget_and_stop_together(tmp_path, server):
    """Each process's calls count against the same max_cost_usd: the run stops after about the
    budget's worth of calls, not one budget's worth per process."""
    from rare.errors import RunAborted

    documents = [{"id": f"d{i}", "text": f"Clearance {i} of drug {i % 13}."} for i in range(450)]  # prompts of one size
    corpus = write_corpus(tmp_path / "docs.jsonl", documents)
    overrides = [
        *server_overrides(server),
        f"data.input={corpus}",
        "llm.cache=false",
        "llm.price={input_per_mtok:1000,output_per_mtok:0}",
        "steps.bm25_hardneg=null",
        "steps.reason_distill=null",
    ]
    probe = run(compose_config(tmp_path / "probe", *overrides, "data.limit=1"))
    per_call = probe["steps"][0]["usage"]["cost_usd"]
    server.reset()
    server.configure(latency_s=0.3)  # slow enough that the worker (its server still importing) joins in

    sharded = [*overrides, "executor.workers=2", "llm.concurrency=2", f"llm.max_cost_usd={80 * per_call}"]
    prestart_workers(compose_config(tmp_path, *sharded))
    try:
        run(compose_config(tmp_path, *sharded))
    except RunAborted as stop:
        assert "max_cost_usd" in str(stop)
    else:
        raise AssertionError("the run did not stop at its budget")

    shards = sorted((tmp_path / "run").glob("rare_doc2query.partial-w*.jsonl"))
    assert shards and all(read_jsonl(shard) for shard in shards)  # the worker asked rows too
    assert 80 <= server.stats()["total_requests"] <= 80 + 2 * 2  # one budget; calls already in flight may finish


def test_the_processes_of_a_step_are_an_executor_setting_and_the_old_llm_key_still_works(tmp_path):
    def doc2query(*overrides: str):
        return dict(build_steps(compose_config(tmp_path, "llm=openai", *overrides).steps))["doc2query"]

    rows = 10_000  # enough that starting workers pays
    assert workers_for(doc2query(), rows, 3) == 3  # executor.workers=3
    assert workers_for(doc2query("llm.rpm=600"), rows) == 1  # rate-limited: one process paces best
    assert workers_for(doc2query("llm.rpm=600"), rows, 2) == 2  # unless asked for more
    assert workers_for(doc2query(), 3 * 200, 3) == 3 and workers_for(doc2query(), 399, 3) == 1  # 200 rows a worker
    with pytest.warns(FutureWarning, match=r"llm.workers=2 is deprecated: set executor.workers=2 instead"):
        old = doc2query("llm.workers=2")
    assert workers_for(old, rows) == 2 and workers_for(old, rows, 4) == 4  # executor.workers wins
    assert workers_for(dict(build_steps(compose_config(tmp_path).steps))["doc2query"], rows) == 1  # the embedded model
