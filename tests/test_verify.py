"""verify: a judge compares the teacher's final answer with the reference answer; rejected rows stay,
marked; with samples > 1 more paths are sampled through the teacher step and the first verified kept.
Runs `preset=full` end to end against the local test server."""

import pytest
from conftest import compose_config, read_jsonl, server_overrides

from rare.errors import ConfigError
from rare.llm.parsing import ParseError
from rare.operators.reason_distill import final_answer, shuffled_documents
from rare.operators.verify import parse_verdict
from rare.pipeline.build import build_steps
from rare.pipeline.runner import run
from rare.pipeline.seeding import row_rng

STEPS = ["doc_filter", "doc2query", "bm25_hardneg", "reason_distill", "verify"]
TEACHER_INPUTS = {"text": "text", "hard_negatives": "hard_negatives"}


def full_run(tmp_path, server, corpus, *overrides) -> tuple[dict, dict[str, list[dict]]]:
    """Run preset=full; the manifest and each step's rows by step name."""
    manifest = run(
        compose_config(tmp_path, *server_overrides(server), f"data.input={corpus}", "preset=full", *overrides)
    )
    rows = {name: read_jsonl(tmp_path / "run" / f"rare_{name}.jsonl") for name in STEPS}
    return manifest, rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from conftest import look_alike_documents, write_corpus

    return write_corpus(tmp_path_factory.mktemp("verify") / "corpus.jsonl", look_alike_documents())


@pytest.fixture(scope="module")
def one_sample(llm_server, corpus, tmp_path_factory):
    llm_server.reset()
    return full_run(tmp_path_factory.mktemp("one"), llm_server, corpus)


@pytest.fixture(scope="module")
def three_samples(llm_server, corpus, tmp_path_factory):
    llm_server.reset()
    result = full_run(tmp_path_factory.mktemp("three"), llm_server, corpus, "steps.verify.samples=3", "llm.cache=false")
    return (*result, llm_server.stats()["total_requests"])


def test_full_preset_runs_every_step_and_keeps_rejected_rows(one_sample):
    manifest, rows = one_sample
    assert [step["name"] for step in manifest["steps"]] == STEPS
    assert manifest["status"] == "completed" and manifest["failures"] == 0
    verified = rows["verify"]
    assert [row["id"] for row in verified] == [row["id"] for row in rows["reason_distill"]]  # none dropped
    for row in verified:
        assert isinstance(row["verdict"]["agrees"], bool) and row["verdict"]["rationale"].strip()
        assert row["verified"] is row["verdict"]["agrees"]
        assert row["verified_paths"] == int(row["verified"])
    assert {row["verified"] for row in verified} == {True, False}  # the judge disagrees now and then
    assert manifest["steps"][4]["usage"]["calls"] == len(verified)  # one judge call per row


def test_teacher_answer_and_document_order_can_be_rebuilt(one_sample):
    _, rows = one_sample
    for row in rows["verify"]:
        assert row["answer"] and row["answer"] == final_answer(row["reasoning"])
        assert row["reference_answer"].strip() and row["source_id"] == row["id"]
        documents, positive = shuffled_documents(row, TEACHER_INPUTS, row_rng(0, "reason_distill", row["id"]))
        assert positive == row["positive_index"]
        assert documents[positive - 1]["text"] == row["text"]
        assert sorted(d["text"] for d in documents) == sorted([row["text"], *row["hard_negatives"]])
        shown = row["shown_document_ids"]  # the ids in the order the teacher saw them, recorded by the step
        assert shown[positive - 1] == row["source_id"]
        assert [shown[d["number"] - 1] for d in documents if d["source"]] == [
            row["hard_negative_ids"][d["source"] - 1] for d in documents if d["source"]
        ]
        assert sorted(shown[: positive - 1] + shown[positive:]) == sorted(row["hard_negative_ids"])


