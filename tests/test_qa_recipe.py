"""The paper's recipe (`recipe=qa`) and `rare eval`: real Hydra composition of the real conf/, real
litellm calls to the local test server, real BM25 indexes over a knowledge corpus.

The test server answers a prompt demanding `<answer>` with a path that is right with probability
`correct_rate` for the questions in its `answer_key` (drawn per request and seed), so rejection
sampling has known odds.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
from conftest import TEST_KEY, TOPICS, compose_config, look_alike_documents, read_jsonl, server_overrides, write_corpus
from omegaconf import OmegaConf

from rare.errors import ConfigError
from rare.operators.answers import extract_choice, matches_gold
from rare.pipeline.build import build_steps
from rare.pipeline.runner import run

SAMPLES = 8


def topic_question(i: int, options_as_list: bool = False) -> dict:
    """A question about TOPICS[i] with four options (the topic's first words, and three others)."""
    names = [" ".join(TOPICS[(i + shift) % len(TOPICS)].split()[:3]) for shift in (0, 5, 7, 9)]
    order = [names[(j + i) % 4] for j in range(4)]  # the right option moves around
    question = f"Question {i}: which subject covers {' '.join(TOPICS[i].split()[3:])}?"
    if options_as_list:
        return {
            "id": f"list-{i}",
            "question": question,
            "options": order,
            "answer": names[0],
        }  # gold as the option's text
    letters = dict(zip("ABCD", order))
    gold = next(letter for letter, text in letters.items() if text == names[0])
    return {"id": f"map-{i}", "question": question, "options": letters, "answer": gold}


OPEN = {
    "id": "open-1",
    "question": "How many hours does a controller have to notify the authority of a breach?",
    "answer": "72 hours",
}
NEVER = {
    "id": "open-never",
    "question": "What is the consideration a promisee gives in a unilateral contract?",
    "answer": "performance",
}
REFUSED = [
    {
        "id": "bad-letter",
        "question": "Which one is it?",
        "options": {"A": "x", "B": "y", "C": "z", "D": "w"},
        "answer": "E",
    },
    {"id": "no-gold", "question": "Which other one is it?", "options": ["x", "y"]},
]


def server_key(rows: list[dict]) -> dict[str, str]:
    """What the test server takes as each question's gold (its answer_key)."""
    key = {}
    for row in rows:
        options = row.get("options")
        if isinstance(options, list):
            key[row["question"]] = "ABCD"[options.index(row["answer"])]
        else:
            key[row["question"]] = row["answer"]
    key[OPEN["question"]] = "72 Hours."  # right answers differ from the gold only in case and punctuation
    key[NEVER["question"]] = "a promise"  # the server's idea of the gold is wrong: this row is never right
    return key


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, llm_server):
    """One qa run with the default retriever (pyserini/Lucene): both option forms, open questions,
    refused rows; each path right with probability 0.5; the response cache off, so every path is a request."""
    llm_server.reset()
    tmp_path = tmp_path_factory.mktemp("qa")
    questions = [topic_question(i) for i in range(0, 6)] + [
        topic_question(i, options_as_list=True) for i in range(6, 12)
    ]
    knowledge = write_corpus(tmp_path / "knowledge.jsonl", look_alike_documents())
    data = write_corpus(tmp_path / "questions.jsonl", [*questions, OPEN, NEVER, *REFUSED])
    llm_server.configure(answer_key=server_key(questions), correct_rate=0.5, faults={}, script=[])
    overrides = [
        *server_overrides(llm_server),
        "recipe=qa",
        f"data.input={data}",
        f"retriever.corpus={knowledge}",
        "steps.retrieve.k=3",
        "llm.cache=false",
    ]
    manifest = run(compose_config(tmp_path, *overrides))
    run_dir = tmp_path / "run"
    stats = llm_server.stats()
    yield {
        "tmp": tmp_path,
        "dir": run_dir,
        "overrides": overrides,
        "manifest": manifest,
        "stats": stats,
        "rows": {row["id"]: row for row in read_jsonl(run_dir / "dataset.jsonl")},
        "questions": questions,
    }
    llm_server.configure(answer_key={}, correct_rate=1.0)


