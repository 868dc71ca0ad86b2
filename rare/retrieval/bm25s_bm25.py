"""BM25 with bm25s: pure Python + numpy/scipy, no Java.

Scoring is bm25s's ``lucene`` variant (Lucene's idf and term-frequency saturation).
Tokenization is a small pure-Python approximation of the Lucene analyzers the other
back ends use: Unicode word runs, lowercased; English (and the CJK languages) drop
Lucene's 33 English stopwords; English is Porter-stemmed when PyStemmer is installed;
CJK text becomes overlapping character bigrams, like Lucene's CJKAnalyzer, for
``language`` zh/ja/ko (single characters otherwise, like Lucene's StandardTokenizer).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from rare.retrieval.base import BM25Retriever, RetrieverUnavailable, check_search_args, sort_hits
from rare.retrieval.index_cache import package_version
from rare.retrieval.pool import DOCS, DocStore, SpooledCorpus
from rare.retrieval.settings import BM25Settings, takes_settings
from rare.retrieval.textio import clean_text, progress_bar

FORMAT = 2  # bump when the on-disk layout or the tokenizer changes, so old caches are not reused
BM25S_DIR = "bm25s"  # bm25s's saved index, inside the cached index directory
STATS = "stats.json"  # collection statistics bm25s does not save (mean document length)

# Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, as used by pyserini's default analyzer
ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)
CJK_LANGUAGES = frozenset({"zh", "ja", "ko", "cjk"})
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"  # kana, ideographs, hangul
_TOKEN = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+")  # a CJK run, or a run of other letters/digits
_CJK_CHAR = re.compile(rf"[{_CJK}]")


def make_tokenizer(language: str) -> tuple[Callable[[str], list[str]], str]:
    """A tokenizer for ``language`` and a name for it (part of the cache key)."""
    language = language.lower()
    bigrams = language in CJK_LANGUAGES
    stopwords = ENGLISH_STOPWORDS if language == "en" or bigrams else frozenset()
    stem, stemmer_name = None, "none"
    if language == "en":
        try:
            import Stemmer  # PyStemmer, optional

            stem, stemmer_name = Stemmer.Stemmer("porter").stemWord, "porter"
        except (ImportError, KeyError):
            pass

    def tokenize(text: str) -> list[str]:
        tokens: list[str] = []
        for run in _TOKEN.findall(text):
            if _CJK_CHAR.match(run):
                if bigrams and len(run) > 1:
                    tokens.extend(run[i : i + 2] for i in range(len(run) - 1))
                else:
                    tokens.extend(run)
                continue
            word = run.lower()
            if word in stopwords:
                continue
            tokens.append(stem(word) if stem else word)
        return tokens

    return tokenize, f"{'cjk-bigram' if bigrams else 'word'}/stop={len(stopwords)}/stem={stemmer_name}"


@takes_settings(BM25Settings)
class BM25sRetriever(BM25Retriever):
    """BM25 (Lucene variant) with the bm25s library; needs no JVM.

    Args:
        threads: search threads (None: all cores).
        batch_size: queries per progress step.
        **settings: `BM25Settings`.
    """

    backend = "bm25s"

    def __init__(self, threads: int | None = None, batch_size: int = 1000, **settings) -> None:
        super().__init__(BM25Settings(**settings))
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self.batch_size = max(1, int(batch_size))
        self._tokenize, self.tokenizer_name = make_tokenizer(self.language)
        self.store: DocStore | None = None
        self._bm25 = None
        self._stats: dict | None = None
        self._df: np.ndarray | None = None

    def check(self) -> None:
        _import_bm25s()

    # -- indexing ---------------------------------------------------------------------

    def index_settings(self) -> dict:
        return {
            "language": self.language,
            "tokenizer": self.tokenizer_name,
            "k1": self.k1,
            "b": self.b,
            "method": "lucene",
            "bm25s": package_version("bm25s"),
            "format": FORMAT,
        }

    def _open(self, path: Path) -> None:
        bm25s = _import_bm25s()
        self._bm25 = self._stats = self._df = None
        if (path / BM25S_DIR).is_dir():
            self._bm25 = bm25s.BM25.load(str(path / BM25S_DIR), mmap=True, show_progress=False)
            self._stats = json.loads((path / STATS).read_text())

    def _build(self, staging: Path, corpus: SpooledCorpus) -> None:
        bm25s = _import_bm25s()
        vocab: dict[str, int] = {}
        token_ids: list[list[int]] = []
        total_tokens = 0
        with (
            open(staging / DOCS, encoding="utf-8") as fh,
            progress_bar(enabled=self.show_progress, desc="bm25s tokenize", total=len(corpus), unit="doc") as bar,
        ):
            for line in fh:
                tokens = self._tokenize(json.loads(line)["contents"])
                token_ids.append([vocab.setdefault(token, len(vocab)) for token in tokens])
                total_tokens += len(tokens)
                bar.update(1)
        if not vocab:  # empty corpus, or no document has a single token: nothing can match
            return
        bm25 = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
        bm25.index((token_ids, vocab), create_empty_token=False, show_progress=False)
        bm25.save(str(staging / BM25S_DIR), show_progress=False)
        (staging / STATS).write_text(json.dumps({"num_docs": len(corpus), "avgdl": total_tokens / len(corpus)}))

    # -- searching ----------------------------------------------------------------------

    def search_rows(
        self, queries: Sequence[str], k: int, *, progress: bool | None = None
    ) -> list[list[tuple[int, float]]]:
        k = check_search_args(queries, k)
        self._require_index()
        results: list[list[tuple[int, float]]] = [[] for _ in queries]
        if self._bm25 is None or k == 0:
            return results
        vocab = self._bm25.vocab_dict
        k = min(k, self._bm25.scores["num_docs"])  # bm25s refuses k > corpus size
        show = self.show_progress if progress is None else progress
        with progress_bar(enabled=show, desc="BM25 search", total=len(queries), unit="query") as bar:
            for start in range(0, len(queries), self.batch_size):
                chunk = queries[start : start + self.batch_size]
                positions, query_ids = [], []
                for i, query in enumerate(chunk, start):
                    known = [vocab[t] for t in self._tokenize(clean_text(query)) if t in vocab]
                    if known:  # a query with no indexed term matches nothing
                        positions.append(i)
                        query_ids.append(known)
                if query_ids:
                    rows, scores = self._bm25.retrieve(
                        query_ids, k=k, n_threads=self.threads if len(query_ids) > 1 else 0, show_progress=False
                    )
                    for i, doc_rows, doc_scores in zip(positions, rows.tolist(), scores.tolist()):
                        results[i] = sort_hits(doc_rows, doc_scores)
                bar.update(len(chunk))
        return results

    def score(self, queries: Sequence[str], texts: Sequence[str]) -> list[float]:
        """bm25s's Lucene-variant BM25 for each (query, text), with the pool's statistics (df at least 1)."""
        self._require_index()
        if self._bm25 is None:
            return [0.0] * len(queries)
        if self._df is None:
            self._df = np.diff(np.asarray(self._bm25.scores["indptr"]))  # documents per vocabulary id
        vocab, num_docs, avgdl = self._bm25.vocab_dict, self._stats["num_docs"], self._stats["avgdl"]
        out = []
        for query, text in zip(queries, texts):
            tokens = self._tokenize(clean_text(text))
            counts = Counter(tokens)
            norm = self.k1 * (1 - self.b + self.b * len(tokens) / avgdl)
            total = 0.0
            for term in self._tokenize(clean_text(query)):  # a repeated query term counts again, as in search
                tf = counts.get(term)
                if not tf:
                    continue
                df = max(1, int(self._df[vocab[term]])) if term in vocab else 1
                total += math.log(1 + (max(num_docs, df) - df + 0.5) / (df + 0.5)) * tf / (tf + norm)
            out.append(total)
        return out


def _import_bm25s():
    try:
        import bm25s
    except ImportError as exc:
        raise RetrieverUnavailable(f"bm25s is not importable ({exc}): pip install bm25s==0.3.16") from exc
    return bm25s
