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
