"""executor.streaming: rows flow through the steps after the last barrier as soon as they are ready."""

import json
import signal
import threading
import time

import pytest
from conftest import (
    compose_config,
    look_alike_documents,
    read_jsonl,
    request_keys,
    server_overrides,
    sharing_processes,
    write_corpus,
)
from test_resume import read_jsonl_complete, start_rare, wait_for_rows

from rare.pipeline.runner import run

STEP_FILES = ("dataset.jsonl", "rare_doc2query.jsonl", "rare_bm25_hardneg.jsonl", "rare_reason_distill.jsonl")


def streaming_config(tmp_path, server, corpus, *extra):
    return compose_config(
        tmp_path, *server_overrides(server), f"data.input={corpus}", "executor.streaming=true", *extra
    )


def test_a_row_reaches_the_last_step_while_another_is_still_in_the_first(tmp_path, server, small_corpus):
    rows = read_jsonl(small_corpus)
    held = rows[5]["id"]
    server.configure(delay_prompt_keys={request_keys(tmp_path, "doc2query", rows)[held]: 6.0})
    cfg = streaming_config(tmp_path, server, small_corpus)
    run_dir = tmp_path / "run"
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("manifest", run(cfg)))
    runner.start()
    seen_while_held = []
    while runner.is_alive():
        last = (
            read_jsonl_complete(run_dir / "rare_reason_distill.partial.jsonl")
            if (run_dir / "rare_reason_distill.partial.jsonl").exists()
            else []
        )
        first = run_dir / "rare_doc2query.partial.jsonl"
        first_ids = {row["id"] for row in read_jsonl_complete(first)} if first.exists() else set()
        if last and held not in first_ids:
            seen_while_held = [row["id"] for row in last]
            break
        time.sleep(0.05)
    runner.join(timeout=60)
    assert seen_while_held, "no row reached reason_distill while the held row was still in doc2query"
    assert held not in seen_while_held
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    assert sorted(row["id"] for row in dataset) == sorted(row["id"] for row in rows)  # the held row finished too
    manifest = outcome["manifest"]
    assert [s["rows_out"] for s in manifest["steps"]] == [12, 12, 12]
    assert manifest["steps"][0]["wall_s"] >= 6.0  # from its first row to its last, the held one


def test_step_files_and_dataset_are_the_same_bytes_streaming_or_not(tmp_path, server, small_corpus):
    outputs = {}
    for streaming in ("false", "true"):
        cfg = compose_config(
            tmp_path / streaming,
            *server_overrides(server),
            f"data.input={small_corpus}",
            f"executor.streaming={streaming}",
        )
        run(cfg)
        outputs[streaming] = [(tmp_path / streaming / "run" / name).read_bytes() for name in STEP_FILES]
    assert outputs["true"] == outputs["false"]


