"""Prompt variants in conf/prompts/: each is a complete template set that renders and runs end to end."""

import json
import re

import jinja2
import pytest
from conftest import compose_config, read_jsonl, server_overrides
from omegaconf import OmegaConf

from rare.config.paths import config_dir, example_path
from rare.llm.schema import wire_schema
from rare.pipeline.build import build_steps
from rare.pipeline.runner import run
from rare.testing.responder import distinctive_words, message_text

VARIANTS = sorted(p.stem for p in (config_dir() / "prompts").glob("*.yaml"))
ZH_CORPUS = example_path("documents_zh.jsonl")
_HAN = re.compile(r"[\u4e00-\u9fff]")
# What a parser relies on in a prompt: JSON shapes ({"key": ...}) and quoted answer markers ("Answer:").
_CONTRACT = re.compile(r'\{\{ shape \}\}|\{".*\}|"[A-Za-z ]+:"')  # the answer's JSON shape, answer markers


def templates(variant: str, tmp_path) -> dict:
    """{section: {system, user}} of a variant, as the pipeline composes it."""
    return OmegaConf.to_container(compose_config(tmp_path, f"prompts={variant}").prompts, resolve=True)


@pytest.fixture(scope="module")
def real_row(llm_server, small_corpus_path):
    """One finished row of a default run: every column a template may use."""
    llm_server.reset()
    tmp = small_corpus_path.parent
    run(compose_config(tmp, *server_overrides(llm_server), f"data.input={small_corpus_path}"))
    return read_jsonl(tmp / "run" / "dataset.jsonl")[0]


@pytest.fixture(scope="module")
def small_corpus_path(tmp_path_factory):
    from conftest import look_alike_documents, write_corpus

    return write_corpus(tmp_path_factory.mktemp("prompts") / "corpus.jsonl", look_alike_documents())


def test_the_default_and_the_shipped_variants_are_there():
    assert {"rare", "rare_zh", "rare_case"} <= set(VARIANTS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_has_every_key_of_the_default(tmp_path, variant):
    default, mine = templates("rare", tmp_path), templates(variant, tmp_path)
    for section, parts in default.items():
        assert set(parts) <= set(mine.get(section, {})), f"{variant} lacks {section} keys"
        for part, text in mine[section].items():
            assert isinstance(text, str) and text.strip(), f"{variant}.{section}.{part} is empty"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_template_renders_a_real_row(tmp_path, variant, real_row):
    # The operators render their own prompts (strict: a missing variable raises).
    for name, op in build_steps(compose_config(tmp_path, f"prompts={variant}").steps):
        if hasattr(op, "messages"):
            messages = op.messages(real_row)
            assert real_row["question"] in messages[-1]["content"] or real_row["text"] in messages[-1]["content"], name
    # Every template, also those of steps that are off, renders from the row's columns alone.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    documents = [{"number": n, "text": t} for n, t in enumerate([real_row["text"], *real_row["hard_negatives"]], 1)]
    values = {
        "options": {"A": "one option", "B": "another"},
        "answer": "B",
        **real_row,
        "documents": documents,  # qa_ templates read options
        "shape": '{"agrees": boolean}',
    }  # a JSON step fills it from its schema
    for section, parts in templates(variant, tmp_path).items():
        for part, text in parts.items():
            assert env.from_string(text).render(**values).strip(), f"{variant}.{section}.{part}"


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "rare"])
def test_variants_ask_for_the_output_the_parsers_read(tmp_path, variant):
    """A variant may reword everything except the JSON shapes and answer markers the parsers look for."""
    default, mine = templates("rare", tmp_path), templates(variant, tmp_path)
    for section, parts in default.items():
        wanted = {m for text in parts.values() for m in _CONTRACT.findall(text)}
        written = " ".join(mine[section].values())
        missing = [m for m in wanted if m not in written]
        assert not missing, f"{variant}.{section} no longer asks for {missing}"


