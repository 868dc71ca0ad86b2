"""Step files and journals: round trips, atomic writes, torn last lines."""

import pytest

from rare.storage.journal import Journal
from rare.storage.step_storage import StepStorage

ROWS = [{"id": f"r{i}", "text": f"row {i} é", "hard_negatives": [f"n{i}", "m"], "score": i / 3} for i in range(5)]


@pytest.mark.parametrize("cache_type", ["jsonl", "json", "parquet"])
def test_step_files_round_trip(tmp_path, cache_type):
    storage = StepStorage(str(tmp_path), "pre", cache_type)
    assert storage.write(2, iter(ROWS)) == 5
    assert storage.step_path(2).name == f"pre_step2.{cache_type}"
    assert list(storage.read(2)) == ROWS
    assert list(storage.ids(2)) == [row["id"] for row in ROWS]


def test_ids_are_read_whatever_the_key_order_and_id_type(tmp_path):
    storage = StepStorage(str(tmp_path))
    storage.step_path(1).write_text(
        '{"id":"a\\"b","text":"x"}\n{"text":"id second","id":"c"}\n{"id": "spaced", "text": "x"}\n{"id":7,"text":"{\\"id\\":\\"no\\"}"}\n',
        encoding="utf-8",
    )
    assert list(storage.ids(1)) == ['a"b', "c", "spaced", 7]
    assert list(storage.ids(1)) == [row["id"] for row in storage.read(1)]


@pytest.mark.parametrize("cache_type", ["jsonl", "parquet"])
def test_finalized_and_exported_rows_are_the_bytes_a_fresh_write_gives(tmp_path, cache_type):
    """Finalize copies journal lines and export copies the step file: same bytes as writing the rows."""
    storage = StepStorage(str(tmp_path / "copied"), format=cache_type)
    with storage.journal(1) as journal:
        for row in reversed(ROWS):
            journal.append(row)
    storage.finalize(1, [row["id"] for row in ROWS])
    assert list(storage.read(1)) == ROWS
    assert storage.export_jsonl(1, tmp_path / "dataset.jsonl") == len(ROWS)
    fresh = StepStorage(str(tmp_path / "fresh"))
    fresh.write(1, ROWS)
    assert (tmp_path / "dataset.jsonl").read_bytes() == fresh.step_path(1).read_bytes()
    if cache_type == "jsonl":
        assert storage.step_path(1).read_bytes() == fresh.step_path(1).read_bytes()


def test_finalize_orders_rows_like_the_input_and_drops_the_journal(tmp_path):
    storage = StepStorage(str(tmp_path))
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