def qa_config(tmp_path: Path, server, data: Path, *extra: str):
    """The qa recipe over the questions in `data`, against the test server, no export; `extra` wins."""
    return compose_config(
        tmp_path, *server_overrides(server), "recipe=qa", f"data.input={data}", "export.enabled=false", *extra
    )


def bm25s_knowledge(tmp_path: Path) -> list[str]:
    """Overrides for a small knowledge corpus (look-alike documents) searched with bm25s."""
    knowledge = write_corpus(tmp_path / "knowledge.jsonl", look_alike_documents())
    return [f"retriever.corpus={knowledge}", "retriever=bm25s"]


def step_rows(run_dir: Path, name: str) -> dict[str, dict]:
    return {row["id"]: row for row in read_jsonl(run_dir / f"rare_{name}.jsonl")}


def test_both_option_forms_are_lettered_and_the_gold_is_a_letter(qa_run):
    rows = qa_run["rows"]
    mapped, listed = rows["map-1"], rows["list-7"]
    source = {q["id"]: q for q in qa_run["questions"]}
    assert mapped["options"] == source["map-1"]["options"] and mapped["gold"] == source["map-1"]["answer"]
    assert list(listed["options"]) == ["A", "B", "C", "D"]
    assert list(listed["options"].values()) == source["list-7"]["options"]  # lettered in the list's order
    assert listed["options"][listed["gold"]] == source["list-7"]["answer"] == listed["gold_text"]
    assert rows["open-1"]["options"] is None and rows["open-1"]["gold"] == "72 hours"


def test_a_gold_that_is_not_an_option_is_refused_with_its_reason(qa_run):
    failed = {row["id"]: row for row in read_jsonl(qa_run["dir"] / "failed.jsonl")}
    assert set(failed) == {"bad-letter", "no-gold"}
    assert (
        failed["bad-letter"]["step"] == "input"
        and "'E' is not an option (options: A, B, C, D)" in failed["bad-letter"]["reason"]
    )
    assert "has options but no gold answer" in failed["no-gold"]["reason"]
    assert not {"bad-letter", "no-gold"} & set(qa_run["rows"])
    assert qa_run["manifest"]["input"]["rows"] == 14


def test_retrieve_keeps_the_top_k_documents_of_the_corpus_with_their_scores(qa_run):
    corpus = {doc["id"]: doc["text"] for doc in look_alike_documents()}
    for row in qa_run["rows"].values():
        assert len(row["documents"]) == len(row["document_ids"]) == len(row["document_scores"]) == 3
        assert row["documents"] == [corpus[doc_id] for doc_id in row["document_ids"]]
        assert row["document_scores"] == sorted(row["document_scores"], reverse=True) and row["document_scores"][0] > 0
    # the question's own topic words find its document first
    assert qa_run["rows"]["map-2"]["document_ids"][0] in {"doc-02", "doc-03", "doc-04", "doc-05"}


def test_rejection_sampling_stops_at_the_first_right_path(qa_run):
    rows, first = qa_run["rows"], step_rows(qa_run["dir"], "reason_distill")
    for row_id, row in rows.items():
        if row["paths"] == 1:  # the teacher's first path was right: nothing more was asked
            assert row["correct"] and row["reasoning"] == first[row_id]["reasoning"]
        elif row["correct"]:  # a later path was kept, the first was wrong
            assert not matches_gold(first[row_id]["answer"], row["gold"], row["options"])
            assert row["reasoning"] != first[row_id]["reasoning"] and row["reasoning"].endswith(
                f"<answer>{row['answer']}</answer>"
            )
        else:  # never right: every path was drawn, the teacher's first is kept and marked
            assert row["paths"] == SAMPLES and row["reasoning"] == first[row_id]["reasoning"]
    assert rows["open-never"]["correct"] is False and rows["open-never"]["paths"] == SAMPLES
    assert {row["paths"] for row in rows.values()} - {1, SAMPLES}, "some rows should need a few paths"
    # one request per path drawn, none after the first right one
    assert qa_run["stats"]["total_requests"] == sum(row["paths"] for row in rows.values())
    answer_check = next(step for step in qa_run["manifest"]["steps"] if step["name"] == "answer_check")
    assert answer_check["usage"]["calls"] == sum(row["paths"] - 1 for row in rows.values())