def test_each_json_step_shows_the_shape_its_schema_gives(tmp_path, real_row):
    """The JSON shape in a prompt and in a re-ask is read from the schema the answer is checked against."""
    steps = dict(build_steps(compose_config(tmp_path, "preset=full", "+preset@_global_=judge").steps))
    shapes = {
        "doc2query": '{"hard_queries": [{"question": string, "scenario": string, "reference_answer": string}]}',
        "verify": '{"agrees": boolean, "rationale": string}',
        "false_negative_judge": '{"answering": [document numbers], "rationale": string}',
    }
    for name, shape in shapes.items():
        op = steps[name]
        assert op.shape == shape and op.reask_shape() == shape
        assert shape in op.messages({**real_row, "answer": "B"})[0]["content"], name
    assert "description" not in str(
        wire_schema(steps["false_negative_judge"].schema)
    )  # the wording stays in the prompt


def test_rare_zh_asks_in_chinese_and_rare_case_for_a_vignette(tmp_path, real_row):
    zh = dict(build_steps(compose_config(tmp_path, "prompts=rare_zh").steps))
    for name in ("doc2query", "reason_distill"):
        system, user = zh[name].messages(real_row)
        assert len(_HAN.findall(system["content"])) > 100 and _HAN.search(user["content"])
    case = dict(build_steps(compose_config(tmp_path, "prompts=rare_case").steps))
    default = dict(build_steps(compose_config(tmp_path, "prompts=rare").steps))
    assert "vignette" in case["doc2query"].messages(real_row)[0]["content"]
    assert case["doc2query"].messages(real_row) != default["doc2query"].messages(real_row)
    # only the question style changes: the teacher is asked the default way
    assert case["reason_distill"].messages(real_row) == default["reason_distill"].messages(real_row)


@pytest.mark.parametrize(
    "variant,corpus_overrides",
    [("rare", []), ("rare_case", []), ("rare_zh", [f"data.input={ZH_CORPUS}", "retriever.language=zh"])],
)
def test_every_variant_runs_end_to_end(tmp_path, server, small_corpus, variant, corpus_overrides):
    """Every step on (preset=full), so every template of the variant is asked and its answer parsed."""
    overrides = [f"data.input={small_corpus}", *corpus_overrides, f"prompts={variant}", "preset=full"]
    manifest = run(compose_config(tmp_path, *server_overrides(server), *overrides))
    rows = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    assert [s["failed"] for s in manifest["steps"]] == [0] * len(manifest["steps"])
    assert rows and all(row["question"] and row["scenario"] and row["reference_answer"] for row in rows)
    assert all(row["reasoning"] and row["answer"] and isinstance(row["verified"], bool) for row in rows)
    assert all(len(row["hard_negatives"]) == 3 for row in rows)


def chinese_answers(body: dict) -> str:
    """A test-server responder answering like a Chinese model: no spaces between words."""
    messages = body.get("messages") or []
    chunks = [w for w in distinctive_words(message_text(messages[-1]), 8) if _HAN.search(w)] or ["该药物"]
    pick = (chunks * 3)[:3]
    schema = json.dumps(body.get("response_format") or {})
    if "hard_queries" in schema:
        query = {
            "question": f"在{pick[0]}的前提下，对这位患者下一步最合适的处理是什么？为什么？",
            "scenario": f"一名七十岁患者入院，检查发现{pick[1]}，同时{pick[2]}。",
            "reference_answer": f"应当依据{pick[1]}处理。",
        }
        return json.dumps({"hard_queries": [query]}, ensure_ascii=False)
    if "agrees" in schema:
        return json.dumps({"agrees": True, "rationale": "两者结论一致。"}, ensure_ascii=False)
    return f"Reasoning:\n首先确认问题所问的是{pick[0]}。其次排除无关的文档。\nAnswer: 应当依据{pick[1]}处理。"


def test_rare_zh_parses_answers_written_in_chinese(tmp_path, server):
    server.configure(responder="test_prompts:chinese_answers")
    overrides = [f"data.input={ZH_CORPUS}", "retriever.language=zh", "prompts=rare_zh", "preset=full"]
    try:
        manifest = run(compose_config(tmp_path, *server_overrides(server), *overrides))
    finally:
        server.configure(responder=None)  # the session's server keeps its responder otherwise
    rows = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    assert manifest["failures"] == 0 and len(rows) == 10
    assert all(" " not in row["question"] and _HAN.search(row["question"]) for row in rows)
    assert all(row["answer"].startswith("应当依据") and row["verified"] for row in rows)
