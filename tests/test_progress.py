"""A run is never silent: a live bar on a terminal, a progress line per step at an interval otherwise."""

import os
import re
import subprocess
import sys
import time

from rare.pipeline.progress import StepProgress, duration_text

STATUS = re.compile(
    r"doc2query: (\d+)/12 rows, (?:\d+ in flight, )?(?:\d+ failed, )?[\d.]+ rows/s(?:, ETA \S+)?, elapsed \S+"
)


def test_status_line_counts_rows_and_leaves_resumed_rows_out_of_the_rate():
    usage = {"calls": 3, "prompt_tokens": 1200, "completion_tokens": 300, "cost_usd": 0.0123}
    progress = StepProgress("doc2query", 10, lambda: usage, log_every_s=0)
    with progress:
        progress.advance(done=4, resumed=True)  # a resume: rows finished by an earlier run
        time.sleep(0.3)
        progress.advance(done=2)
        progress.advance(failed=1)
        line = progress.status_line()
    assert line.startswith("doc2query: 7/10 rows, 1 failed, ")
    rate = float(re.search(r"([\d.]+) rows/s", line).group(1))
    assert (
        0 < rate <= 3 / 0.3 + 0.05
    )  # three rows this run over at least 0.3 s; counting the resumed four would give 23
    assert "ETA " in line and line.endswith("tok 1,500 $0.0123")


def test_durations_read_as_a_person_would_say_them():
    assert [duration_text(s) for s in (4.4, 65, 3599, 7300)] == ["4s", "1m05s", "59m59s", "2h01m"]


def test_without_a_terminal_each_step_logs_its_progress(tmp_path, server, small_corpus):
    """Output piped (CI, nohup): the user still sees rows done, rows/s and the ETA while a step runs."""
    server.configure(latency_s=0.4)
    env = {**os.environ, "OPENAI_API_KEY": "test-key-not-secret"}
    args = [
        "llm=openai",
        f"llm.api_base={server.url}",
        "llm.concurrency=1",
        "executor.workers=1",
        "llm.cache=false",
        f"data.input={small_corpus}",
        "retriever=bm25s",
        "progress_log_s=1",
        f"cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "steps.reason_distill=null",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "rare.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # 12 requests one at a time at 0.4 s: ~5 s of doc2query, so several lines while it runs
    counts = [int(m.group(1)) for m in STATUS.finditer(done.stdout + done.stderr)]
    assert len(counts) >= 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert counts == sorted(counts) and counts[0] < 12


def test_a_stream_logs_every_step_together_with_its_rows_in_flight(caplog):
    """Streaming: one line per step, all logged at each interval, each with the rows in flight."""
    from rare.pipeline.progress import ProgressBoard

    board = ProgressBoard(log_every_s=0.1)
    first, second = board.step("doc2query", 10), board.step("reason_distill", None)
    with caplog.at_level("INFO", logger="rare.pipeline.progress"), board, first, second:
        first.advance(done=3)
        first.in_flight = 4
        second.set_total(3)
        second.advance(failed=1)
        time.sleep(0.35)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("doc2query: 3/10 rows, 4 in flight, ") for line in lines), lines
    assert any(line.startswith("reason_distill: 1/3 rows, 0 in flight, 1 failed, ") for line in lines), lines