def test_open_questions_match_the_gold_by_normalized_text(qa_run):
    row = qa_run["rows"]["open-1"]
    assert row["correct"] is True and row["check"] == "normalized" and row["answer"] == "72 Hours."


def test_export_loads_in_datasets_with_completion_only_formats(qa_run):
    export, rows = qa_run["dir"] / "export", qa_run["rows"]
    kept = [row for row in rows.values() if row["correct"]]
    cache = str(qa_run["tmp"] / "hf_cache")
    pairs = datasets.load_dataset(
        "json", data_files=str(export / "prompt_completion.jsonl"), split="train", cache_dir=cache
    )
    table = datasets.load_dataset("parquet", data_dir=str(export / "data"), split="train", cache_dir=cache)
    assert len(pairs) == len(table) == len(kept) < len(rows)  # the never-right row is not exported
    assert sorted(pairs.column_names) == ["completion", "prompt"]
    for pair, record in zip(pairs, table):
        row = rows[record["id"]]
        assert [m["role"] for m in pair["prompt"]] == ["system", "user"] and [
            m["role"] for m in pair["completion"]
        ] == ["assistant"]
        assert pair["completion"][0]["content"] == row["reasoning"] and "<answer>" in row["reasoning"]
        # the whole path: litellm splits <think> off into reasoning_content, the client puts it back
        assert row["reasoning"].startswith("<think>\nStep 1:") and "\n</think>\n<answer>" in row["reasoning"]
        user = pair["prompt"][1]["content"]
        assert row["question"] in user and all(
            f"{letter}. {text}" in user for letter, text in (row["options"] or {}).items()
        )
        positions = [user.index(f"Document {n}:\n<<<\n{text}") for n, text in enumerate(row["documents"], 1)]
        assert positions == sorted(positions)  # numbered in retrieval order
        assert record["gold"] == row["gold"] and record["correct"] is True and record["documents"] == row["documents"]
    card = (export / "README.md").read_text()
    assert "the paper's recipe" in card and "`prompt_completion.jsonl`" in card
    info = json.loads((export / "dataset_info.json").read_text())
    assert info["rare_qa_messages"]["file_name"] == "messages.jsonl"
    assert "skipped, answer not correct: 1" in (export / "README.md").read_text()


def test_resume_asks_nothing_again(qa_run, server):
    manifest = run(compose_config(qa_run["tmp"], *qa_run["overrides"]))  # the same run dir: resumed
    assert server.stats()["total_requests"] == 0
    assert manifest["resumed"] and all(step["asked"] == 0 for step in manifest["steps"])
    assert {row["id"]: row for row in read_jsonl(qa_run["dir"] / "dataset.jsonl")} == qa_run["rows"]


