"""The real conf/: every option composes and builds; bad configs are refused with one clear message."""

import pytest
from conftest import compose_config, server_overrides
from hydra.utils import instantiate

from rare.config.paths import config_dir
from rare.errors import ConfigError
from rare.pipeline.build import build_steps
from rare.pipeline.graph import run_order
from rare.pipeline.runner import run

GROUPS = {
    group: sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))
    for group in ("llm", "storage", "retriever", "prompts")
}


@pytest.mark.parametrize("group,option", [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_option_of_every_group_composes_and_builds(tmp_path, group, option):
    cfg = compose_config(tmp_path, f"{group}={option}")
    if group == "prompts":
        steps = build_steps(cfg.steps)
        assert [name for name, _ in steps] == ["doc2query", "bm25_hardneg", "reason_distill"]
        doc2query = steps[0][1]
        messages = doc2query.messages({"id": "d1", "text": "Some document."})
        assert "Some document." in messages[-1]["content"] and doc2query.shape in messages[0]["content"]
    else:  # the option builds the class its `_target_` names, with the option's own settings
        built = instantiate(cfg[group])
        assert f"{type(built).__module__}.{type(built).__name__}" == cfg[group]._target_
        settings = {k: v for k, v in cfg[group].items() if k != "_target_" and isinstance(v, str | int | float)}
        assert any(getattr(built, k, None) == v for k, v in settings.items()), settings


def test_overrides_reach_the_operators(tmp_path):
    cfg = compose_config(tmp_path, "llm.model=openai/gpt-4o-mini", "steps.bm25_hardneg.num_negatives=5", "seed=3")
    steps = dict(build_steps(cfg.steps))
    assert steps["doc2query"].llm.model == "openai/gpt-4o-mini"
    assert steps["doc2query"].llm.params["seed"] == 3
    assert steps["bm25_hardneg"].num_negatives == 5


def test_a_step_reading_a_key_nobody_writes_is_refused(tmp_path, server, small_corpus):
    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={small_corpus}",
        "steps.reason_distill.inputs.scenario=situation",
    )
    with pytest.raises(
        ConfigError, match=r"step 'reason_distill' reads 'situation'.*steps\.reason_distill\.inputs\.scenario"
    ):
        run(cfg)
    assert server.stats()["total_requests"] == 0


def test_an_output_that_collides_is_refused(tmp_path, server, small_corpus):
    cfg = compose_config(
        tmp_path, *server_overrides(server), f"data.input={small_corpus}", "steps.doc2query.outputs.question=text"
    )
    with pytest.raises(ConfigError, match="writes 'text', which the input data already has"):
        run(cfg)


def test_an_unknown_target_names_the_step_and_the_import_error(tmp_path):
    cfg = compose_config(tmp_path, "steps.doc2query._target_=rare.operators.doc2qury.Doc2Query")
    with pytest.raises(ConfigError, match=r"steps\.doc2query.*cannot import rare\.operators\.doc2qury"):
        build_steps(cfg.steps)


def test_an_unknown_parameter_is_refused_with_what_is_accepted(tmp_path):
    cfg = compose_config(tmp_path, "+steps.bm25_hardneg.num_negativs=4")
    with pytest.raises(ConfigError, match=r"steps\.bm25_hardneg.*num_negativs.*accepts"):
        build_steps(cfg.steps)


def test_a_missing_api_key_names_the_variable_and_the_alternatives(tmp_path, monkeypatch, small_corpus):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    cfg = compose_config(tmp_path, "llm=anthropic", f"data.input={small_corpus}")
    with pytest.raises(ConfigError, match=r"ANTHROPIC_API_KEY.*llm=local"):
        run(cfg)


def test_a_prompt_with_an_unknown_placeholder_is_refused(tmp_path):
    cfg = compose_config(tmp_path, "prompts.doc2query.user='Document: {{ txt }}'")
    with pytest.raises(ConfigError, match=r"steps\.doc2query.*\['txt'\]"):
        build_steps(cfg.steps)


def test_a_step_set_to_null_is_dropped(tmp_path):
    cfg = compose_config(tmp_path, "steps.reason_distill=null")
    assert [name for name, _ in build_steps(cfg.steps)] == ["doc2query", "bm25_hardneg"]


@pytest.mark.parametrize("step", ["doc_filter", "verify", "false_negative_judge"])
def test_an_opt_in_step_is_turned_on_alone_from_the_command_line(tmp_path, step):
    """`rare +steps=<step>` adds that one step (its conf/steps/ file) to the default graph."""
    names = [name for name, _ in run_order(build_steps(compose_config(tmp_path, f"+steps={step}").steps))]
    assert step in names and set(names) - {step} == {"doc2query", "bm25_hardneg", "reason_distill"}


def test_the_full_preset_is_the_opt_in_steps_and_the_export(tmp_path):
    """preset=full only lists step files: the same as naming them with `+steps=[...]`."""
    preset = compose_config(tmp_path, "preset=full")
    listed = compose_config(tmp_path, "+steps=[doc_filter,verify]", "export.enabled=true")
    assert preset.steps == listed.steps and preset.export.enabled is True


@pytest.mark.parametrize("file_format", ["jsonl", "json", "parquet"])
def test_the_old_storage_spelling_is_the_format_key(tmp_path, file_format):
    """`storage=parquet` (one file per format before) still works: it sets storage.format."""
    old = compose_config(tmp_path, f"storage={file_format}").storage
    assert old == compose_config(tmp_path, f"storage.format={file_format}").storage
    assert instantiate(old).step_path(0).name == f"rare_input.{file_format}"
