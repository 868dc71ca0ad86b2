"""Property tests (hypothesis): the parsers never fail on model text except with their documented
error, well-formed answers round-trip, any row round-trips through each storage format, and a
journal torn at any byte keeps every complete row and never yields a partial one."""

import asyncio
import json
import tempfile
from pathlib import Path

import pytest
from conftest import compose_config, server_overrides
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rare.errors import RowError
from rare.llm.parsing import ParseError, extract_json_object
from rare.operators.doc2query import parse_hard_queries, parse_hard_query
from rare.operators.reason_distill import final_answer
from rare.pipeline.build import build_steps
from rare.storage.formats import dumps, read_rows, write_rows
from rare.storage.journal import Journal
from rare.storage.step_storage import StepStorage

# -- model text -------------------------------------------------------------------------------

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12
)
brace_soup = st.text(alphabet='{}[]":,\\ `\nabc0123-truefalsnl', max_size=120)


@st.composite
def model_texts(draw):
    """What a model may answer: prose, JSON of any shape, fenced, truncated, or shaped like ours."""
    value = draw(
        json_values
        | st.fixed_dictionaries({"hard_query": json_values})
        | st.fixed_dictionaries({"hard_queries": json_values})
    )
    encoded = json.dumps(value, ensure_ascii=draw(st.booleans()))
    kind = draw(st.sampled_from(["prose", "soup", "json", "fenced", "truncated", "wrapped"]))
    if kind == "prose":
        return draw(st.text())
    if kind == "soup":
        return draw(brace_soup)
    if kind == "fenced":
        return f"```json\n{encoded}\n```"
    if kind == "truncated":
        return encoded[: draw(st.integers(0, len(encoded)))]
    if kind == "wrapped":
        return draw(st.text()) + encoded + draw(st.text())
    return encoded


DEEP = '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"  # deeper than json's recursion limit


@settings(max_examples=400, deadline=None)
@given(text=model_texts())
@example(text=DEEP)
@example(text="{" * 2000)
@example(text='{"hard_query": {"question": "\\ud800 lone surrogate in the question", "scenario": "x x x x"}}')
def test_model_text_gives_a_result_or_a_parse_error_never_a_crash(text):
    usable = {  # what each parser hands the step when it does not raise ParseError
        extract_json_object: lambda r: isinstance(r, dict),
        parse_hard_query: lambda r: len(r) == 2 and all(isinstance(part, str) and part for part in r),
        lambda t: parse_hard_queries(t, 1): lambda r: len(r) == 1 and all(q["question"] for q in r),
        lambda t: parse_hard_queries(t, 3): lambda r: len(r) == 3 and all(q["question"] for q in r),
    }
    for parse, check in usable.items():
        try:
            result = parse(text)
        except ParseError:
            continue
        assert check(result), result
    try:
        question, scenario = parse_hard_query(text)
    except ParseError:
        return
    assert question == question.strip() and question and scenario == scenario.strip() and scenario


@settings(max_examples=300, deadline=None)
@given(text=st.text() | model_texts())
def test_final_answer_never_raises(text):
    answer = final_answer(text)
    assert answer is None or (answer.strip() == answer and answer)


word = st.text(alphabet=st.characters(categories=["L", "Nd"]), min_size=1, max_size=8)
sentence = st.lists(word, min_size=4, max_size=12).map(" ".join)
prose = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="{}`"), max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    question=sentence,
    scenario=sentence,
    wrapping=st.sampled_from(["plain", "fenced", "prose", "flat", "indent", "comma"]),
    before=prose,
    after=prose,
    ascii_only=st.booleans(),
)
def test_a_well_formed_hard_query_round_trips(question, scenario, wrapping, before, after, ascii_only):
    query = {"question": question, "scenario": scenario}
    encoded = json.dumps(
        query if wrapping == "flat" else {"hard_query": query},
        ensure_ascii=ascii_only,
        indent=2 if wrapping == "indent" else None,
    )
    if wrapping == "comma":
        encoded = encoded[:-2] + ",}}"  # a trailing comma, as models write
    text = {"fenced": f"{before}\n```json\n{encoded}\n```\n{after}", "prose": f"{before}\n{encoded}\n{after}"}.get(
        wrapping, encoded
    )
    assert parse_hard_query(text) == (question, scenario)
    assert parse_hard_queries(text, 1) == [{"question": question, "scenario": scenario, "reference_answer": None}]


