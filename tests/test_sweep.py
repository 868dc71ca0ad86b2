"""`rare -m` sweeps through the real CLI: one run dir per combination, and steps shared by
combinations (doc2query when only the teacher changes) asked once, counted on the server."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import TEST_KEY, read_jsonl

import rare

PROJECT_ROOT = Path(rare.__file__).resolve().parents[1]
ROWS = 12  # the small corpus
# Two question styles x two teachers: doc2query depends on the prompts only, the teacher on both.
SWEEP = ("prompts=rare,rare_case", "teacher.model=openai/teacher-a,openai/teacher-b")


def rare_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run `rare ARGS` in a fresh process on this checkout's code, as the `rare` script does
    (importing rare.cli: the joblib launcher pickles the task by reference, not from __main__)."""
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    command = [sys.executable, "-c", "from rare.cli import main; main()", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def sweep(tmp_path: Path, server, corpus: Path, *extra: str, choices: tuple[str, ...] = SWEEP) -> Path:
    """A sweep over `choices` (default the 2x2) against the test server; returns its multirun dir."""
    sweep_dir = tmp_path / "multirun"
    done = rare_cli(
        "-m",
        *choices,
        "llm=openai",
        f"llm.api_base={server.url}",
        f"llm.api_key={TEST_KEY}",
        f"data.input={corpus}",
        f"cache_dir={tmp_path / 'cache'}",
        "retriever=bm25s",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep_dir


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / "manifest.json").exists()), key=lambda p: int(p.name))


def manifests(sweep_dir: Path) -> list[dict]:
    return [json.loads((run / "manifest.json").read_text()) for run in run_dirs(sweep_dir)]


def chosen(manifest: dict) -> dict:
    """The run's command-line overrides as {key: value}."""
    return dict(o.split("=", 1) for o in manifest["overrides"])


def distinct_requests(sweep_dir: Path) -> int:
    """What the sweep needs asked, from its datasets: one question per (prompt variant, document),
    one reasoning per (teacher, what the teacher is shown)."""
    questions, reasonings = set(), set()
    for run, manifest in zip(run_dirs(sweep_dir), manifests(sweep_dir)):
        overrides = chosen(manifest)
        for row in read_jsonl(run / "dataset.jsonl"):
            questions.add((overrides["prompts"], row["id"]))
            shown = (row["id"], row["question"], row["scenario"], row["positive_index"], *row["hard_negatives"])
            reasonings.add((overrides["teacher.model"], shown))
    return len(questions) + len(reasonings)


def assert_each_request_sent_once(server, sweep_dir: Path) -> None:
    records = [(r["model"], r["prompt_key"]) for r in server.stats()["recent"]]
    duplicates = [request for request, count in Counter(records).items() if count > 1]
    assert not duplicates, f"{len(duplicates)} requests were sent more than once"
    assert len(records) == distinct_requests(sweep_dir)


def test_a_2x2_sweep_runs_each_combination_and_asks_shared_steps_once(tmp_path, server, small_corpus):
    sweep_dir = sweep(tmp_path, server, small_corpus)

    runs = manifests(sweep_dir)
    assert len(runs) == 4 and all(m["status"] == "completed" for m in runs)
    assert sorted((chosen(m)["prompts"], chosen(m)["teacher.model"]) for m in runs) == [
        (p, f"openai/teacher-{t}") for p in ("rare", "rare_case") for t in "ab"
    ]
    assert all(len(read_jsonl(run / "dataset.jsonl")) == ROWS for run in run_dirs(sweep_dir))
    assert_each_request_sent_once(server, sweep_dir)
    # the questions are written by llm (gpt-4o) in every run, each teacher answers in its own runs
    models = Counter(r["model"] for r in server.stats()["recent"])
    assert models["gpt-4o"] == 2 * ROWS and models["teacher-a"] == models["teacher-b"] >= ROWS
    # the second teacher of each prompt variant found every question in the cache
    doc2query = [next(s for s in m["steps"] if s["name"] == "doc2query")["usage"] for m in runs]
    assert sorted((u["calls"], u["cached_calls"]) for u in doc2query) == [(0, ROWS), (0, ROWS), (ROWS, 0), (ROWS, 0)]


def test_a_parallel_joblib_sweep_sends_no_request_twice(tmp_path, server, small_corpus):
    """The joblib launcher runs combinations at once: claims on requests in flight (rare/llm/inflight.py)
    keep two runs from sending the same request."""
    server.configure(latency_s=0.5)  # slow answers: the two parallel runs ask doc2query's questions at the same time
    joblib = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "llm.concurrency=2")
    sweep_dir = sweep(tmp_path, server, small_corpus, *joblib)
    runs = manifests(sweep_dir)
    assert len(runs) == 4 and all(m["status"] == "completed" for m in runs)
    assert_each_request_sent_once(server, sweep_dir)
