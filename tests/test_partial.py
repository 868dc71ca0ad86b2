"""Finished rows are visible while the run goes: `rare partial` and `rare view` on a run still in progress."""

import json
import re
import subprocess

import pytest
from conftest import TEST_KEY, compose_config, read_jsonl, request_keys, server_overrides
from test_resume import start_rare, wait_for_rows

from rare.pipeline.runner import run
from rare.rundir.partial import finished_lines
from rare.storage.formats import line_id
from rare.storage.step_storage import StepStorage
from rare.tools.partial import main as partial_main
from rare.tools.view.report import build_report

HOLD_S = 8.0  # one row's answer is held this long: the run waits on it while the test looks (two commands)


def rare_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rare", *args], capture_output=True, timeout=60, env=_env())


def _env() -> dict:
    import os

    return {**os.environ, "OPENAI_API_KEY": TEST_KEY}


def files_of(run_dir) -> dict:
    """Every file of the run dir with its size and modification time (the logs and the report aside)."""
    return {
        str(path.relative_to(run_dir)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in run_dir.rglob("*")
        if path.is_file() and path.suffix != ".log" and path.name != "report.html"
    }


def funnel_row(page: str, step: str) -> tuple[str, list[str]]:
    """(the name cell, the numbers) of a step's row in the report's funnel."""
    cells = re.search(rf'<tr data-step="{step}">(.*?)</tr>', page, re.S).group(1)
    return re.search(r"<td>(.*?)</td>", cells, re.S).group(1), re.findall(r"<td>(\d*)</td>", cells)


def card_ids(page: str) -> set[str]:
    return set(re.findall(r'<article class="card[^"]*" data-id="([^"]+)"', page))


def test_a_streaming_run_shows_its_finished_rows_while_one_is_held(tmp_path, server, small_corpus):
    rows = read_jsonl(small_corpus)
    held, doomed = rows[5]["id"], rows[0]["id"]
    keys = request_keys(tmp_path, "doc2query", [rows[5], rows[0]])
    server.configure(delay_prompt_keys={keys[held]: HOLD_S}, fail_prompt_keys={keys[doomed]: "400"})
    run_dir = tmp_path / "run"
    process = start_rare(run_dir, server, small_corpus, "executor.streaming=true")
    wait_for_rows(run_dir / "rare_reason_distill.partial.jsonl", len(rows) - 2, process)
    before = files_of(run_dir)

    partial = rare_command("partial", str(run_dir))
    view = rare_command("view", str(run_dir))

    assert process.poll() is None, "the run ended while the test looked: the held row was not held"
    assert files_of(run_dir) == before  # reading wrote nothing the run or a resume reads
    assert partial.returncode == 0, partial.stderr
    assert view.returncode == 0, view.stderr
    lines = partial.stdout.splitlines(keepends=True)
    assert sorted(line_id(line) for line in lines) == sorted(r["id"] for r in rows if r["id"] not in (held, doomed))
    assert b"10 rows finished step reason_distill (run status: running)" in partial.stderr
    assert not (run_dir / "dataset.jsonl").exists()

    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "This run is still going" in re.search(r'id="snapshot">(.*?)</div>', page, re.S).group(1)
    assert card_ids(page) == {line_id(line) for line in lines}  # the finished rows, as cards
    name, numbers = funnel_row(page, "doc2query")
    assert "running" in name and numbers[:3] == ["", "10", "1"]  # rows in unknown yet; 10 done, 1 failed
    name, numbers = funnel_row(page, "reason_distill")
    assert "running" in name and numbers[:3] == ["", "10", "0"]
    assert "counted when the step ends" in page

    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output  # finished, with the failed row
    dataset = (run_dir / "dataset.jsonl").read_bytes().splitlines(keepends=True)
    assert set(lines) <= set(dataset)  # the same rows, byte for byte
    assert sorted(line_id(line) for line in dataset) == sorted(r["id"] for r in rows if r["id"] != doomed)
    finished = build_report(run_dir)
    assert 'id="snapshot"' not in finished and "running" not in funnel_row(finished, "doc2query")[0]


def test_step_after_step_the_last_steps_rows_show_while_it_runs(tmp_path, server, small_corpus):
    """Without streaming, rows appear once the last step runs: the earlier steps' files exist by then."""
    fast = ("retriever=bm25s", "executor.workers=1")  # no JVM, no worker processes to start: 12 rows need neither
    run(compose_config(tmp_path / "reference", *server_overrides(server), f"data.input={small_corpus}", *fast))
    mined = read_jsonl(tmp_path / "reference" / "run" / "rare_bm25_hardneg.jsonl")
    held = mined[3]["id"]
    server.reset()
    server.configure(delay_prompt_keys={request_keys(tmp_path, "reason_distill", mined[3:4])[held]: HOLD_S / 2})
    run_dir = tmp_path / "run"
    process = start_rare(run_dir, server, small_corpus, "executor.streaming=false", *fast)
    wait_for_rows(run_dir / "rare_reason_distill.partial.jsonl", len(mined) - 1, process)

    assert partial_main([str(run_dir), "-o", str(tmp_path / "dataset.partial.jsonl")]) == 0
    page = build_report(run_dir)

    assert process.poll() is None, "the run ended while the test looked: the held row was not held"
    lines = (tmp_path / "dataset.partial.jsonl").read_bytes().splitlines(keepends=True)
    assert sorted(line_id(line) for line in lines) == sorted(r["id"] for r in mined if r["id"] != held)
    assert "This run is still going" in page
    assert "running" not in funnel_row(page, "doc2query")[0]  # finished: the manifest's report
    name, numbers = funnel_row(page, "reason_distill")
    assert "running" in name and numbers[1:3] == ["11", "0"]
    assert card_ids(page) == {line_id(line) for line in lines}

    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    dataset = (run_dir / "dataset.jsonl").read_bytes()
    assert set(lines) <= set(dataset.splitlines(keepends=True))
    assert dataset == (tmp_path / "reference" / "run" / "dataset.jsonl").read_bytes()
    assert partial_main([str(run_dir), "-o", str(tmp_path / "after.jsonl")]) == 0
    assert (tmp_path / "after.jsonl").read_bytes() == dataset  # on a finished run: dataset.jsonl's rows


def test_the_reader_gives_each_finished_row_once_across_shards_torn_lines_and_the_step_ending(tmp_path):
    storage = StepStorage(str(tmp_path), naming="step")
    storage.name_steps(["teacher"])
    storage.write(0, [{"id": f"r{i}"} for i in range(5)])
    with storage.journal(1) as main, storage.journal(1, shard=0) as shard:
        main.append({"id": "r3", "x": 3})
        shard.append({"id": "r1", "x": 1})
        shard.append({"id": "r3", "x": "again"})  # a row twice (a shard replayed): the first copy counts
    with open(storage.journal(1).path, "ab") as handle:
        handle.write(b'{"id":"r4","x":')  # a row being written: left for later

    reader = finished_lines(storage, 1)
    first = next(reader)
    storage.finalize(1, [f"r{i}" for i in range(5)])  # the step ends while the reader reads
    lines = [first, *reader]

    assert [json.loads(line) for line in lines] == [{"id": "r3", "x": 3}, {"id": "r1", "x": 1}]
    assert storage.step_path(1).read_bytes() == b'{"id":"r1","x":1}\n{"id":"r3","x":3}\n'
    assert list(finished_lines(storage, 1)) == storage.step_path(1).read_bytes().splitlines(keepends=True)


def test_a_run_dir_that_has_no_manifest_yet_is_named_as_starting(tmp_path, capsys):
    from rare.tools.view import main as view_main

    (tmp_path / "config.yaml").write_text("steps: {}\n", encoding="utf-8")
    assert partial_main([str(tmp_path)]) == 2 and view_main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("the run is starting") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


@pytest.mark.parametrize("file_format", ["parquet", "json"])
def test_a_finished_steps_rows_are_the_lines_of_its_dataset_jsonl_in_any_format(tmp_path, file_format):
    storage = StepStorage(str(tmp_path), format=file_format, naming="step")
    storage.name_steps(["teacher"])
    rows = [{"id": f"r{i}", "text": f"caf\u00e9 {i}", "scores": [0.5, i]} for i in range(3)]
    with storage.journal(1) as journal:
        for row in rows:
            journal.append(row)
    running = list(finished_lines(storage, 1))
    storage.finalize(1, [row["id"] for row in rows])
    storage.export_jsonl(1, tmp_path / "dataset.jsonl")
    dataset = (tmp_path / "dataset.jsonl").read_bytes().splitlines(keepends=True)
    assert list(finished_lines(storage, 1)) == dataset
    # the same rows; parquet may type a value anew (an integer among floats becomes a float)
    assert [json.loads(line) for line in running] == [json.loads(line) for line in dataset]
    assert running == dataset or file_format == "parquet"
