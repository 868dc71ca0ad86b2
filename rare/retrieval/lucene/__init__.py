"""The default back end: BM25 over Lucene through pyserini (the JVM, indexing, searching, prebuilt indexes)."""