def test_kill_9_in_the_stream_then_resume_asks_nothing_finished_again(tmp_path, server):
    corpus = write_corpus(tmp_path / "corpus.jsonl", look_alike_documents())
    run_dir = tmp_path / "run"
    server.configure(latency_s=0.25)
    process = start_rare(run_dir, server, corpus, "executor.streaming=true")
    wait_for_rows(run_dir / "rare_reason_distill.partial.jsonl", 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished = {
        step: read_jsonl_complete(run_dir / f"rare_{step}.partial.jsonl") for step in ("doc2query", "reason_distill")
    }
    assert len(finished["doc2query"]) < 12, "doc2query had finished: the kill was not in the middle of the stream"

    resumed = start_rare(run_dir, server, corpus, "executor.streaming=true", f"resume={run_dir}")
    output, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, output
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    assert sorted(row["id"] for row in dataset) == sorted(d["id"] for d in look_alike_documents())
    counts = server.stats()["prompt_keys"]
    for step, rows in finished.items():
        for row_id, key in request_keys(tmp_path, step, rows).items():
            assert counts[key] == 1, f"{step}: row {row_id} finished before the kill but was asked again"


def test_a_failed_row_stops_in_its_step_and_the_others_finish(tmp_path, server, small_corpus):
    rows = read_jsonl(small_corpus)
    doomed = rows[0]["id"]
    server.configure(fail_prompt_keys={request_keys(tmp_path, "doc2query", rows[:1])[doomed]: "500"})
    manifest = run(streaming_config(tmp_path, server, small_corpus, "llm.max_retries=1", "llm.backoff_s=0.01"))
    run_dir = tmp_path / "run"
    failed = read_jsonl(run_dir / "failed.jsonl")
    assert [(f["step"], f["id"]) for f in failed] == [("doc2query", doomed)]
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    assert sorted(row["id"] for row in dataset) == sorted(row["id"] for row in rows[1:])
    assert [(s["rows_in"], s["rows_out"], s["failed"]) for s in manifest["steps"]] == [
        (12, 11, 1),
        (11, 11, 0),
        (11, 11, 0),
    ]
    pool = {i for row in dataset for i in row["hard_negative_ids"]}
    assert doomed in pool  # the pool is the documents: one whose question failed is still a negative


def test_doc_filter_is_a_barrier_before_the_stream_and_the_bytes_stay_the_same(tmp_path, server, caplog):
    documents = look_alike_documents()
    documents.append({"id": "copy", "text": documents[0]["text"].upper()})  # an exact duplicate: filtered
    corpus = write_corpus(tmp_path / "corpus.jsonl", documents)
    outputs = {}
    for streaming in ("false", "true"):
        cfg = compose_config(
            tmp_path / streaming,
            *server_overrides(server),
            f"data.input={corpus}",
            "+steps=doc_filter",
            f"executor.streaming={streaming}",
        )
        with caplog.at_level("INFO", logger="rare"):
            manifest = run(cfg)
        assert [s["name"] for s in manifest["steps"]] == ["doc_filter", "doc2query", "bm25_hardneg", "reason_distill"]
        assert manifest["steps"][0]["filtered"] == 1
        outputs[streaming] = [
            (tmp_path / streaming / "run" / name).read_bytes() for name in (*STEP_FILES, "rare_doc_filter.jsonl")
        ]
    assert outputs["true"] == outputs["false"]
    assert b'"copy"' not in outputs["true"][0]
    assert "streaming doc2query, bm25_hardneg, reason_distill in one process" in caplog.text


def many_documents(n: int = 450) -> list[dict]:
    """Enough rows for two processes (a worker pays for itself from 200 rows on)."""
    return [
        {"id": f"doc-{i}", "text": f"Document {i} on renal dosing of drug {i % 17}, clearance {i} and age {i % 90}."}
        for i in range(n)
    ]


def all_shards(run_dir, step: str) -> list[dict]:
    """The complete rows of a step's journal and of every worker's shard of it."""
    return [row for path in sorted(run_dir.glob(f"rare_{step}.partial*.jsonl")) for row in read_jsonl_complete(path)]


def test_a_stream_over_two_processes_writes_the_same_bytes_and_asks_each_row_once(tmp_path, server, caplog):
    corpus = write_corpus(tmp_path / "corpus.jsonl", many_documents())
    common = [*server_overrides(server), f"data.input={corpus}", "llm.cache=false"]
    run(compose_config(tmp_path / "steps", *common, "executor.workers=1"))
    server.reset()
    server.configure(latency_s=0.2)  # slow enough that the worker is up long before the parent is done
    with caplog.at_level("INFO", logger="rare"):
        manifest = run(
            compose_config(
                tmp_path / "stream", *common, "executor.streaming=true", "executor.workers=2", "llm.concurrency=8"
            )
        )
    assert "streaming doc2query, bm25_hardneg, reason_distill over 2 " in caplog.text
    assert server.stats()["total_requests"] == 900  # each row asked once in each LLM step, none skipped
    for step in (manifest["steps"][0], manifest["steps"][2]):
        by_process = step["usage"]["rows_by_process"]
        assert set(by_process) == sharing_processes(2) and min(by_process.values()) > 0
        assert sum(by_process.values()) == 450
        assert step["usage"]["calls"] == 450 and step["rows_out"] == 450
    for name in STEP_FILES:
        assert (tmp_path / "stream" / "run" / name).read_bytes() == (tmp_path / "steps" / "run" / name).read_bytes()
    assert not list((tmp_path / "stream" / "run").glob("*.partial*.jsonl"))


def test_kill_9_in_a_stream_over_two_processes_then_resume_asks_nothing_finished_again(tmp_path, server):
    documents = many_documents()
    corpus = write_corpus(tmp_path / "corpus.jsonl", documents)
    run_dir = tmp_path / "run"
    server.configure(latency_s=0.25)
    flags = ("executor.streaming=true", "executor.workers=2", "llm.concurrency=8")
    process = start_rare(run_dir, server, corpus, *flags)
    wait_for_rows(run_dir / "rare_reason_distill.partial*.jsonl", 10, process)  # any process's shard
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(1.5)  # a worker ends within a second of the run's process, by itself
    sizes = {path: path.stat().st_size for path in run_dir.glob("*.partial*.jsonl")}
    time.sleep(1.0)
    assert sizes == {path: path.stat().st_size for path in run_dir.glob("*.partial*.jsonl")}, "a worker outlived rare"
    finished = {step: all_shards(run_dir, step) for step in ("doc2query", "reason_distill")}
    assert len(finished["doc2query"]) < len(documents), "doc2query had finished: the kill came too late"
    assert list(run_dir.glob("rare_doc2query.partial-w*.jsonl")), "the worker wrote nothing before the kill"

    resumed = start_rare(run_dir, server, corpus, *flags, f"resume={run_dir}")
    output, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, output
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    assert sorted(row["id"] for row in dataset) == sorted(d["id"] for d in documents)
    counts = server.stats()["prompt_keys"]
    for step, rows in finished.items():
        for row_id, key in request_keys(tmp_path, step, rows).items():
            assert counts[key] == 1, f"{step}: row {row_id} finished before the kill but was asked again"


def test_a_dead_teacher_trips_its_own_breaker_and_the_resume_keeps_every_question(tmp_path, server, small_corpus):
    """Two providers in one stream: the teacher's breaker stops the run; the questions written by then
    are kept, and the resume asks none of them again."""
    from test_faults import FAST_RETRIES

    from rare.pipeline.circuit_breaker import ProviderDown
    from rare.testing.openai_server import serve

    with serve() as teacher:
        teacher.configure(faults={"503": 1.0})
        overrides = [
            f"+teacher.api_base={teacher.url}",
            "llm.concurrency=2",
            "circuit_breaker.window=4",
            *FAST_RETRIES,
        ]
        with pytest.raises(ProviderDown, match="step 'reason_distill'"):
            run(streaming_config(tmp_path, server, small_corpus, *overrides))
        run_dir = tmp_path / "run"
        assert json.loads((run_dir / "manifest.json").read_text())["status"].startswith("aborted")
        written = read_jsonl_complete(run_dir / "rare_doc2query.partial.jsonl")
        assert written, "no question was kept"

        teacher.configure(faults={})
        manifest = run(streaming_config(tmp_path, server, small_corpus, *overrides, "retry_failed=true"))
    assert manifest["failures"] == 0 and len(read_jsonl(run_dir / "dataset.jsonl")) == 12
    counts = server.stats()["prompt_keys"]
    assert all(counts[key] == 1 for key in request_keys(tmp_path, "doc2query", written).values())


def test_on_ray_streaming_is_on_when_asked_and_starts_nothing_until_the_stream(caplog):
    ray = pytest.importorskip("ray")
    from rare.executors.ray.executor import RayExecutor

    with caplog.at_level("WARNING"):
        assert RayExecutor(streaming=True).streams() and not RayExecutor().streams()
    assert not ray.is_initialized()  # Ray is joined when the first step (or the stream) runs
    assert "one after the other" not in caplog.text


@pytest.mark.parametrize("streaming", ["true", "false"])
def test_a_run_stopped_at_its_budget_reports_what_each_unfinished_step_spent(tmp_path, server, small_corpus, streaming):
    """The manifest of a stopped run says what was spent, step by step: nothing paid for goes unreported."""
    from rare.errors import RunAborted

    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={small_corpus}",
        f"executor.streaming={streaming}",
        "llm.cache=false",
        "llm.concurrency=2",
        "llm.price={input_per_mtok:1000,output_per_mtok:0}",
        "llm.max_cost_usd=1.5",
    )
    with pytest.raises(RunAborted, match="max_cost_usd"):
        run(cfg)

    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"].startswith("aborted")
    unfinished = [step for step in manifest["steps"] if not step["finished"]]
    assert unfinished and all(not step["output"] for step in unfinished)  # no step file: it did not end
    assert sum(step["usage"].get("calls", 0) for step in manifest["steps"]) == server.stats()["total_requests"]
    assert sum(step["usage"].get("cost_usd", 0) for step in manifest["steps"]) >= 1.5  # it stops once spent
    doc2query = next(step for step in manifest["steps"] if step["name"] == "doc2query")
    journal = tmp_path / "run" / "rare_doc2query.partial.jsonl"
    if not doc2query["finished"]:
        assert doc2query["rows_out"] == len(read_jsonl_complete(journal)) > 0
