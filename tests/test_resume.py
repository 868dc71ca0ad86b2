"""Never lose paid work: kill -9 mid-step, resume, and nothing finished is asked again."""

import os
import signal
import subprocess
import time

import pytest
from conftest import (
    TEST_KEY,
    compose_config,
    look_alike_documents,
    read_jsonl,
    request_keys,
    server_overrides,
    write_corpus,
)
from omegaconf import OmegaConf

from rare.pipeline.runner import run


def start_rare(run_dir, server, corpus, *extra):
    env = {**os.environ, "OPENAI_API_KEY": TEST_KEY}
    args = ["rare", "llm=openai", f"llm.api_base={server.url}", f"data.input={corpus}", f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(
        [*args, f"cache_dir={run_dir.parent / 'cache'}", "llm.concurrency=2", *extra],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_rows(path, count, process, timeout_s=90):
    """Wait until the journal `path` (a glob pattern: all the files it matches) holds `count` rows."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if sum(each.read_text().count("\n") for each in path.parent.glob(path.name)) >= count:
            return
        if process.poll() is not None:
            pytest.fail(f"rare exited early ({process.returncode}): {process.stdout.read()}")
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"{path} never reached {count} rows")


@pytest.mark.parametrize(
    "step,journal",
    [("doc2query", "rare_doc2query.partial.jsonl"), ("reason_distill", "rare_reason_distill.partial.jsonl")],
)
def test_kill_9_then_resume_loses_nothing_and_resends_nothing_finished(tmp_path, server, step, journal):
    corpus = write_corpus(tmp_path / "corpus.jsonl", look_alike_documents())
    run_dir = tmp_path / "run"
    server.configure(latency_s=0.25)
    process = start_rare(run_dir, server, corpus)
    wait_for_rows(run_dir / journal, 3, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    with open(run_dir / journal, "ab") as handle:
        handle.write(b'{"id": "torn')  # as if the kill landed mid-write
    finished = [row for row in read_jsonl_complete(run_dir / journal)]
    assert finished, "the kill came too late to test anything"

    resumed = start_rare(run_dir, server, corpus, f"resume={run_dir}")
    output, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, output

    dataset = read_jsonl(run_dir / "dataset.jsonl")
    assert sorted(row["id"] for row in dataset) == sorted(d["id"] for d in look_alike_documents())
    counts = server.stats()["prompt_keys"]
    for row_id, key in request_keys(tmp_path, step, finished).items():
        assert counts[key] == 1, f"row {row_id} finished before the kill but was asked again"


def read_jsonl_complete(path):
    import json

    rows = []
    for line in path.read_bytes().split(b"\n")[:-1]:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def test_identical_reruns_are_byte_identical(tmp_path, server, small_corpus):
    outputs = []
    for name in ("first", "second"):
        cfg = compose_config(tmp_path / name, *server_overrides(server), f"data.input={small_corpus}")
        run(cfg)
        run_dir = tmp_path / name / "run"
        outputs.append(
            [(run_dir / f).read_bytes() for f in ("dataset.jsonl", "rare_doc2query.jsonl", "rare_reason_distill.jsonl")]
        )
    assert outputs[0] == outputs[1]


def test_a_run_dir_with_numbered_step_files_resumes_with_them(tmp_path, server, small_corpus):
    """A run dir of a rare from before step names (`rare_step3.jsonl`, no `storage.naming`) resumes
    with its own files: nothing finished is redone, nothing is written under the new names."""
    overrides = (*server_overrides(server), f"data.input={small_corpus}")
    run(compose_config(tmp_path, *overrides, "storage.naming=numbered"))
    run_dir = tmp_path / "run"
    saved = OmegaConf.load(run_dir / "config.yaml")
    del saved.storage["naming"]  # as an older rare saved it
    OmegaConf.save(saved, run_dir / "config.yaml")
    dataset = (run_dir / "dataset.jsonl").read_bytes()
    (run_dir / "rare_step3.jsonl").unlink()  # reason_distill's output: that step runs again
    manifest = run(compose_config(tmp_path, *overrides))  # today's default naming
    assert [step["rows_out"] for step in manifest["steps"]] == [12, 12, 12]
    assert manifest["steps"][0]["usage"]["calls"] == 0  # doc2query's rows were all finished
    assert (run_dir / "rare_step3.jsonl").exists() and (run_dir / "dataset.jsonl").read_bytes() == dataset
    assert not list(run_dir.glob("rare_doc2query*")) and not list(run_dir.glob("rare_input*"))


def test_resume_with_a_changed_config_is_refused_with_the_diff(tmp_path, server, small_corpus):
    run_dir = tmp_path / "run"
    first = start_rare(run_dir, server, small_corpus)
    assert first.wait(timeout=180) == 0, first.stdout.read()
    changed = start_rare(run_dir, server, small_corpus, f"resume={run_dir}", "seed=5")
    output, _ = changed.communicate(timeout=120)
    assert changed.returncode == 2
    assert "run with another config" in output and "-seed: 0" in output and "+seed: 5" in output
    forced = start_rare(run_dir, server, small_corpus, f"resume={run_dir}", "seed=5", "resume_force=true")
    assert forced.wait(timeout=180) == 0


def test_failed_rows_are_kept_and_only_they_are_retried(tmp_path, server, small_corpus):
    rows = read_jsonl(small_corpus)
    doomed = request_keys(tmp_path, "doc2query", rows[:1])[rows[0]["id"]]
    server.configure(fail_prompt_keys={doomed: "500"})
    cfg = compose_config(
        tmp_path, *server_overrides(server), f"data.input={small_corpus}", "llm.max_retries=1", "llm.backoff_s=0.01"
    )
    manifest = run(cfg)
    assert manifest["failures"] == 1
    failed = read_jsonl(tmp_path / "run" / "failed.jsonl")
    assert [(f["step"], f["id"]) for f in failed] == [("doc2query", rows[0]["id"])]
    assert "500" in failed[0]["reason"] or "InternalServerError" in failed[0]["reason"]

    asked = server.stats()["total_requests"]
    run(
        compose_config(
            tmp_path, *server_overrides(server), f"data.input={small_corpus}", "llm.max_retries=1", "llm.backoff_s=0.01"
        )
    )
    assert server.stats()["total_requests"] == asked  # a plain resume does not re-ask failed rows

    server.configure(fail_prompt_keys={})
    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={small_corpus}",
        "llm.max_retries=1",
        "llm.backoff_s=0.01",
        "retry_failed=true",
    )
    manifest = run(cfg)
    assert manifest["failures"] == 0
    assert read_jsonl(tmp_path / "run" / "failed.jsonl") == []
    assert len(read_jsonl(tmp_path / "run" / "dataset.jsonl")) == 12
    assert server.stats()["total_requests"] - asked == 2  # that one row: doc2query, then reason_distill


def test_a_run_saved_with_another_process_count_resumes(tmp_path):
    """How many processes ask (llm.workers, executor.workers) changes no answer: a run dir saved
    with the old `llm.workers: 1` of llm=local resumes under `workers: null`; a new seed does not."""
    import pytest
    from omegaconf import OmegaConf

    from rare.errors import ConfigError
    from rare.rundir.resume import check_same_config

    def config(workers, seed=0) -> dict:
        llm = {"_target_": "rare.llm.client.LLMClient", "model": "openai/m", "workers": workers}
        return {"seed": seed, "llm": llm, "steps": {"doc2query": {"llm": dict(llm)}}, "executor": {"workers": workers}}

    saved = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create(config(1)), saved)
    check_same_config(saved, config(None), force=False)
    with pytest.raises(ConfigError, match=r"run with another config"):
        check_same_config(saved, config(None, seed=5), force=False)