def test_more_samples_cost_the_calls_they_should_and_rescue_rejected_rows(one_sample, three_samples):
    _, single = one_sample
    manifest, rows, server_calls = three_samples
    n = len(rows["verify"])
    # per row: 1 question call, 1 teacher call, then 2 more teacher paths and 3 verdicts
    assert server_calls == n + n + n * (2 + 3)
    assert manifest["steps"][4]["usage"]["calls"] == n * 5
    first_verdict = {row["id"]: row["verified"] for row in single["verify"]}
    teacher = {row["id"]: row for row in rows["reason_distill"]}
    rescued = 0
    for row in rows["verify"]:
        assert 0 <= row["verified_paths"] <= 3 and row["verified"] is (row["verified_paths"] > 0)
        assert row["answer"] == final_answer(row["reasoning"])
        assert row["positive_index"] == teacher[row["id"]]["positive_index"]  # same documents, same order
        if row["reasoning"] != teacher[row["id"]]["reasoning"]:  # a later path was kept ...
            assert row["verified"] and not first_verdict[row["id"]]  # ... only when the first was rejected
            rescued += 1
        elif first_verdict[row["id"]]:
            assert row["verified"]
    assert rescued >= 1
    assert sum(r["verified"] for r in rows["verify"]) == sum(first_verdict.values()) + rescued


def test_samples_without_a_teacher_are_refused(tmp_path):
    cfg = compose_config(tmp_path, "preset=full", "steps.verify.samples=2", "steps.verify.teacher=null")
    with pytest.raises(ConfigError, match=r"samples=2 needs the teacher step"):
        build_steps(cfg.steps)


def test_verify_without_the_teacher_step_names_the_missing_column(tmp_path, server, corpus):
    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={corpus}",
        "preset=full",
        "steps.reason_distill=null",
        "export.enabled=false",
    )
    with pytest.raises(ConfigError, match=r"step 'verify' reads 'answer'"):
        run(cfg)


@pytest.mark.parametrize(
    "text,expected",
    [
        ('{"agrees": true, "rationale": "Same conclusion."}', {"agrees": True, "rationale": "Same conclusion."}),
        (
            'Verdict:\n```json\n{"agrees": "no", "rationale": "Another drug."}\n```',
            {"agrees": False, "rationale": "Another drug."},
        ),
    ],
)
def test_verdicts_parse_tolerantly(text, expected):
    assert parse_verdict(text) == expected


@pytest.mark.parametrize(
    "text,error", [('{"agrees": "maybe", "rationale": "x"}', "true or false"), ('{"agrees": true}', "rationale")]
)
def test_unusable_verdicts_name_the_problem(text, error):
    with pytest.raises(ParseError, match=error):
        parse_verdict(text)


@pytest.mark.parametrize(
    "reasoning,answer",
    [
        ("Reasoning: ...\nAnswer: Give vitamin K.", "Give vitamin K."),
        ("Step 1: x\n**Final Answer:** 42 mg", "42 mg"),
        ("Answer: first\nmore thought\nAnswer: second", "second"),
        ("The answer: is not a marker line", None),
    ],
)
def test_final_answer_is_the_text_after_the_last_marker(reasoning, answer):
    assert final_answer(reasoning) == answer


def test_a_worker_process_leaves_the_teachers_answers_in_the_cache_file(one_sample, server, tmp_path):
    """A worker process runs `run_row_step` and exits without closing the step: every answer it got,
    the verify teacher's extra paths included, must be in the shared cache file by then, so that
    a rerun (here: a fresh copy of the step, as a new process has) asks the server nothing."""
    from rare.pipeline.progress import StepProgress
    from rare.pipeline.step_contract import StepContext
    from rare.pipeline.step_run import StepRun, run_row_step
    from rare.storage.journal import Journal

    _, rows = one_sample
    given = rows["reason_distill"]
    cfg = compose_config(tmp_path, *server_overrides(server), "preset=full", "steps.verify.samples=3")

    def run_verify(attempt: str) -> dict:
        op = dict(build_steps(cfg.steps))["verify"]
        op.bind(StepContext(name="verify", index=5, seed=0))
        judge, teacher = op.clients()  # the judge first, then the teacher it holds
        assert judge is op.llm and teacher is op.teacher.llm
        with (
            Journal(tmp_path / f"{attempt}.jsonl") as journal,
            Journal(tmp_path / f"{attempt}-failed.jsonl") as failures,
        ):
            run_row_step(op, iter(given), StepRun(op, journal, failures, StepProgress("verify", len(given))), set())
        return op.usage()

    first = run_verify("first")
    assert first["calls"] == len(given) * (2 + 3)  # 2 more teacher paths and 3 verdicts per row
    asked = server.stats()["total_requests"]
    again = run_verify("again")
    assert server.stats()["total_requests"] == asked  # nothing asked again: the teacher's answers were written
    assert again["calls"] == 0 and again["cached_calls"] == first["calls"]