@settings(max_examples=100, deadline=None)
@given(
    queries=st.lists(st.tuples(sentence, sentence, sentence), min_size=1, max_size=4, unique_by=lambda q: q[0].lower())
)
def test_well_formed_hard_queries_round_trip(queries):
    listed = [{"question": q, "scenario": s, "reference_answer": a} for q, s, a in queries]
    text = json.dumps({"hard_queries": listed}, ensure_ascii=False)
    assert parse_hard_queries(text, len(listed)) == listed


@settings(max_examples=200, deadline=None)
@given(
    body=st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters=":："), max_size=200),
    answer=st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 .,", min_size=1, max_size=40).filter(
        lambda a: a.strip(" .,")
    ),
)
def test_a_final_answer_line_round_trips(body, answer):
    assert final_answer(f"{body}\nAnswer: {answer}") == answer.strip()


# -- model text over the wire: the LLM steps fail a row, never the run ---------------------------

ANSWER = {"text": ""}


def scripted_answer(body: dict) -> str:
    """Test-server responder: whatever text the property test put in ANSWER."""
    return ANSWER["text"]


@pytest.fixture
def steps(tmp_path, server):
    cfg = compose_config(
        tmp_path, *server_overrides(server), "llm.cache=false", "llm.max_retries=0", "steps.doc2query.max_retries=0"
    )
    server.configure(responder=f"{__name__}:scripted_answer")
    try:
        yield dict(build_steps(cfg.steps))
    finally:
        server.configure(responder=None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=model_texts() | st.text())
def test_any_answer_over_the_wire_fills_the_row_or_fails_it_with_a_reason(steps, text):
    ANSWER["text"] = text
    row = {
        "id": "r1",
        "text": "A document about bonds.",
        "question": "How do bonds react to rates?",
        "scenario": "A fund holds long bonds.",
        "hard_negatives": ["Another text."],
    }
    for name in ("doc2query", "reason_distill"):
        try:
            fields = asyncio.run(steps[name].process(row))
        except RowError as error:
            assert str(error)
            continue
        if name == "reason_distill":
            assert fields["reasoning"] == text.strip() and fields["reasoning"]
        else:
            assert all(query["question"] and query["scenario"] for query in fields)


# -- storage ----------------------------------------------------------------------------------

json_rows = st.fixed_dictionaries({"id": st.text(min_size=1)}, optional={"text": st.text()}).flatmap(
    lambda base: st.dictionaries(st.text(), json_values, max_size=5).map(lambda extra: {**extra, **base})
)
large_text = st.builds(lambda piece, times: piece * times, st.text(min_size=1, max_size=12), st.integers(1_000, 40_000))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(json_rows, max_size=6), big=large_text, file_type=st.sampled_from(["jsonl", "json"]))
@example(rows=[{"id": "0", "": -(2**63) - 1}], big="0" * 1000, file_type="jsonl")  # once read back as a float
def test_any_row_round_trips_through_jsonl_and_json(rows, big, file_type):
    rows = [*rows, {"id": "big", "text": big, "nested": {"list": [big[:100], {"deep": [1, 2.5, None, True]}]}}]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"step.{file_type}"
        assert write_rows(path, iter(rows), file_type) == len(rows)
        assert list(read_rows(path, file_type)) == rows


