"""Batch mode through litellm's files/batches API against the local server: submit, poll, resume."""

import _thread
import json
import threading
import time

import pytest
from conftest import compose_config, look_alike_documents, read_jsonl, server_overrides, write_corpus

from rare.pipeline.build import build_steps
from rare.pipeline.runner import run
from rare.testing.responder import prompt_key

# litellm's file/batch helpers leave an internal coroutine un-awaited (in its logging path, also
# when nothing is cancelled); no request is lost or repeated, so the warning is noise here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:coroutine 'OpenAI.*' was never awaited:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

BATCH = (
    "llm.mode=batch",
    "llm.batch.max_wait_s=0.2",
    "llm.batch.poll_s=0.2",
    "steps.bm25_hardneg=null",
    "steps.reason_distill=null",
)


def endpoints(server) -> dict:
    return server.stats()["endpoints"]


def batch_records(run_dir) -> list[dict]:
    path = run_dir / "batches.jsonl"
    return read_jsonl(path) if path.exists() else []


def test_batch_mode_submits_polls_and_completes(tmp_path, server, small_corpus):
    server.configure(batch_delay_s=0.5)
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}", *BATCH)
    manifest = run(cfg)

    run_dir = tmp_path / "run"
    rows = read_jsonl(run_dir / "dataset.jsonl")
    assert len(rows) == 12 and all(row["question"] and row["scenario"] for row in rows)
    calls = endpoints(server)
    assert calls.get("POST /v1/files") == 1 and calls.get("POST /v1/batches") == 1
    assert calls.get("GET /v1/batches/{batch_id}", 0) >= 1
    assert "POST /v1/chat/completions" not in calls  # nothing went online
    submitted, finished = batch_records(run_dir)
    assert submitted["event"] == "submitted" and len(submitted["custom_ids"]) == 12
    assert finished == {**finished, "event": "finished", "batch_id": submitted["batch_id"], "status": "completed"}
    usage = manifest["steps"][0]["usage"]
    assert usage["calls"] == 12 and usage["cost_usd"] > 0

    online = run(
        compose_config(
            tmp_path / "online", *server_overrides(server), f"data.input={small_corpus}", *BATCH[3:], "llm.cache=false"
        )
    )
    assert usage["cost_usd"] == pytest.approx(online["steps"][0]["usage"]["cost_usd"] / 2, rel=0.01)  # batch price

    again = run(
        compose_config(
            tmp_path / "again",
            *server_overrides(server),
            f"data.input={small_corpus}",
            f"cache_dir={tmp_path / 'cache'}",
            *BATCH,
        )
    )
    assert again["steps"][0]["usage"]["cached_calls"] == 12
    assert endpoints(server).get("POST /v1/files") == 1  # answered from the cache: no new batch


def test_a_failed_batch_line_fails_only_its_row(tmp_path, server, small_corpus):
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}", *BATCH)
    doc2query = dict(build_steps(cfg.steps))["doc2query"]
    bad = look_alike_documents()[4]
    server.configure(batch_delay_s=0.2, fail_prompt_keys={prompt_key(doc2query.messages(bad)): "500"})
    try:
        run(cfg)
    finally:
        server.configure(fail_prompt_keys={})  # the `server` fixture does not clear these

    rows = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    assert sorted(row["id"] for row in rows) == sorted(d["id"] for d in look_alike_documents() if d["id"] != bad["id"])
    (failure,) = read_jsonl(tmp_path / "run" / "failed.jsonl")
    assert failure["id"] == bad["id"] and "batch request failed (status 500)" in failure["reason"]


def test_a_restart_resumes_polling_the_recorded_batch_instead_of_submitting_again(tmp_path, server):
    corpus = write_corpus(tmp_path / "corpus.jsonl", look_alike_documents())
    server.configure(batch_delay_s=3600.0)  # the batch cannot finish before the interrupt, however slow the machine
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={corpus}", *BATCH)
    run_dir = tmp_path / "run"

    def interrupt_once_submitted() -> None:  # Ctrl-C as soon as the batch id is on disk
        deadline = time.time() + 30
        while not batch_records(run_dir) and time.time() < deadline:
            time.sleep(0.02)
        _thread.interrupt_main()

    watcher = threading.Thread(target=interrupt_once_submitted, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    watcher.join()
    (submitted,) = batch_records(run_dir)
    assert not (run_dir / "dataset.jsonl").exists()
    assert endpoints(server).get("POST /v1/batches") == 1

    assert server.finish_batches() == 1  # the provider finishes the batch while rare is stopped
    manifest = run(compose_config(tmp_path, *server_overrides(server), f"data.input={corpus}", *BATCH))
    assert manifest["status"] == "completed" and len(read_jsonl(run_dir / "dataset.jsonl")) == 12
    calls = endpoints(server)
    assert calls.get("POST /v1/files") == 1 and calls.get("POST /v1/batches") == 1  # no second upload
    assert [r["event"] for r in batch_records(run_dir)] == ["submitted", "finished"]
    assert batch_records(run_dir)[1]["batch_id"] == submitted["batch_id"]
    assert json.loads((run_dir / "manifest.json").read_text())["steps"][0]["usage"]["calls"] == 12
