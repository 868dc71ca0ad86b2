"""Building a Lucene index of the spooled pool: Anserini's multi-threaded ``SimpleIndexer``
(behind pyserini's ``LuceneIndexer``) fed the ``docs.jsonl`` lines, storing nothing rare does not
read back (``-storeRaw`` would make every hit load its document), and ``rows.npy``: the row of
``docs.jsonl`` of each Lucene document number."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rare.retrieval.lucene.java import import_lucene
from rare.retrieval.pool import DOCS, SpooledCorpus
from rare.retrieval.textio import progress_bar

log = logging.getLogger(__name__)

LUCENE_DIR = "lucene"  # the Lucene index, inside the cached index directory
ROWS = "rows.npy"  # int32 row of docs.jsonl per Lucene document number
INDEX_BUFFER_MB = 256  # Lucene's indexing RAM buffer (Anserini's default is 4 GB)


def build_lucene_index(
    staging: Path, corpus: SpooledCorpus, language: str, threads: int, batch_size: int, show_progress: bool
) -> None:
    """The Lucene index of ``corpus`` (spooled to ``staging / DOCS``) in ``staging / LUCENE_DIR``,
    and its row map in ``staging / ROWS``."""
    if not len(corpus):
        return
    lucene = import_lucene()
    index_dir = staging / LUCENE_DIR
    # no -storeRaw: texts stay in docs.jsonl; a bounded RAM buffer keeps the JVM heap small
    args = ["-index", str(index_dir), "-language", language, "-memoryBuffer", str(INDEX_BUFFER_MB)]
    indexer = lucene.SimpleIndexer([*args, "-input", "", "-collection", "JsonCollection", "-threads", str(threads)])
    added = 0
    try:
        with (
            open(staging / DOCS, encoding="utf-8") as fh,
            progress_bar(enabled=show_progress, desc="Lucene index", total=len(corpus), unit="doc") as bar,
        ):
            batch: list[str] = []
            for line in fh:
                batch.append(line)
                if len(batch) == batch_size:
                    added += indexer.addRawDocuments(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                added += indexer.addRawDocuments(batch)
                bar.update(len(batch))
    finally:
        indexer.close()
    if added < len(corpus):  # Lucene skips documents with blank text; they can never match
        log.info("Lucene skipped %d of %d documents with blank text", len(corpus) - added, len(corpus))
    if added:
        np.save(staging / ROWS, row_map(index_dir, corpus.rows, show_progress=show_progress))


def row_map(index_dir: Path, rows: dict[str, int], *, show_progress: bool) -> np.ndarray:
    """For each Lucene document number, the row of ``docs.jsonl`` it was built from (-1: none).

    The ids come from the ``id`` doc values Anserini writes beside the stored field: on 5,000
    documents 0.05 s where paging a match-all search and loading each stored document took
    0.2-0.4 s (cold classes and JIT, in the step). A segment without them is read from its
    stored fields.
    """
    from jnius import autoclass

    directory = autoclass("org.apache.lucene.store.FSDirectory").open(
        autoclass("java.io.File")(str(index_dir)).toPath()
    )
    reader = autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
    no_more = autoclass("org.apache.lucene.search.DocIdSetIterator").NO_MORE_DOCS
    try:
        out = np.full(int(reader.maxDoc()), -1, dtype=np.int32)
        with progress_bar(enabled=show_progress, desc="Lucene row map", total=len(out), unit="doc") as bar:
            for leaf in reader.leaves().toArray():
                base, segment = int(leaf.docBase), leaf.reader()
                ids = segment.getBinaryDocValues("id")
                if ids is None:
                    stored = segment.storedFields()
                    for doc in range(int(segment.maxDoc())):
                        out[base + doc] = rows[str(stored.document(doc).get("id"))]
                else:
                    doc = ids.nextDoc()
                    while doc != no_more:
                        out[base + doc] = rows[ids.binaryValue().utf8ToString()]
                        doc = ids.nextDoc()
                bar.update(int(segment.maxDoc()))
        return out
    finally:
        reader.close()
