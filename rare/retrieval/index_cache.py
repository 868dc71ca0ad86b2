"""Content-addressed index cache shared by the back ends.

``IndexCache.open(docs, settings, build)`` streams the corpus once into a staging
directory (``docs.jsonl``, one ``{"id", "contents"}`` object per line, the format
Lucene's JsonCollection reads) while hashing it. The index for that corpus and those
settings lives in ``cache_dir/<backend>-<key>``, where ``key`` is a sha256 over the
settings and every (doc_id, text) in order. If that directory holds the completion
marker the staging copy is dropped and the cached index reused; otherwise ``build``
fills the staging directory while a thread adds the duplicate-detection features of every
document (``keys.npy``, ``sketches.npy``, see :mod:`rare.retrieval.dedup`), the marker is
written last, and the directory is renamed into place atomically. A directory without
the marker (a crash, a partial copy) is never trusted: it is replaced.

Every back end keeps ``docs.jsonl`` in its index directory (see :mod:`rare.retrieval.pool`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from rare.retrieval.pool import DOCS, FEATURES_FORMAT, SpooledCorpus, spool_corpus, write_features

MARKER = "COMPLETE.json"
KEY_CHARS = 32  # hex digits of the sha256 kept in the directory name (128 bits)


@dataclass
class CacheEntry:
    path: Path  # the index directory
    reused: bool  # True when nothing was built
    corpus: SpooledCorpus  # ids and offsets; its path points at ``path / DOCS`` if the build kept it


class IndexCache:
    """Index directories under ``cache_dir`` (or a private temp dir), keyed by content."""

    def __init__(self, cache_dir: str | os.PathLike | None, backend: str) -> None:
        self.backend = backend
        self._tmp = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"rare-{backend}-")
            cache_dir = self._tmp.name
        self.root = Path(cache_dir).expanduser().absolute()

    def open(
        self,
        docs: Iterable[tuple[str, str]],
        settings: dict,
        build: Callable[[Path, SpooledCorpus], None],
        *,
        show_progress: bool = True,
    ) -> CacheEntry:
        """Return the index for ``docs`` + ``settings``, calling ``build(staging, corpus)`` if needed.

        ``build`` writes the index into ``staging``, which already holds ``docs.jsonl``
        (keep it: texts are fetched from it).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        _sweep_leftovers(self.root)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{self.backend}-", dir=self.root))
        try:
            corpus = spool_corpus(docs, staging / DOCS, show_progress=show_progress)
            key = index_key(self.backend, settings, corpus.digest)
            final = self.root / f"{self.backend}-{key[:KEY_CHARS]}"
            corpus.path = final / DOCS
            if (final / MARKER).is_file():
                return CacheEntry(final, True, corpus)
            started = time.time()
            # the duplicate features are hashed while the index is built (Lucene's threads leave
            # the GIL free); both only read docs.jsonl
            with ThreadPoolExecutor(1) as pool:
                features = pool.submit(write_features, staging, len(corpus), show_progress=False)
                build(staging, corpus)
                features.result()
            marker = {
                "backend": self.backend,
                "key": key,
                "settings": settings,
                "features_format": FEATURES_FORMAT,
                "num_docs": len(corpus),
                "corpus_sha256": corpus.digest,
                "duplicates_dropped": corpus.duplicates,
                "build_seconds": round(time.time() - started, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            (staging / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            os.chmod(staging, 0o755)  # mkdtemp made it private
            if final.exists():  # half-built (no marker): never reuse, replace
                _remove(final, self.root)
            try:
                os.rename(staging, final)
            except OSError:
                if not (final / MARKER).is_file():  # not a concurrent builder winning the race
                    raise
                return CacheEntry(final, True, corpus)
            return CacheEntry(final, False, corpus)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def index_key(backend: str, settings: dict, corpus_digest: str) -> str:
    """sha256 over the back end, its settings, the features format and the corpus digest."""
    blob = json.dumps(
        {"backend": backend, "settings": settings, "features": FEATURES_FORMAT, "corpus": corpus_digest},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def package_version(package: str) -> str:
    """Installed version of ``package`` (part of cache keys), or "unknown"."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _sweep_leftovers(root: Path, max_age_seconds: float = 24 * 3600) -> None:
    """Delete staging/trash directories that crashed runs left behind (older than a day)."""
    cutoff = time.time() - max_age_seconds
    for path in root.glob(".*-*"):
        try:
            if path.name.startswith((".staging-", ".trash-")) and path.stat().st_mtime < cutoff:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _remove(path: Path, root: Path) -> None:
    """Delete ``path`` by first renaming it aside, so the final name frees up at once."""
    trash = Path(tempfile.mkdtemp(prefix=".trash-", dir=root))
    os.rename(path, trash / "old")
    shutil.rmtree(trash, ignore_errors=True)
