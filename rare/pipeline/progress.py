"""Progress of each step: a live bar on a terminal; otherwise a log line at a fixed interval.

Either way the user sees rows done/total, failures, rows/s, the time left, tokens and cost.
"""

import logging
import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
log = logging.getLogger(__name__)
REFRESH_S = 0.2  # the bar's text is recomputed at most this often
LOG_EVERY_S = 30.0  # without a terminal: one progress line per step this often, rows or not


def usage_text(usage: dict) -> str:
    """`tok 12,345 $0.0123` for a step that made (or replayed) calls; empty otherwise."""
    if not (usage.get("calls") or usage.get("cached_calls")):
        return ""
    tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
    return f"tok {tokens:,} ${usage.get('cost_usd', 0.0):.4f}"


def _bar(console_: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console_,
        disable=not console_.is_terminal,
        transient=False,
    )


def duration_text(seconds: float) -> str:
    """`45s`, `3m05s`, `2h01m`."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StepProgress:
    """Progress of one step. `advance` after each finished or failed row.

    Args:
        name: the step's name.
        total: rows the step will see (None = unknown).
        usage: a callable returning the step's usage dict so far (tokens, cost), or None.
        log_every_s: without a terminal, the interval of the progress log lines (0 = none).
        board: the `ProgressBoard` this step's line is on, beside the other steps' (streaming); its
            bar and its log lines are then the board's.
    """

    def __init__(self, name: str, total: int | None, usage=None, log_every_s: float = LOG_EVERY_S, board=None):
        self.name = name
        self.total = total
        self.usage = usage
        self.failed = 0
        self.finished = 0  # rows done or failed, including rows a resumed run had already
        self.in_flight = 0  # rows being worked on (set by the step's runner)
        self.in_flight_elsewhere: dict = {}  # worker -> rows it is working on (as it last reported)
        self._board = board
        self._progress = _bar(console) if board is None else board.bar
        self._position = len(self._progress.tasks)
        self._task = self._progress.add_task(name, total=total, rate="", extra="")
        self._pending = 0  # rows finished since the bar was last updated
        self._shown_at = 0.0
        self._lock = threading.Lock()  # worker reports arrive on another thread
        self._log_every_s = 0.0 if console.is_terminal or board is not None else float(log_every_s)
        self._stop = threading.Event()
        self._logger = None
        self._started = time.monotonic()
        self._counted_from = 0  # rows already done when the step started (a resume) do not make it faster

    def set_total(self, total: int | None) -> None:
        """The rows the step will see, once known (a streamed step learns it when the step before ends)."""
        with self._lock:
            self.total = total
            self._progress.update(self._task, total=total)

    def __enter__(self):
        if self._board is None:
            self._progress.start()
        self._started = time.monotonic()
        if self._log_every_s > 0:
            self._logger = threading.Thread(target=self._log_periodically, name=f"progress-{self.name}", daemon=True)
            self._logger.start()
        return self

    def advance(self, done: int = 0, failed: int = 0, resumed: bool = False) -> None:
        with self._lock:
            self.finished += done + failed
            if resumed:
                self._counted_from += done + failed
            self._advance(done, failed)

    def _advance(self, done: int, failed: int) -> None:
        self.failed += failed
        self._pending += done + failed
        now = time.monotonic()
        if now - self._shown_at < REFRESH_S and self._pending < self._total_left():
            return  # rich recomputes the speed over all its samples on every update: not once per row
        self._shown_at = now
        task = self._progress.tasks[self._position]
        extra = f"in flight {self.rows_in_flight()}" if self._board is not None else ""
        extra += f" failed {self.failed}" if self.failed else ""
        extra += " " + self._usage_text()
        self._progress.update(self._task, advance=self._pending, extra=extra.strip())
        self._pending = 0
        rate = f"{task.speed:.1f} rows/s" if task.speed else ""
        self._progress.update(self._task, rate=rate)

    def rows_in_flight(self) -> int:
        """Rows being worked on here and in the worker processes."""
        return self.in_flight + sum(self.in_flight_elsewhere.values())

    def _total_left(self) -> float:
        task = self._progress.tasks[self._position]
        return float("inf") if task.total is None else task.total - task.completed

    def status_line(self) -> str:
        """`doc2query: 120/2000 rows, 3 failed, 12.3 rows/s, ETA 2m33s, tok 45,000 $0.0123`."""
        with self._lock:
            finished, failed, counted_from = self.finished, self.failed, self._counted_from
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = (finished - counted_from) / elapsed
        parts = [f"{self.name}: {finished}/{self.total if self.total is not None else '?'} rows"]
        if self._board is not None:
            parts.append(f"{self.rows_in_flight()} in flight")
        if failed:
            parts.append(f"{failed} failed")
        parts.append(f"{rate:.1f} rows/s")
        if self.total is not None and rate > 0:
            parts.append(f"ETA {duration_text(max(0, self.total - finished) / rate)}")
        parts.append(f"elapsed {duration_text(elapsed)}")
        usage = self._usage_text()
        return ", ".join(parts + ([usage] if usage else []))

    def _usage_text(self) -> str:
        return usage_text(self.usage() if self.usage is not None else {})

    def _log_periodically(self) -> None:
        while not self._stop.wait(self._log_every_s):
            log.info("%s", self.status_line())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._logger is not None:
            self._logger.join()
        if self._pending:
            self._progress.update(self._task, advance=self._pending)
            self._pending = 0
        if self._board is None:
            self._progress.stop()


class ProgressBoard:
    """The lines of several steps running at once (a stream): one live bar each, updating together on a
    terminal; otherwise every step's status line logged together at an interval."""

    def __init__(self, log_every_s: float = LOG_EVERY_S):
        self.bar = _bar(console)
        self.steps: list[StepProgress] = []
        self._log_every_s = 0.0 if console.is_terminal else float(log_every_s)
        self._stop = threading.Event()
        self._logger = None

    def step(self, name: str, total: int | None, usage=None) -> StepProgress:
        progress = StepProgress(name, total, usage, board=self)
        self.steps.append(progress)
        return progress

    def __enter__(self):
        self.bar.start()
        if self._log_every_s > 0:
            self._logger = threading.Thread(target=self._log_periodically, name="progress-stream", daemon=True)
            self._logger.start()
        return self

    def _log_periodically(self) -> None:
        while not self._stop.wait(self._log_every_s):
            for progress in self.steps:
                log.info("%s", progress.status_line())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._logger is not None:
            self._logger.join()
        self.bar.stop()
