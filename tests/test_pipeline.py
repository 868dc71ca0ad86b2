"""The whole pipeline, in-process, against the local server through real litellm and real Lucene."""

import json
import os
import subprocess
import sys

import pytest
from conftest import compose_config, read_jsonl, server_overrides

from rare.errors import RareError
from rare.pipeline.runner import run


def test_pipeline_writes_every_field_and_step_file(tmp_path, server, small_corpus):
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}")
    manifest = run(cfg)

    run_dir = tmp_path / "run"
    rows = read_jsonl(run_dir / "dataset.jsonl")
    assert len(rows) == 12
    inputs = {row["id"]: row["text"] for row in read_jsonl(small_corpus)}
    for row in rows:
        assert row["text"] == inputs[row["id"]]
        assert row["question"] and row["scenario"]
        assert len(row["hard_negatives"]) == 3
        assert row["text"] not in row["hard_negatives"]
        assert row["id"] not in row["hard_negative_ids"]
        assert row["hard_negative_scores"] == sorted(row["hard_negative_scores"], reverse=True)
        assert row["reasoning"].strip()
        assert 1 <= row["positive_index"] <= 4
    for step in ("input", "doc2query", "bm25_hardneg", "reason_distill"):
        assert len(read_jsonl(run_dir / f"rare_{step}.jsonl")) == 12
    assert not list(run_dir.glob("*.partial.jsonl"))
    assert [s["name"] for s in manifest["steps"]] == ["doc2query", "bm25_hardneg", "reason_distill"]
    assert [s["rows_out"] for s in manifest["steps"]] == [12, 12, 12]
    assert manifest["steps"][0]["usage"]["calls"] == 12
    assert server.stats()["total_requests"] >= 24
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert saved["status"] == "completed" and saved["input"]["rows"] == 12


def test_negatives_are_the_look_alike_documents(tmp_path, server, small_corpus):
    """The test server's questions reuse the document's words, so its look-alike pair ranks high."""
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}")
    run(cfg)
    rows = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    scores = [row["hard_negative_scores"][0] for row in rows]
    assert all(score > 0 for score in scores)


@pytest.mark.parametrize("naming,last_file", [("step", "mycache_reason_distill"), ("numbered", "mycache_step3")])
def test_step_files_are_named_after_their_step_or_the_dataflow_way(tmp_path, server, small_corpus, naming, last_file):
    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={small_corpus}",
        "storage.format=parquet",
        "storage.file_name_prefix=mycache",
        f"storage.naming={naming}",
    )
    run(cfg)
    run_dir = tmp_path / "run"
    assert sorted(path.stem for path in run_dir.glob("*.parquet"))[-1] == last_file
    assert len(list(run_dir.glob("*.parquet"))) == 4  # the input and three steps
    assert len(read_jsonl(run_dir / "dataset.jsonl")) == 12


def test_same_seed_same_shuffle_other_seed_other_shuffle(tmp_path, server, small_corpus):
    def positions(seed: int, name: str) -> dict:
        cfg = compose_config(tmp_path / name, *server_overrides(server), f"data.input={small_corpus}", f"seed={seed}")
        run(cfg)
        return {row["id"]: row["positive_index"] for row in read_jsonl(tmp_path / name / "run" / "dataset.jsonl")}

    first, again, other = positions(7, "a"), positions(7, "b"), positions(8, "c")
    assert first == again
    assert first != other
    assert len(set(first.values())) > 1  # the positive is not always in the same place


def _rare(*args: str, env_key: str) -> subprocess.CompletedProcess:
    """The real `rare` command, with OPENAI_API_KEY set to `env_key`."""
    env = {**os.environ, "OPENAI_API_KEY": env_key, "COLUMNS": "300"}
    return subprocess.run(
        [sys.executable, "-m", "rare.cli", *args], capture_output=True, text=True, timeout=600, env=env
    )


def test_secrets_never_reach_the_run_dir_the_cache_or_the_output(tmp_path, server, small_corpus, capfd):
    """Keys given by env or on the command line: not in any file of the run dirs or the cache, nor printed."""
    env_key, cli_key, wrong_key = (f"rare-{kind}-DISTINCTIVE-0123456789" for kind in ("envkey", "clikey", "wrongkey"))
    common = [
        "llm=openai",
        f"llm.api_base={server.url}",
        f"data.input={small_corpus}",
        "retriever=bm25s",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    printed = []
    try:
        server.configure(require_api_key=env_key)  # the server answers only the right key: the key really was sent
        by_env = _rare(*common, f"hydra.run.dir={tmp_path / 'by_env'}", env_key=env_key)
        server.configure(require_api_key=cli_key)
        by_cli = _rare(*common, f"llm.api_key={cli_key}", f"hydra.run.dir={tmp_path / 'by_cli'}", env_key=env_key)
        assert (by_env.returncode, by_cli.returncode) == (0, 0), by_env.stderr[-2000:] + by_cli.stderr[-2000:]
        printed += [by_env.stdout, by_env.stderr, by_cli.stdout, by_cli.stderr]
        # a rejected key: the provider's error reaches the manifest and the console, the key does not
        cfg = compose_config(
            tmp_path / "rejected", *common, f"llm.api_key={wrong_key}", "llm.cache=false"
        )  # asked, not replayed
        with pytest.raises(RareError):
            run(cfg, overrides=[f"llm.api_key={wrong_key}"])
        printed += list(capfd.readouterr())
    finally:
        server.configure(require_api_key=None)

    files = [
        path
        for root in (tmp_path / "by_env", tmp_path / "by_cli", tmp_path / "rejected", tmp_path / "cache")
        for path in root.rglob("*")
        if path.is_file()
    ]
    assert any(path.suffix == ".sqlite" for path in files) and (tmp_path / "by_cli" / "manifest.json").exists()
    status = json.loads((tmp_path / "rejected" / "run" / "manifest.json").read_text())["status"]
    assert "AuthenticationError" in status and "OPENAI_API_KEY" in status
    for key in (env_key, cli_key, wrong_key):
        for path in files:
            assert key.encode() not in path.read_bytes(), path
        for output in printed:
            assert key not in output
