"""Facts about a model that only litellm knows, remembered beside the response cache.

A step needs a model's context window and its prompt template's length in tokens to decide
which documents to cut. Asking litellm means loading it (seconds of CPU), so a rerun whose
answers all come from the cache would load it for nothing but these two numbers. They are
kept in a small JSON file next to the cache, under the litellm version that computed them
(a new litellm may know a model better, so its facts are computed again).
"""

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

log = logging.getLogger(__name__)

_lock = threading.Lock()
_memory: dict[Path, dict] = {}  # what each facts file holds, read once per process
_unsaved: set[Path] = set()  # files whose facts in memory are newer than on disk


def litellm_version() -> str:
    try:
        return version("litellm")
    except PackageNotFoundError:
        return "none"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def remembered(path: Path | None, key: str, compute: Callable[[], int | None]) -> int | None:
    """The fact `key` from the file at `path`, or `compute()` (kept there at the next `save`). No path: compute."""
    if path is None:
        return compute()
    with _lock:
        facts = _facts(path)
        if key in facts:
            return facts[key]
    value = compute()
    with _lock:
        facts[key] = value
        _unsaved.add(path)
    return value


def save(path: Path) -> None:
    """Write the facts learned for `path` since it was read (its step calls this at its end)."""
    with _lock:
        if path in _unsaved:
            _write(path, _memory[path])
            _unsaved.discard(path)


def _facts(path: Path) -> dict:
    if path not in _memory:
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            valid = isinstance(stored, dict) and stored.get("litellm") == litellm_version()
            _memory[path] = dict(stored.get("facts", {})) if valid else {}
        except (OSError, ValueError):  # none yet, or torn: the facts are computed again
            _memory[path] = {}
    return _memory[path]


def _write(path: Path, facts: dict) -> None:
    """Replace the file in one step, so a concurrent reader sees the old facts or the new ones."""
    try:
        partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(json.dumps({"litellm": litellm_version(), "facts": facts}, sort_keys=True), encoding="utf-8")
        os.replace(partial, path)
    except OSError as error:  # a read-only cache dir: the facts are just computed again next run
        log.debug("could not keep model facts in %s: %s", path, error)
