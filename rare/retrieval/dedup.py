"""Exact and near-duplicate detection for hard negatives.

Texts are compared as token sequences: lowercase runs of letters and digits, every CJK
character a token of its own (so English gets word shingles, Chinese character shingles).

* exact duplicates: the same tokens in the same order (case, whitespace and punctuation
  ignored); ``text_key`` is an 8-byte hash of that sequence.
* near-duplicates: ``jaccard`` of the sets of ``SHINGLE``-token shingles at or above a
  threshold (a text shorter than ``SHINGLE`` tokens is one shingle).
* ``features(texts)`` returns, per text, its key and a one-permutation MinHash sketch
  (``SKETCH`` uint32 bins, stable across processes) whose agreement estimates the Jaccard.
  It is computed once per document when an index is built (vectorized with numpy); the
  operator skips pairs whose estimate is far below the threshold and confirms the rest
  exactly with ``jaccard``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

SHINGLE = 5  # tokens per shingle: word 5-grams (character 5-grams for CJK text)
SKETCH = 32  # MinHash bins per document (one permutation)
CHUNK_BYTES = 1 << 17  # normalized text hashed per numpy pass (see features)
SKETCH_SLACK = 0.35  # pairs whose estimate is within this of the threshold are checked exactly

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"  # kana, ideographs, hangul
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")
_ASCII_TABLE = bytes(c if chr(c).isalnum() else 32 for c in range(128)) + bytes(range(128, 256))
EMPTY = np.uint32(0xFFFFFFFF)  # a sketch bin no shingle fell into
_BIN_BITS = 5  # log2(SKETCH)
_P = np.uint64(0x100000001B3)  # odd, so it has an inverse modulo 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_MIX = np.uint64(0xD6E8FEB86659FD93)


def words(text: str) -> list[bytes]:
    """The text's tokens, UTF-8 encoded."""
    return _normalized(text).split()


def _normalized(text: str) -> bytes:
    """The tokens, UTF-8 encoded and separated by single or multiple spaces."""
    lowered = text.lower()
    if lowered.isascii():  # fast path: same tokens as the regex
        return lowered.encode("ascii").translate(_ASCII_TABLE)
    return " ".join(_TOKEN.findall(lowered)).encode("utf-8")


def text_key(text: str) -> int:
    """Hash of the token sequence: equal keys are exact duplicates."""
    return int(features([text])[0][0])


def shingles(text: str, size: int = SHINGLE) -> set[tuple[bytes, ...]]:
    """Every run of ``size`` consecutive tokens; a shorter, non-empty text is one shingle."""
    tokens = words(text)
    if len(tokens) < size:
        return {tuple(tokens)} if tokens else set()
    return set(zip(*(tokens[i:] for i in range(size))))


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; 0 when either set is empty."""
    if not a or not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def estimate(a: np.ndarray, b: np.ndarray) -> float:
    """One-permutation MinHash estimate of the Jaccard similarity of two sketches."""
    return float(estimates(np.asarray(a)[None, :], b)[0])


def estimates(many: np.ndarray, one: np.ndarray) -> np.ndarray:
    """The estimate for each row of ``many`` (m x SKETCH) against the sketch ``one``.

    Bins empty in both sketches are left out (a shingle-poor text leaves bins empty).
    """
    both_empty = np.count_nonzero((many == EMPTY) & (one == EMPTY), axis=1)
    agree = np.count_nonzero(many == one, axis=1) - both_empty
    return agree / np.maximum(SKETCH - both_empty, 1)


def features(texts: Sequence[str], chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(keys, sketches)``: uint64 ``text_key`` and uint32 sketch (one row) per text.

    Texts are hashed ``chunk`` at a time, or fewer once they reach ``CHUNK_BYTES``: small
    chunks keep numpy's temporaries (8 bytes per byte of text) in cache. 256 long documents at
    once were several times slower than chunks of 128 KB (`benchmarks/hardneg_long.py` times the
    duplicate features); the values do not depend on the chunks.
    """
    keys = np.empty(len(texts), dtype=np.uint64)
    sketches = np.empty((len(texts), SKETCH), dtype=np.uint32)
    start = 0
    while start < len(texts):
        normalized, size = [], 0
        while start + len(normalized) < len(texts) and len(normalized) < chunk and size < CHUNK_BYTES:
            normalized.append(_normalized(texts[start + len(normalized)]))
            size += len(normalized[-1]) + 1
        stop = start + len(normalized)
        keys[start:stop], sketches[start:stop] = _features(normalized)
        start = stop
    return keys, sketches


