"""Errors a user can cause, each carrying a message that names the cause and the fix."""


class RareError(Exception):
    """A problem the user can fix; the CLI prints the message without a traceback."""


class ConfigError(RareError):
    """The composed config cannot run (bad target, unknown key, missing API key, ...)."""


class InputError(RareError):
    """The input data cannot be read or has rows the pipeline cannot use."""


class RowError(Exception):
    """One row failed for a reason of its own; the run records it and goes on.

    `failure_kind` files it in failed.jsonl (`retry_failed=<kind>` asks those rows again): `row`
    (the row itself), or what the LLM layer sets (`length`, `empty`, `unusable`, ...).
    """

    failure_kind = "row"

    def __init__(self, message: str = "", kind: str | None = None):
        super().__init__(message)
        if kind is not None:
            self.failure_kind = kind


class RowFiltered(RowError):
    """One row removed on purpose (a filter): recorded with its reason in dropped.jsonl, not a failure."""


class RunAborted(RareError):
    """The run stopped early on purpose (budget reached, provider down); finished rows are kept."""
