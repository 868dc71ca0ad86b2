"""Step files and journals: round trips, atomic writes, torn last lines."""

import pytest

from rare.storage.journal import Journal
from rare.storage.step_storage import StepStorage, step_name_problem

ROWS = [{"id": f"r{i}", "text": f"row {i} é", "hard_negatives": [f"n{i}", "m"], "score": i / 3} for i in range(5)]
STEPS = ["doc2query", "bm25_hardneg"]


def storage_for(path, *args, **kwargs) -> StepStorage:
    storage = StepStorage(str(path), *args, **kwargs)
    storage.name_steps(STEPS)
    return storage


@pytest.mark.parametrize("cache_type", ["jsonl", "json", "parquet"])
def test_step_files_round_trip(tmp_path, cache_type):
    storage = storage_for(tmp_path, "pre", cache_type)
    assert storage.write(2, iter(ROWS)) == 5
    assert storage.step_path(2).name == f"pre_bm25_hardneg.{cache_type}"
    assert list(storage.read(2)) == ROWS
    assert list(storage.ids(2)) == [row["id"] for row in ROWS]


def test_step_files_are_named_after_their_step_or_numbered_the_dataflow_way(tmp_path):
    named = storage_for(tmp_path / "named")
    numbered = storage_for(tmp_path / "numbered", naming="numbered")
    assert [named.step_path(i).name for i in range(3)] == [
        "rare_input.jsonl",
        "rare_doc2query.jsonl",
        "rare_bm25_hardneg.jsonl",
    ]
    assert [numbered.step_path(i).name for i in range(3)] == [
        "rare_step0.jsonl",
        "rare_step1.jsonl",
        "rare_step2.jsonl",
    ]
    assert numbered.journal(1, shard=0).path.name == "rare_step1.partial-w0.jsonl"


def test_a_folder_with_numbered_step_files_keeps_their_names(tmp_path):
    """A run dir of a rare from before step names resumes with the files it has."""
    StepStorage(str(tmp_path), naming="numbered").write(0, ROWS)
    resumed = storage_for(tmp_path)  # today's default naming
    assert resumed.naming == "numbered" and list(resumed.read(0)) == ROWS
    assert resumed.step_path(1).name == "rare_step1.jsonl"


@pytest.mark.parametrize("name", ["input", "step3", "a/b", ""])
def test_a_step_name_that_cannot_name_its_file_is_refused(name):
    assert step_name_problem(name) is not None
    assert step_name_problem("reason_distill") is None


def test_ids_are_read_whatever_the_key_order_and_id_type(tmp_path):
    storage = storage_for(tmp_path)
    storage.step_path(1).write_text(
        '{"id":"a\\"b","text":"x"}\n{"text":"id second","id":"c"}\n{"id": "spaced", "text": "x"}\n{"id":7,"text":"{\\"id\\":\\"no\\"}"}\n',
        encoding="utf-8",
    )
    assert list(storage.ids(1)) == ['a"b', "c", "spaced", 7]
    assert list(storage.ids(1)) == [row["id"] for row in storage.read(1)]


@pytest.mark.parametrize("cache_type", ["jsonl", "parquet"])
def test_finalized_and_exported_rows_are_the_bytes_a_fresh_write_gives(tmp_path, cache_type):
    """Finalize copies journal lines and export copies the step file: same bytes as writing the rows."""
    storage = storage_for(tmp_path / "copied", format=cache_type)
    with storage.journal(1) as journal:
        for row in reversed(ROWS):
            journal.append(row)
    storage.finalize(1, [row["id"] for row in ROWS])
    assert list(storage.read(1)) == ROWS
    assert storage.export_jsonl(1, tmp_path / "dataset.jsonl") == len(ROWS)
    fresh = storage_for(tmp_path / "fresh")
    fresh.write(1, ROWS)
    assert (tmp_path / "dataset.jsonl").read_bytes() == fresh.step_path(1).read_bytes()
    if cache_type == "jsonl":
        assert storage.step_path(1).read_bytes() == fresh.step_path(1).read_bytes()


def test_finalize_orders_rows_like_the_input_and_drops_the_journal(tmp_path):
    storage = storage_for(tmp_path)
    with storage.journal(1) as journal:
        for row in (ROWS[3], ROWS[0], ROWS[4]):
            journal.append(row)
    assert storage.finalize(1, [row["id"] for row in ROWS]) == 3
    assert [row["id"] for row in storage.read(1)] == ["r0", "r3", "r4"]
    assert not storage.journal(1).path.exists()


def test_a_torn_last_line_is_dropped_and_then_overwritten(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path) as journal:
        journal.append(ROWS[0])
        journal.append(ROWS[1])
    with open(path, "ab") as handle:
        handle.write(b'{"id": "r2", "text": "half')  # what kill -9 mid-write leaves
    assert [row["id"] for row in Journal(path)] == ["r0", "r1"]
    with Journal(path) as journal:
        journal.append(ROWS[2])
    assert [row["id"] for row in Journal(path)] == ["r0", "r1", "r2"]