def test_200_questions_keep_the_rejection_sampling_share_at_its_odds(tmp_path, server):
    """p = 0.25 per path, 8 paths: 1 - 0.75**8 = 90.0% kept, (1 - 0.75**8) / 0.25 = 3.60 calls per question."""
    questions = [
        {
            "id": f"q{i:03d}",
            "question": f"Case {i}: which subject covers {TOPICS[i % 12]}?",
            "options": [TOPICS[(i + j) % 12] for j in range(4)],
            "answer": TOPICS[i % 12],
        }
        for i in range(200)
    ]
    data = write_corpus(tmp_path / "questions.jsonl", questions)
    server.configure(answer_key={q["question"]: "A" for q in questions}, correct_rate=0.25)
    cfg = qa_config(tmp_path, server, data, *bm25s_knowledge(tmp_path), "llm.cache=false")
    manifest = run(cfg)
    rows = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    kept, calls = sum(row["correct"] for row in rows) / len(rows), server.stats()["total_requests"] / len(rows)
    assert len(rows) == 200 and manifest["failures"] == 0
    assert 0.85 <= kept <= 0.95  # binomial sd of the share over 200 questions: 2.1 points
    assert 3.3 <= calls <= 3.9
    server.reset()
    run(cfg)
    assert server.stats()["total_requests"] == 0


def test_the_judge_decides_open_answers_only_when_the_texts_differ(tmp_path, server):
    rows = [OPEN, NEVER]
    data = write_corpus(tmp_path / "questions.jsonl", rows)
    server.configure(answer_key={OPEN["question"]: "72 hours", NEVER["question"]: "a promise"}, correct_rate=1.0)
    cfg = qa_config(
        tmp_path,
        server,
        data,
        *bm25s_knowledge(tmp_path),
        "steps.answer_check.judge_open=true",
        "steps.answer_check.samples=1",
    )
    run(cfg)
    out = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "dataset.jsonl")}
    assert out["open-1"]["check"] == "normalized" and out["open-1"]["correct"] is True
    assert out["open-never"]["check"] == "judge" and isinstance(out["open-never"]["correct"], bool)
    assert server.stats()["total_requests"] == 3  # two teacher paths, one verdict (the matching answer needs none)


def test_given_context_replaces_retrieval_and_needs_no_corpus(tmp_path, server):
    rows = [{**topic_question(i), "context": [f"Shipped document {i}.", "Another one."]} for i in range(3)]
    data = write_corpus(tmp_path / "questions.jsonl", rows)
    cfg = qa_config(
        tmp_path,
        server,
        data,
        "retriever.corpus=null",
        "steps.retrieve.use_given_context=true",
        "steps.answer_check.samples=1",
    )
    run(cfg)
    out = {row["id"]: row for row in read_jsonl(tmp_path / "run" / "dataset.jsonl")}
    assert out["map-1"]["documents"] == ["Shipped document 1.", "Another one."]
    assert out["map-1"]["document_ids"] == ["map-1#context1", "map-1#context2"]


def test_no_corpus_and_no_given_context_is_refused_before_any_call(tmp_path, server):
    data = write_corpus(tmp_path / "questions.jsonl", [topic_question(0)])
    cfg = qa_config(tmp_path, server, data, "retriever.corpus=null")
    with pytest.raises(ConfigError, match=r"retrieve' needs a knowledge corpus.*retriever.corpus="):
        run(cfg)
    assert server.stats()["total_requests"] == 0


def test_steps_run_in_the_order_of_what_they_read_not_of_their_keys(tmp_path):
    for overrides, expected in (
        (["recipe=qa"], ["retrieve", "reason_distill", "answer_check"]),
        (["preset=full"], ["doc_filter", "doc2query", "bm25_hardneg", "reason_distill", "verify"]),
    ):
        cfg = compose_config(tmp_path, *overrides)
        plain = OmegaConf.to_container(cfg)
        plain["steps"] = dict(reversed(list(plain["steps"].items())))  # as if a merge had put them the other way
        assert [name for name, _ in build_steps(OmegaConf.create(plain).steps)] == expected


def test_dry_run_of_the_qa_recipe_asks_nothing(tmp_path, server):
    cfg = compose_config(tmp_path, *server_overrides(server), "recipe=qa", "dry_run=true")
    report = run(cfg)
    assert server.stats()["total_requests"] == 0
    steps = {step["step"]: step for step in report["steps"]}
    assert steps["reason_distill"]["calls"] == 6 and steps["retrieve"]["calls"] == 0
    assert "<answer>" in steps["reason_distill"]["first_prompt"][0]["content"]


