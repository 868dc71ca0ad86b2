"""The synthetic corpus the benchmarks share: deterministic, with the statistics of real text.

A Zipf(1.0) vocabulary of 100k made-up words whose 33 most frequent "words" are Lucene's
English stopwords (real text is about a third stopwords, which the analyzer drops);
documents of ~150 tokens (normal, sd 30); one question per document of 30 tokens drawn
from 30 distinct positions of its document.
"""

import numpy as np

STOPWORDS = (
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with"
).split()


def synthetic_rows(n: int, seed: int = 0, vocab: int = 100_000, doc_len: int = 150, q_len: int = 30):
    """Yield n rows {"id", "text", "question"}, deterministic for (n, seed)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = np.array(["".join(rng.choice(letters, size)) for size in rng.integers(4, 10, vocab)], dtype=object)
    words[: len(STOPWORDS)] = STOPWORDS
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1))
    cdf /= cdf[-1]
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        lengths = np.clip(rng.normal(doc_len, doc_len / 5, m).astype(int), q_len, None)
        tokens = words[np.searchsorted(cdf, rng.random(int(lengths.sum())))].tolist()
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        keys = rng.random(int(lengths.sum()))
        for i in range(m):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            picked = np.sort(lo + np.argpartition(keys[lo:hi], q_len - 1)[:q_len])
            yield {
                "id": f"doc{start + i}",
                "text": " ".join(tokens[lo:hi]),
                "question": " ".join(tokens[j] for j in picked.tolist()),
            }