def _features(normalized: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized over a chunk: token hashes from prefix sums, shingle hashes, one-permutation MinHash."""
    n = len(normalized)
    keys = np.zeros(n, dtype=np.uint64)
    sketches = np.full((n, SKETCH), EMPTY, dtype=np.uint32)
    buffer = np.frombuffer(b" " + b" ".join(normalized) + b" ", dtype=np.uint8)
    space = buffer == 32
    starts = np.flatnonzero(space[:-1] & ~space[1:]) + 1  # token byte ranges
    ends = np.flatnonzero(~space[:-1] & space[1:]) + 1
    if not len(starts):
        return keys, sketches
    # token hash = sum(byte_j * P^j) over the token, from prefix sums (uint64, wrapping)
    powers, inverse = _powers(len(buffer))
    prefix = np.zeros(len(buffer) + 1, dtype=np.uint64)
    np.cumsum(buffer * powers[: len(buffer)], out=prefix[1:])
    token = _mix((prefix[ends] - prefix[starts]) * inverse[starts])
    # which text each token belongs to (texts are separated by one space in the buffer)
    text_starts = np.cumsum([0] + [len(b) + 1 for b in normalized[:-1]]) + 1
    owner = np.searchsorted(text_starts, starts, side="right") - 1
    counts = np.bincount(owner, minlength=n)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(token)) - first[owner]  # token index within its text
    # exact-duplicate key: a polynomial over the text's token hashes
    weighted = token * powers[position]
    present = counts > 0
    keys[present] = _mix(np.add.reduceat(weighted, first[present]) + counts[present].astype(np.uint64))
    # shingles: SHINGLE consecutive tokens of one text (a shorter text: all its tokens)
    span = np.minimum(counts, SHINGLE)
    per_text = np.where(counts > 0, counts - span + 1, 0)
    shingle_owner = np.repeat(np.arange(n), per_text)
    shingle_first = np.arange(int(per_text.sum())) - np.repeat(np.cumsum(per_text) - per_text, per_text)
    shingle_first += first[shingle_owner]
    combined = np.zeros(len(shingle_first), dtype=np.uint64)
    shingle_span = span[shingle_owner]
    for offset in range(SHINGLE):
        inside = offset < shingle_span
        combined[inside] = (combined[inside] ^ token[shingle_first[inside] + offset]) * _MIX
    combined = _mix(combined)
    # one-permutation MinHash: the top bits pick a bin, the minimum of the next 32 bits is kept
    bins = (combined >> np.uint64(64 - _BIN_BITS)).astype(np.int64)
    values = ((combined >> np.uint64(64 - _BIN_BITS - 32)) & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    flat = sketches.reshape(-1)
    np.minimum.at(flat, shingle_owner * SKETCH + bins, np.minimum(values, EMPTY - 1))
    return keys, sketches


_POWERS = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P**i and P**-i (mod 2**64) for i < n, cached and grown on demand."""
    global _POWERS
    if len(_POWERS[0]) < n:
        size = max(n, 2 * len(_POWERS[0]))
        tables = []
        for base in (_P, _P_INV):
            table = np.full(size, base, dtype=np.uint64)
            table[0] = 1
            tables.append(np.cumprod(table, dtype=np.uint64))
        _POWERS = tuple(tables)
    return _POWERS


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finalizer (splitmix64), so every bit depends on every input bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sketch(text: str) -> np.ndarray:
    """The sketch of one text (see ``features``)."""
    return features([text])[1][0]
