"""The settings retriever back ends share, one object each, as the configs group them:
`PoolSettings` (conf/retriever/base/pool.yaml) for every back end, `BM25Settings`
(conf/retriever/base/bm25.yaml) for the BM25 ones."""

import inspect
import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class PoolSettings:
    """Where indexes are cached (keyed by corpus content and settings), whether progress bars show,
    and the pool: None = the documents given to `prepare`, else a .jsonl file (for pyserini also a
    prebuilt Lucene index directory)."""

    cache_dir: str | os.PathLike | None = None
    show_progress: bool = True
    corpus: str | None = None


@dataclass(frozen=True)
class BM25Settings(PoolSettings):
    """The analyzer's language (en: stopwords and Porter stemming; zh: CJK bigrams) and BM25's
    term-frequency saturation `k1` and length normalisation `b`."""

    language: str = "en"
    k1: float = 0.9
    b: float = 0.4


def takes_settings(settings_class: type[PoolSettings]):
    """Class decorator for a back end whose `__init__` takes its own parameters and `**settings`
    (the fields of `settings_class`): its signature, which Hydra's config checks read, lists both."""

    def decorate(cls):
        own = [p for p in inspect.signature(cls.__init__, eval_str=True).parameters.values() if p.kind != p.VAR_KEYWORD]
        own = own[1:]  # without self
        shared = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in fields(settings_class)
        ]
        cls.__signature__ = inspect.Signature(own + shared)
        return cls

    return decorate
