"""A rerun whose answers are all in the response cache: no request, no litellm import, same bytes."""

import json
import os
import subprocess
import sys

from conftest import read_jsonl


def _rare_importtime(*args: str) -> subprocess.CompletedProcess:
    """The real `rare` command with `-X importtime`: stderr lists every module the process imported."""
    env = {**os.environ, "COLUMNS": "300"}
    command = [sys.executable, "-X", "importtime", "-m", "rare.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL)


def _imported_litellm(stderr: str) -> bool:
    """Whether any litellm module was imported (importlib.import_module reports only the submodules)."""
    names = (line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:"))
    return any(name.split(".")[0] == "litellm" for name in names)


def _overrides(tmp_path, server, corpus) -> list[str]:
    """The test server as the provider, `corpus` as the input, one cache under `tmp_path` for every run."""
    return [
        "llm=openai",
        f"llm.api_base={server.url}",
        "llm.api_key=test",
        f"data.input={corpus}",
        f"cache_dir={tmp_path / 'cache'}",
    ]


def test_a_cached_rerun_sends_nothing_never_imports_litellm_and_gives_the_same_dataset(tmp_path, server, small_corpus):
    common = _overrides(tmp_path, server, small_corpus)
    first = _rare_importtime(*common, f"hydra.run.dir={tmp_path / 'first'}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert _imported_litellm(first.stderr)  # the first run asks, through litellm
    asked = server.stats()["total_requests"]
    assert asked > 0
    assert (tmp_path / "cache" / "llm_cache.model_facts.json").exists()  # the context window and template lengths

    again = _rare_importtime(*common, f"hydra.run.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert server.stats()["total_requests"] == asked
    assert not _imported_litellm(again.stderr)
    assert (tmp_path / "again" / "dataset.jsonl").read_bytes() == (tmp_path / "first" / "dataset.jsonl").read_bytes()
    manifest = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert all(
        step["usage"].get("cached_calls", 0) == step["rows_in"]
        for step in manifest["steps"]
        if "cached_calls" in step["usage"]
    )
    assert len(read_jsonl(tmp_path / "again" / "dataset.jsonl")) == manifest["steps"][-1]["rows_out"] > 0


def test_facts_of_another_litellm_version_are_computed_again(tmp_path, server, small_corpus):
    common = _overrides(tmp_path, server, small_corpus)
    assert _rare_importtime(*common, f"hydra.run.dir={tmp_path / 'first'}").returncode == 0
    facts = tmp_path / "cache" / "llm_cache.model_facts.json"
    stored = json.loads(facts.read_text())
    facts.write_text(json.dumps({"litellm": "0.0.0", "facts": {key: 1 for key in stored["facts"]}}))
    again = _rare_importtime(*common, f"hydra.run.dir={tmp_path / 'again'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _imported_litellm(again.stderr)  # asked litellm again, not trusted the stale facts
    assert json.loads(facts.read_text()) == stored
    assert (tmp_path / "again" / "dataset.jsonl").read_bytes() == (tmp_path / "first" / "dataset.jsonl").read_bytes()
