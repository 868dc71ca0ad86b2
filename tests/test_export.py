"""The export (written after the last step, and by `rare export`): a real `preset=full` run against the test server, and each format it writes."""

import json

import datasets
import pytest
from conftest import compose_config, look_alike_documents, read_jsonl, server_overrides, write_corpus
from omegaconf import open_dict

from rare.errors import ConfigError
from rare.pipeline.runner import run
from rare.rundir.manifest import Manifest
from rare.tools.export import Export, reasoning_without_answer
from rare.tools.export import main as export_main


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, llm_server):
    """One full-preset run (filter, doc2query, BM25, teacher, verify, export) shared by the tests here."""
    llm_server.reset()
    tmp_path = tmp_path_factory.mktemp("export")
    corpus = write_corpus(tmp_path / "corpus.jsonl", look_alike_documents())
    cfg = compose_config(
        tmp_path, *server_overrides(llm_server), f"data.input={corpus}", "preset=full", "retriever=bm25s"
    )
    manifest = run(cfg)
    run_dir = tmp_path / "run"
    return {
        "dir": run_dir,
        "export": run_dir / "export",
        "manifest": manifest,
        "rows": read_jsonl(run_dir / "dataset.jsonl"),
        "hf_cache": str(tmp_path / "hf_cache"),
    }


def load(full_run, *args, **kwargs):
    """`datasets.load_dataset` with a cache of this run's own (its cache is keyed by folder name, not content)."""
    return datasets.load_dataset(*args, split="train", cache_dir=full_run["hf_cache"], **kwargs)


def _verified(rows):
    return [row for row in rows if row["verified"] is True]


def test_only_verified_rows_are_exported_and_skips_are_counted(full_run):
    rows = full_run["rows"]
    rejected = [row for row in rows if row["verified"] is False]
    assert rejected and _verified(rows), "the test server should judge some answers right and some wrong"
    exported = load(full_run, "parquet", data_dir=str(full_run["export"] / "data"))
    assert exported["id"] == [row["id"] for row in _verified(rows)]  # in run order, rejected ones left out
    assert len(read_jsonl(full_run["export"] / "messages.jsonl")) == len(exported)
    assert len(read_jsonl(full_run["export"] / "alpaca.jsonl")) == len(exported)
    card = (full_run["export"] / "README.md").read_text(encoding="utf-8")
    assert f"**{len(exported)} rows exported.**" in card
    assert f"skipped, not verified: {len(rejected)}" in card


def test_messages_are_the_teachers_turns_with_documents_in_its_order(full_run):
    rows = {row["id"]: row for row in _verified(full_run["rows"])}
    parquet = load(full_run, "parquet", data_dir=str(full_run["export"] / "data"))
    chats = load(full_run, "json", data_files=str(full_run["export"] / "messages.jsonl"))
    assert chats.column_names == ["messages"]  # OpenAI fine-tuning files carry nothing else
    for record, chat in zip(parquet, chats):
        row = rows[record["id"]]
        system, user, assistant = chat["messages"]
        assert [m["role"] for m in chat["messages"]] == ["system", "user", "assistant"]
        assert system["content"].strip() and assistant["content"] == row["reasoning"]
        assert row["question"] in user["content"] and row["scenario"] in user["content"]
        # the documents appear in the order the teacher saw them, the positive where it was
        positions = [user["content"].index(text) for text in record["documents"]]
        assert positions == sorted(positions)
        assert record["documents"][row["positive_index"] - 1] == row["text"]
        assert sorted(record["documents"]) == sorted([row["text"], *row["hard_negatives"]])
        assert record["answer"] == row["answer"] and record["verdict"]["agrees"] is True
        assert chat["messages"] == record["messages"]


def test_alpaca_rows_mirror_the_chat_turns(full_run):
    chats = read_jsonl(full_run["export"] / "messages.jsonl")
    alpaca = load(full_run, "json", data_files=str(full_run["export"] / "alpaca.jsonl"))
    assert sorted(alpaca.column_names) == ["input", "instruction", "output"]
    for chat, row in zip(chats, alpaca):
        system, user, assistant = (m["content"] for m in chat["messages"])
        assert (row["instruction"], row["input"], row["output"]) == (system, user, assistant)


