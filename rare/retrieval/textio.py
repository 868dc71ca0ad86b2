"""Two helpers the back ends and the index cache share: UTF-8-safe text and progress bars."""

from __future__ import annotations

import sys


def clean_text(text: str) -> str:
    """``text`` with lone surrogates replaced, so it encodes as UTF-8 (and crosses into Java)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(*, enabled: bool, desc: str, total: int | None = None, unit: str = "it"):
    """A tqdm bar (use as a context manager, call ``update(n)``), or a no-op when disabled.

    Bars are shown only when ``enabled`` and stderr is a terminal, so logs stay clean.
    """
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(desc=desc, total=total, unit=unit, dynamic_ncols=True)
