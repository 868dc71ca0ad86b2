"""Reading input: formats, stable ids, and clear errors for rows the pipeline cannot use."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import compose_config, read_jsonl, server_overrides, write_corpus

from rare.errors import InputError
from rare.inputs.rows import read_input
from rare.pipeline.runner import run

DOCS = [{"text": "alpha beta gamma"}, {"text": "delta epsilon"}, {"text": "zeta eta theta"}]


def ids(path, **kwargs):
    _, rows = read_input(str(path), **kwargs)
    return [row["id"] for row in rows]


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet", "csv"])
def test_every_format_reads_the_same_rows(tmp_path, suffix):
    path = tmp_path / f"docs.{suffix}"
    if suffix == "jsonl":
        write_corpus(path, DOCS)
    elif suffix == "json":
        path.write_text(json.dumps(DOCS))
    elif suffix == "parquet":
        pq.write_table(pa.Table.from_pylist(DOCS), path)
    else:
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["text"])
            writer.writeheader()
            writer.writerows(DOCS)
    summary, rows = read_input(str(path))
    assert [row["text"] for row in rows] == [d["text"] for d in DOCS]
    assert summary.rows == 3 and summary.columns == {"id", "text"}


def test_limit_keeps_the_first_usable_rows(tmp_path):
    path = write_corpus(tmp_path / "l.jsonl", [{"text": ""}, *DOCS])
    summary, rows = read_input(str(path), limit=2)
    assert [row["text"] for row in rows] == [DOCS[0]["text"], DOCS[1]["text"]]
    assert summary.rows == 2 and len(summary.skipped) == 1


def test_derived_ids_do_not_depend_on_order(tmp_path):
    forward = ids(write_corpus(tmp_path / "a.jsonl", DOCS))
    backward = ids(write_corpus(tmp_path / "b.jsonl", DOCS[::-1]))
    assert forward == backward[::-1]
    assert len(set(forward)) == 3


def test_own_ids_are_kept_and_duplicates_refused(tmp_path):
    path = write_corpus(tmp_path / "d.jsonl", [{"id": 7, "text": "a"}, {"id": "x", "text": "b"}])
    assert ids(path) == ["7", "x"]
    dup = write_corpus(tmp_path / "dup.jsonl", [{"id": "x", "text": "a"}, {"id": "x", "text": "b"}])
    with pytest.raises(InputError, match="duplicate id 'x' at rows 1 and 2"):
        ids(dup)


def test_unusable_rows_are_skipped_with_line_numbers_or_refused_when_strict(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "good one"}\n{"title": "no text"}\n{"text": "   "}\n{"text": 5}\nnot json\n\xff\xfe\n{"text": "good two"}\n'
    )
    summary, rows = read_input(str(path))
    assert [row["text"] for row in rows] == ["good one", "good two"]
    assert [s["line"] for s in summary.skipped] == [2, 3, 4, 5, 6]
    assert "no 'text' field" in summary.skipped[0]["reason"]
    assert "not valid UTF-8" in summary.skipped[4]["reason"]
    with pytest.raises(InputError, match=r"row 2: no 'text' field.*data.strict=false"):
        list(read_input(str(path), strict=True)[1])


def test_missing_and_empty_inputs_are_refused_before_any_call(tmp_path, server):
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={tmp_path / 'nope.jsonl'}")
    with pytest.raises(InputError, match="input file not found.*data.input"):
        run(cfg)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = compose_config(tmp_path / "second", *server_overrides(server), f"data.input={empty}")
    with pytest.raises(InputError, match="has no usable rows"):
        run(cfg)
    assert server.stats()["total_requests"] == 0


def test_skipped_input_rows_are_listed_in_failed_jsonl(tmp_path, server, small_corpus):
    with open(small_corpus, "a") as handle:
        handle.write('{"id": "broken"}\n')
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}")
    manifest = run(cfg)
    failed = read_jsonl(tmp_path / "run" / "failed.jsonl")
    assert failed == [
        {"step": "input", "id": "broken", "line": 13, "reason": failed[0]["reason"]}
    ]  # its own id, when it has one
    assert manifest["failures"] == 1
    assert len(read_jsonl(tmp_path / "run" / "dataset.jsonl")) == 12