def test_parquet_folder_is_a_hugging_face_dataset_with_a_card(full_run):
    export, manifest = full_run["export"], full_run["manifest"]
    by_card = load(full_run, str(export))  # the card's `configs` point at data/
    assert by_card.num_rows == len(_verified(full_run["rows"]))
    assert {"id", "question", "scenario", "documents", "positive_index", "reasoning", "answer", "messages"} <= set(
        by_card.column_names
    )
    card = (export / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\n") and "path: data/train-*.parquet" in card
    total_cost = sum((s.get("usage") or {}).get("cost_usd", 0.0) for s in manifest["steps"] if s["name"] != "export")
    assert total_cost > 0 and f"**{total_cost:.4f}**" in card
    assert "`openai/gpt-4o`" in card  # the models
    assert "doc_filter" in card and "min_words=20" in card and "near_duplicate_threshold=0.8" in card  # filters applied
    assert "doc2query | 12 | 12 | 0 | 0" in card  # per-step counts
    assert "api_key: '***'" in card or "api_key: ***" in card  # the config, secrets masked


def test_dataset_info_names_existing_files_and_their_columns(full_run):
    export = full_run["export"]
    info = json.loads((export / "dataset_info.json").read_text())
    assert set(info) == {"rare_messages", "rare_alpaca"}
    for entry in info.values():
        first = read_jsonl(export / entry["file_name"])[0]
        assert set(entry["columns"].values()) <= set(first)
    sharegpt = info["rare_messages"]
    assert sharegpt["formatting"] == "sharegpt"
    tags = sharegpt["tags"]
    message = read_jsonl(export / sharegpt["file_name"])[0][sharegpt["columns"]["messages"]]
    assert [m[tags["role_tag"]] for m in message] == [tags["system_tag"], tags["user_tag"], tags["assistant_tag"]]
    assert all(tags["content_tag"] in m for m in message)
    assert info["rare_alpaca"]["formatting"] == "alpaca"


def test_think_tags_put_the_reasoning_in_think_and_the_answer_after(full_run, capsys):
    """The same run exported again with think_tags=true, by `rare export <run dir>`."""
    run_dir = full_run["dir"]
    assert export_main([str(run_dir), "--dir", "export_think", "--think-tags"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "export_think")
    rows = {row["id"]: row for row in full_run["rows"]}
    records = load(full_run, "parquet", data_dir=str(run_dir / "export_think" / "data"))
    assert records.num_rows == len(_verified(full_run["rows"]))
    for record in records:
        row, assistant = rows[record["id"]], record["messages"][2]["content"]
        assert assistant.startswith("<think>\n") and assistant.endswith(f"</think>\n\n{row['answer']}")
        thought = assistant[len("<think>\n") : assistant.index("\n</think>")]
        assert thought and row["reasoning"].startswith(thought)
        assert row["answer"] not in thought  # the final answer line is not repeated inside the thought


@pytest.mark.parametrize(
    "reasoning, answer, body",
    [
        ("Step 1: a.\nStep 2: b.\nFinal answer: 42 apples.", "42 apples.", "Step 1: a.\nStep 2: b."),
        ("Reasoning:\nStep 1: a.\n**Final Answer:**\n42 apples", "42 apples", "Reasoning:\nStep 1: a."),
        ("Step 1: a.\nAnswer: x\ny", "x\ny", "Step 1: a."),
        ("No marked answer here.", "something else", "No marked answer here."),
    ],
)
def test_reasoning_without_answer(reasoning, answer, body):
    assert reasoning_without_answer(reasoning, answer) == body


def test_rare_export_again_gives_the_files_the_run_wrote(full_run, capsys):
    """The export at the end of the run and `rare export <run dir>` are one writer: same options, same files."""
    run_dir = full_run["dir"]
    assert full_run["manifest"]["export"] == {
        "dir": "export",
        "rows": len(_verified(full_run["rows"])),
        "skipped": {"not verified": len(full_run["rows"]) - len(_verified(full_run["rows"]))},
    }
    assert [s["name"] for s in full_run["manifest"]["steps"]][-1] == "verify"  # not a step any more
    assert export_main([str(run_dir), "--dir", "export_again"]) == 0
    for name in (
        "messages.jsonl",
        "prompt_completion.jsonl",
        "alpaca.jsonl",
        "dataset_info.json",
        "data/train-00000-of-00001.parquet",
    ):
        assert (run_dir / "export_again" / name).read_bytes() == (run_dir / "export" / name).read_bytes(), name


def test_the_manifest_file_reads_back_as_the_manifest_the_run_returned(full_run):
    """One typed definition: what run() returns, what it wrote and what readers load are the same."""
    path = full_run["dir"] / "manifest.json"
    manifest = Manifest.read(path)
    assert manifest == full_run["manifest"] and manifest.to_json() == json.loads(path.read_text())
    assert manifest.tokens == sum(step.tokens for step in manifest.steps) > 0
    old = manifest.to_json()  # a manifest from before `filtered` was counted, with a key since removed
    old["steps"] = [{k: v for k, v in step.items() if k != "filtered"} | {"gone": 1} for step in old["steps"]]
    assert [step.filtered for step in Manifest.from_json(old).steps] == [step.filtered for step in manifest.steps]


def test_the_old_steps_export_spelling_is_read_as_the_export_node(tmp_path, monkeypatch, caplog):
    from rare.cli import moved_export_override

    assert moved_export_override("steps.export.think_tags=true") == "export.think_tags=true"
    assert moved_export_override("steps.export=null") == "export.enabled=false"
    assert "no longer a step" in caplog.text
    cfg = compose_config(tmp_path, "preset=full")
    with open_dict(cfg):
        cfg.steps.export = {"_target_": "rare.tools.export.Export", "run_dir": "x"}
    with pytest.raises(ConfigError, match="steps.export: the export is no longer a step.*export.enabled=true"):
        run(cfg)


def test_export_without_a_teacher_step_is_refused_before_any_call(tmp_path, server, small_corpus):
    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={small_corpus}",
        "preset=full",
        "retriever=bm25s",
        "steps.reason_distill=null",
        "steps.verify=null",
    )
    with pytest.raises(ConfigError, match="export.*needs a reason_distill step"):
        run(cfg)
    assert server.stats()["total_requests"] == 0


def test_a_run_with_no_verified_row_exports_only_the_card(full_run):
    run_dir = full_run["dir"]
    rejected = [row for row in full_run["rows"] if row["verified"] is False]
    assert Export(run_dir=str(run_dir), dir="export_none").write(iter(rejected))["rows"] == 0
    folder = run_dir / "export_none"
    assert not list((folder / "data").glob("*.parquet"))  # an empty parquet would have no schema to load
    assert (folder / "messages.jsonl").read_text() == "" and (folder / "alpaca.jsonl").read_text() == ""
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "**0 rows exported.**" in card and f"skipped, not verified: {len(rejected)}" in card
