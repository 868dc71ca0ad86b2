"""A live bar per step: rows done/total, rows/s, failures, tokens and cost; quiet when not a TTY."""

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


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

    def __enter__(self):
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def advance(self, done: int = 1, failed: int = 0) -> None:
        self.failed += failed
        task = self._progress.tasks[0]
        extra = f"failed {self.failed}" if self.failed else ""
        usage = self.usage() if self.usage is not None else {}
        if usage.get("calls") or usage.get("cached_calls"):
            tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
            extra += f" tok {tokens:,} ${usage.get('cost_usd', 0.0):.4f}"
        rate = f"{task.speed:.1f} rows/s" if task.speed else ""
        self._progress.update(self._task, advance=done + failed, rate=rate, extra=extra.strip())