def test_eval_reports_the_accuracy_of_a_known_answer_key(tmp_path, server):
    """Ten questions; the server answers six right and four wrong, with and without documents."""
    questions = [topic_question(i) for i in range(10)]
    key = {
        q["question"]: q["answer"] if i < 6 else "ABCD"[("ABCD".index(q["answer"]) + 1) % 4]
        for i, q in enumerate(questions)
    }
    questions.append(OPEN)
    key[OPEN["question"]] = "72 hours"
    server.configure(answer_key=key, correct_rate=1.0)
    data = write_corpus(tmp_path / "questions.jsonl", questions)
    knowledge = write_corpus(tmp_path / "knowledge.jsonl", look_alike_documents())
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "rare.cli",
        "eval",
        f"data.input={data}",
        f"retriever.corpus={knowledge}",
        "retriever=bm25s",
        *server_overrides(server),
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["questions"] == 11 and report["model"] == "openai/gpt-4o"
    for mode in ("with_documents", "without_documents"):
        assert report[mode]["correct"] == 7 and report[mode]["accuracy"] == round(7 / 11, 4)
        assert report[mode]["by_option_count"]["4"] == {"questions": 10, "correct": 6, "accuracy": 0.6}
        assert report[mode]["by_option_count"]["0"]["accuracy"] == 1.0
    assert "rare eval" in done.stderr and "63.6%" in done.stderr
    rows = read_jsonl(run_dir / "dataset.jsonl")
    assert all(
        row["with_documents_reasoning"] and row["without_documents_reasoning"] for row in rows
    )  # every answer kept
    assert "Document 1:" not in json.dumps(rows[0]["without_documents_reasoning"])
    assert server.stats()["total_requests"] == 22  # each question twice: with and without its documents


@pytest.mark.parametrize(
    "text,options,expected",
    [
        ("<think>weighing</think>\n<answer>C</answer>", {"A": "x", "B": "y", "C": "z"}, "C"),
        ("<answer>(b)</answer>", {"A": "x", "B": "y"}, "B"),
        ("<answer>B. y</answer>", {"A": "x", "B": "y"}, "B"),
        ("<answer>vitamin K</answer>", {"A": "heparin", "B": "Vitamin K"}, "B"),
        ("<answer>A</answer> then <answer>B</answer>", {"A": "x", "B": "y"}, "B"),
        ("The answer is a drug... so the answer is (C).", {"A": "x", "B": "y", "C": "z"}, "C"),
        ("First I thought Answer: B, but option A fits.", {"A": "x", "B": "y"}, "A"),
        ("No letter stated here.", {"A": "x", "B": "y"}, None),
        ("Reasoning...\nAnswer: 72 hours", None, "72 hours"),
        ("<answer> Paris </answer>", None, "Paris"),
    ],
)
def test_the_choice_is_read_from_the_answer_tag_or_the_last_stated_option(text, options, expected):
    assert extract_choice(text, options) == expected


def test_open_answers_compare_normalized_and_options_compare_letters():
    assert matches_gold("72 Hours.", "72 hours", None) and not matches_gold("72 days", "72 hours", None)
    assert matches_gold("B", "B", {"A": "x", "B": "y"}) and not matches_gold("y", "B", {"A": "x", "B": "y"})
    assert not matches_gold(None, "B", {"A": "x", "B": "y"})


def test_eval_alias_is_the_eval_recipe(tmp_path):
    from rare.cli import ALIASES

    assert ALIASES["eval"] == ["recipe=eval"]
    cfg = compose_config(tmp_path, *ALIASES["eval"], f"llm.api_key={TEST_KEY}")
    assert [name for name, _ in build_steps(cfg.steps)] == [
        "retrieve",
        "with_documents",
        "without_documents",
        "eval_report",
    ]
