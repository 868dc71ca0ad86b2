"""A live bar per step: rows done/total, rows/s, failures, tokens and cost; quiet when not a TTY."""

import threading
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)
REFRESH_S = 0.2  # the bar's text is recomputed at most this often


class StepProgress:
    """Progress of one step. `advance` after each finished or failed row."""

    def __init__(self, name: str, total: int | None, usage=None):
        """`usage` is a callable returning the step's usage dict so far (tokens, cost), or None."""
        self.usage = usage
        self.failed = 0
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=False,
        )
        self._task = self._progress.add_task(name, total=total, rate="", extra="")
        self._pending = 0  # rows finished since the bar was last updated
        self._shown_at = 0.0
        self._lock = threading.Lock()  # worker reports arrive on another thread

    def __enter__(self):
        self._progress.start()
        return self

    def advance(self, done: int = 1, failed: int = 0) -> None:
        with self._lock:
            self._advance(done, failed)

    def _advance(self, done: int, failed: int) -> None:
        self.failed += failed
        self._pending += done + failed
        now = time.monotonic()
        if now - self._shown_at < REFRESH_S and self._pending < self._total_left():
            return  # rich recomputes the speed over all its samples on every update: not once per row
        self._shown_at = now
        task = self._progress.tasks[0]
        extra = f"failed {self.failed}" if self.failed else ""
        usage = self.usage() if self.usage is not None else {}
        if usage.get("calls") or usage.get("cached_calls"):
            tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
            extra += f" tok {tokens:,} ${usage.get('cost_usd', 0.0):.4f}"
        self._progress.update(self._task, advance=self._pending, extra=extra.strip())
        self._pending = 0
        rate = f"{task.speed:.1f} rows/s" if task.speed else ""
        self._progress.update(self._task, rate=rate)

    def _total_left(self) -> float:
        task = self._progress.tasks[0]
        return float("inf") if task.total is None else task.total - task.completed

    def __exit__(self, *exc) -> None:
        if self._pending:
            self._progress.update(self._task, advance=self._pending)
            self._pending = 0
        self._progress.stop()
