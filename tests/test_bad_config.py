"""Wrong types in the config are refused before any work: one message naming the key, the value
given and the type expected; the `rare` command exits with 2 and leaves the run dir untouched."""

import os
import subprocess
import sys

import pytest
from conftest import compose_config, server_overrides

from rare.config.paths import config_dir
from rare.errors import ConfigError
from rare.pipeline.build import build_steps, config_problems
from rare.pipeline.runner import run

GROUPS = ("llm", "storage", "retriever", "prompts", "executor", "preset")
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((config_dir() / group).glob("*.yaml"))]

BAD = [
    ("steps.bm25_hardneg.num_negatives=abc", "steps.bm25_hardneg.num_negatives: got 'abc', expected int"),
    ("llm.max_cost_usd=lots", "llm.max_cost_usd: got 'lots', expected float | None"),
    ("seed=x", "seed: got 'x', expected int"),
    ("data.limit=-1", "data.limit: got -1, expected a positive int or null"),
    ("data.strict=maybe", "data.strict: got 'maybe', expected bool"),
    ("circuit_breaker.window=often", "circuit_breaker.window: got 'often', expected an int >= 0"),
    ("circuit_breaker.max_failure_rate=1.5", "circuit_breaker.max_failure_rate: got 1.5, expected a float from 0 to 1"),
    ("steps.doc2query.max_retries=2.5", "steps.doc2query.max_retries: got 2.5, expected int"),
    (
        "steps.reason_distill.allow_truncated=sometimes",
        "steps.reason_distill.allow_truncated: got 'sometimes', expected bool",
    ),
    (
        "steps.doc2query.max_document_tokens=many",
        "steps.doc2query.max_document_tokens: got 'many', expected int | None",
    ),
    ("retriever.k1=high", "retriever.k1: got 'high', expected float"),
    ("llm.concurrency=[1,2]", "llm.concurrency: got [1, 2], expected int"),
    ("storage.file_name_prefix={a: 1}", "storage.file_name_prefix: got {'a': 1}, expected str"),
]


@pytest.mark.parametrize("group,option", OPTIONS)
def test_every_shipped_option_passes_the_type_checks(tmp_path, group, option):
    cfg = compose_config(tmp_path, f"{group}={option}")
    assert config_problems(cfg) == []
    assert build_steps(cfg.steps, config_problems(cfg))


@pytest.mark.parametrize("override,message", BAD, ids=[override for override, _ in BAD])
def test_a_wrong_type_is_refused_before_any_work(tmp_path, server, small_corpus, override, message):
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}", override)
    with pytest.raises(ConfigError) as refused:
        run(cfg)
    assert message in str(refused.value)
    assert str(refused.value).startswith("The config is not well-formed:")
    assert not (tmp_path / "run").exists()  # not even the run dir
    assert server.stats()["total_requests"] == 0


def test_every_bad_value_is_listed_in_one_message(tmp_path):
    cfg = compose_config(tmp_path, *(override for override, _ in BAD[:4]))
    with pytest.raises(ConfigError) as refused:
        build_steps(cfg.steps, config_problems(cfg))
    for _, message in BAD[:4]:
        assert message in str(refused.value)
    assert str(refused.value).count("llm.max_cost_usd") == 1  # llm is shared by two steps, reported once


def test_numbers_for_text_and_text_for_numbers_are_accepted(tmp_path):
    """YAML/Hydra types a key of digits as an int and "5" as a string: both are what the user meant."""
    cfg = compose_config(
        tmp_path, "llm=openai", "llm.api_key=12345", "steps.bm25_hardneg.num_negatives='5'", "data.limit=3"
    )
    steps = dict(build_steps(cfg.steps, config_problems(cfg)))
    assert steps["bm25_hardneg"].num_negatives == 5


def test_the_rare_command_exits_2_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rare.cli",
            "steps.bm25_hardneg.num_negatives=abc",
            "llm.max_cost_usd=lots",
            f"hydra.run.dir={run_dir}",
            f"cache_dir={tmp_path / 'cache'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert result.returncode == 2, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "steps.bm25_hardneg.num_negatives: got 'abc', expected int" in output
    assert "llm.max_cost_usd: got 'lots', expected float | None" in output
    assert "Traceback" not in output
    written = {path.name for path in run_dir.rglob("*")} if run_dir.exists() else set()
    assert written <= {"cli.log"}, written  # at most Hydra's own log: no config, manifest or step file


def test_an_unknown_group_option_names_the_group_and_the_choices(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "rare.cli", "llm=no_such_provider", f"hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Could not find 'llm/no_such_provider'" in output
    assert all(choice in output for choice in ("openai", "anthropic", "local"))  # what the user may pick instead
    assert "Traceback" not in output
    assert not run_dir.exists()