# Parquet needs one schema per file: rows shaped like the pipeline's, values of any content.
parquet_rows = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1),
        "text": st.text() | large_text,
        "hard_negatives": st.lists(st.text(), max_size=4),
        "hard_negative_scores": st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4),
        "hard_negative_info": st.fixed_dictionaries(
            {
                "short": st.booleans(),
                "positive_score": st.none() | st.floats(allow_nan=False, allow_infinity=False),
                "dropped": st.fixed_dictionaries({"positive": st.integers(0, 2**40), "margin": st.integers(0, 9)}),
            }
        ),
        "positive_index": st.integers(1, 10),
        "answer": st.none() | st.text(),
    }
)


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(parquet_rows, min_size=1, max_size=6))
def test_any_pipeline_row_round_trips_through_parquet(rows):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "step.parquet"
        assert write_rows(path, iter(rows), "parquet") == len(rows)
        assert list(read_rows(path, "parquet")) == rows


def test_a_lone_surrogate_from_a_json_escape_is_stored_as_a_replacement_character():
    """`"\\ud800"` is valid JSON (in an input line, or an answer cut inside an emoji's escape pair)
    but no valid text: every file gets U+FFFD instead, so any JSON reader can read it."""
    row = json.loads('{"id": "s", "text": "bad \\ud800 escape", "n": ["\\udfff"]}')
    clean = {"id": "s", "text": "bad \ufffd escape", "n": ["\ufffd"]}
    with tempfile.TemporaryDirectory() as directory:
        for file_type in ("jsonl", "json"):
            path = Path(directory) / f"step.{file_type}"
            write_rows(path, [row], file_type)
            assert list(read_rows(path, file_type)) == [clean]
        with Journal(Path(directory) / "j.jsonl") as journal:
            journal.append(row)
        assert list(Journal(Path(directory) / "j.jsonl")) == [clean]


# -- a journal torn anywhere ------------------------------------------------------------------


def _check_cut(rows: list[dict], cut: int, directory: Path) -> None:
    path = directory / "rare_step1.partial.jsonl"  # DataFlow's numbered names
    path.unlink(missing_ok=True)
    with Journal(path) as journal:
        for row in rows:
            journal.append(row)
    whole = path.read_bytes()
    path.write_bytes(whole[:cut])
    survived = whole[:cut].count(b"\n")  # a row is complete once its newline is written
    assert list(Journal(path)) == rows[:survived]
    assert Journal(path).ids() == {row["id"] for row in rows[:survived]}
    resumed = {"id": "after-resume"}
    with Journal(path) as journal:  # a resumed step appends after the last complete row
        journal.append(resumed)
    assert list(Journal(path)) == [*rows[:survived], resumed]
    storage = StepStorage(str(directory), naming="numbered")  # the step file gets exactly those rows, in input order
    storage.step_path(1).unlink(missing_ok=True)
    assert storage.finalize(1, [*(row["id"] for row in rows), "after-resume"]) == survived + 1
    assert list(storage.read(1)) == [*rows[:survived], resumed]


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(json_rows, min_size=1, max_size=6, unique_by=lambda row: row["id"]), data=st.data())
def test_a_journal_cut_at_any_byte_keeps_every_complete_row(rows, data):
    size = sum(len(dumps(row).encode("utf-8")) + 1 for row in rows)
    cut = data.draw(st.integers(0, size))
    with tempfile.TemporaryDirectory() as directory:
        _check_cut(rows, cut, Path(directory))


def test_a_journal_cut_at_every_byte_of_tricky_rows(tmp_path):
    rows = [
        {"id": "a", "text": "multi-byte é 中文 🙂 and a line separator \u2028 inside"},
        {"id": "b", "nested": {"list": [1, {"x": "new\nline"}], "quote": '"}\\'}, "empty": ""},
        {"id": "c", "text": '{"fake": "json"}\n{"id": "forged"}'},
    ]
    size = sum(len(dumps(row).encode("utf-8")) + 1 for row in rows)
    for cut in range(size + 1):
        _check_cut(rows, cut, tmp_path)
