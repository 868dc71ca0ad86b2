"""BM25HardNeg's options, end to end through real Lucene (and gensim, bm25s) on small corpora."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rare.errors import RowError
from rare.operators.bm25_hardneg import BM25HardNeg
from rare.retrieval.bm25s_bm25 import BM25sRetriever
from rare.retrieval.gensim_bm25 import GensimRetriever
from rare.retrieval.index_cache import MARKER
from rare.retrieval.lucene.retriever import PyseriniRetriever
from rare.retrieval.mined import FILE as MINED_FILE

BACKENDS = {"pyserini": PyseriniRetriever, "gensim": GensimRetriever, "bm25s": BM25sRetriever}
QUESTION = "alpha beta gamma delta epsilon"
FILLERS = [f"filler{i}" for i in range(3000)]


def document(terms: list[str], seed: int, length: int = 40) -> str:
    """`length` words: the given query terms among random fillers (distinct per seed)."""
    rng = random.Random(seed)
    words = [rng.choice(FILLERS) for _ in range(length - len(terms))]
    for term in terms:
        words.insert(rng.randrange(len(words) + 1), term)
    return " ".join(words)


TERMS = QUESTION.split()
POSITIVE = document(TERMS, 1)
TEXTS = {
    "pos": POSITIVE,
    "dup": "  " + POSITIVE.upper().replace(" ", " , ") + " !!!",  # same words: an exact duplicate
    "near": " ".join(POSITIVE.split()[:-1] + ["closing"]),  # one word changed: a near-duplicate
    "rival": document(TERMS, 2),  # every query term, other words: scores like the positive
    "c4": document(TERMS[:4], 3),
    "c3": document(TERMS[:3], 4),
    "c3-copy": document(TERMS[:3], 4),  # a duplicate of another candidate
    "c2": document(TERMS[:2], 5),
    "c1": document(TERMS[:1], 6),
    **{f"noise{i}": document([], 100 + i) for i in range(8)},
}
ROWS = [
    {"id": doc_id, "text": text, "question": QUESTION if doc_id == "pos" else f"filler{i} filler{i + 1}"}
    for i, (doc_id, text) in enumerate(TEXTS.items())
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("indexes")


def mine(cache: Path, rows=ROWS, backend: str = "pyserini", retriever_args: dict | None = None, **options) -> dict:
    """Run the operator over `rows` (also the pool unless `corpus` is given); results by row id."""
    retriever = BACKENDS[backend](cache_dir=cache, show_progress=False, **(retriever_args or {}))
    operator = BM25HardNeg(retriever, **options)
    assert operator.check() == []
    operator.prepare(iter(rows))
    return {row["id"]: result for row, result in zip(rows, operator.process_batch(rows))}


def info_ranks(result: dict) -> list[int]:
    return [next(iter(n["ranks"].values())) for n in result["hard_negative_info"]["negatives"]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_defaults_exclude_positive_duplicates_and_close_scores(cache, backend):
    result = mine(cache, backend=backend)["pos"]
    assert result["hard_negative_ids"] == ["c4", "c3", "c2"]
    assert result["hard_negatives"] == [TEXTS["c4"], TEXTS["c3"], TEXTS["c2"]]
    info = result["hard_negative_info"]
    assert info["short"] is False
    # dup and c3-copy are exact duplicates; near and rival score like the positive (margin guard)
    assert info["dropped"] == {
        "positive": 1,
        "duplicate": 2,
        "near_duplicate": 0,
        "margin": 2,
        "relative_margin": 0,
        "similar_to_positive": 0,
        "skipped": 0,
    }
    assert info["options"] == {
        "num_negatives": 3,
        "skip_top": 0,
        "score_margin": 0.05,
        "near_duplicate_threshold": 0.8,
        "relative_margin": None,
        "max_similarity_to_positive": None,  # BM25 without a similarity_model: dense guards off
        "retriever": backend,
        "pool": "documents",
    }
    assert all(n["found_by"] == [backend] for n in info["negatives"])
    ranks = info_ranks(result)  # ranks in the back end's list: below the positive (1) and the dropped ones
    assert ranks == [5, 6, 8]  # after pos, dup, near, rival; c3-copy (7) dropped
    assert info["positive_similarity"] is None
    assert all(score <= 0.95 * info["positive_score"] for score in result["hard_negative_scores"])
    json.dumps(result)  # the row stays JSON


def test_positive_score_is_its_own_bm25_score(cache):
    retriever = PyseriniRetriever(cache_dir=cache, show_progress=False)
    retriever.index((row["id"], row["text"]) for row in ROWS)
    hits = {hit.doc_id: hit.score for hit in retriever.search([QUESTION], 20)[0]}
    info = mine(cache)["pos"]["hard_negative_info"]
    assert info["positive_score"] == round(hits["pos"], 4)
    assert retriever.score([QUESTION], [POSITIVE])[0] == pytest.approx(hits["pos"], rel=1e-6)


def test_margin_guard(cache):
    off = mine(cache, score_margin=None, near_duplicate_threshold=None)["pos"]
    assert off["hard_negative_ids"][:2] == ["near", "rival"]  # equal scores, pool order
    assert off["hard_negative_info"]["dropped"]["margin"] == 0
    wide = mine(cache, score_margin=0.5, near_duplicate_threshold=None)["pos"]
    ceiling = 0.5 * wide["hard_negative_info"]["positive_score"]
    assert wide["hard_negative_scores"] and all(s <= ceiling for s in wide["hard_negative_scores"])
    assert wide["hard_negative_info"]["dropped"]["margin"] >= 3  # near, rival, and c4 scores above half


def test_exact_and_near_duplicates(cache):
    near_only = mine(cache, score_margin=None)["pos"]
    assert "near" not in near_only["hard_negative_ids"] and "dup" not in near_only["hard_negative_ids"]
    assert near_only["hard_negative_ids"] == ["rival", "c4", "c3"]  # c3-copy is never reached
    assert near_only["hard_negative_info"]["dropped"] == {
        "positive": 1,
        "duplicate": 1,
        "near_duplicate": 1,
        "margin": 0,
        "relative_margin": 0,
        "similar_to_positive": 0,
        "skipped": 0,
    }
    stricter = mine(cache, score_margin=None, near_duplicate_threshold=1.0)["pos"]  # only identical shingles
    assert "near" in stricter["hard_negative_ids"] and "dup" not in stricter["hard_negative_ids"]


def test_skip_top(cache):
    baseline = mine(cache, num_negatives=4)["pos"]["hard_negative_ids"]
    assert baseline == ["c4", "c3", "c2", "c1"]
    skipped = mine(cache, num_negatives=2, skip_top=2)["pos"]
    assert skipped["hard_negative_ids"] == baseline[2:]
    assert skipped["hard_negative_info"]["dropped"]["skipped"] == 2


def test_short_rows_are_flagged_never_padded(cache):
    result = mine(cache, num_negatives=6)["pos"]
    assert result["hard_negative_ids"] == ["c4", "c3", "c2", "c1"]  # nothing else shares a query term
    assert result["hard_negative_info"]["short"] is True
    # the first 4 hits are all excluded (positive, duplicate, margin x2): the row is searched deeper
    deeper = mine(cache, extra_candidates=0)["pos"]
    assert deeper["hard_negative_ids"] == ["c4", "c3", "c2"] and deeper["hard_negative_info"]["short"] is False


def test_rows_without_a_question_fail_alone(cache):
    rows = [dict(ROWS[0]), {**ROWS[1], "question": "  "}]
    results = mine(cache, rows=rows)
    assert isinstance(results[rows[1]["id"]], RowError)
    assert not isinstance(results["pos"], RowError)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """An external pool: a copy of the positive under another id, a document whose id clashes
    with the positive's row id, and texts the dataset does not have."""
    documents = [
        {"id": "ext-copy", "contents": POSITIVE},
        {"id": "ext-c4", "contents": document(TERMS[:4], 30)},
        {"id": "ext-c3", "text": document(TERMS[:3], 31)},  # BEIR-style "text" field
        {"id": "pos", "contents": document(TERMS[:2], 32)},  # same id as the dataset row, other text
        *({"id": f"ext-noise{i}", "contents": document([], 300 + i)} for i in range(6)),
    ]
    path = tmp_path_factory.mktemp("pool") / "pool.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in documents))
    return path


@pytest.mark.parametrize("backend", ["pyserini", "bm25s"])
def test_external_corpus(cache, pool, backend):
    results = mine(cache, backend=backend, retriever_args={"corpus": str(pool)})
    result = results["pos"]
    assert result["hard_negative_ids"] == ["ext-c4", "ext-c3", "pos"]  # ids from the pool; the clash is kept
    info = result["hard_negative_info"]
    assert info["dropped"]["duplicate"] == 1 and info["dropped"]["positive"] == 0  # ext-copy, excluded by text
    assert info["options"]["pool"] == str(pool)
    assert info["positive_score"] > max(result["hard_negative_scores"])
    # a positive that is not in the pool: its score is computed, and the guard applies
    rival = mine(cache, rows=[{**ROWS[3], "question": QUESTION}], backend=backend, retriever_args={"corpus": str(pool)})
    rival_info = rival["rival"]["hard_negative_info"]
    assert rival_info["positive_score"] == pytest.approx(info["positive_score"], rel=1e-3)  # same words, same length
    assert "ext-copy" not in rival["rival"]["hard_negative_ids"]  # scores like the positive: margin guard
    assert rival_info["dropped"]["margin"] == 1


def prebuilt_index(pool: Path, index_dir: Path) -> list[str]:
    """A Lucene index of `pool` built elsewhere, with pyserini's own API; its raw JSON lines."""
    from rare.retrieval.lucene.java import import_lucene

    import_lucene()
    from pyserini.index.lucene import LuceneIndexer

    lines = [
        json.dumps({"id": d["id"], "contents": d.get("contents", d.get("text"))}) for d in map(json.loads, pool.open())
    ]
    indexer = LuceneIndexer(str(index_dir), args=["-index", str(index_dir), "-storeRaw"], threads=1)
    indexer.object.addRawDocuments(lines)
    indexer.close()
    return lines


def test_prebuilt_lucene_index_as_pool(cache, pool, tmp_path):
    index_dir = tmp_path / "prebuilt"
    lines = prebuilt_index(pool, index_dir)
    result = mine(cache, retriever_args={"corpus": str(index_dir)})["pos"]
    assert result["hard_negative_ids"] == ["ext-c4", "ext-c3", "pos"]
    assert result["hard_negatives"][0] == json.loads(lines[1])["contents"]


def test_missing_or_unusable_pool_is_reported(tmp_path):
    operator = BM25HardNeg(PyseriniRetriever(cache_dir=tmp_path, corpus=str(tmp_path / "nope.jsonl")))
    assert any("nope.jsonl" in problem for problem in operator.check())
    empty_dir = tmp_path / "not-an-index"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="not a Lucene index"):
        BM25HardNeg(PyseriniRetriever(cache_dir=tmp_path, corpus=str(empty_dir))).prepare(iter(ROWS))
    with pytest.raises(ValueError, match="needs a .jsonl file"):
        BM25HardNeg(BM25sRetriever(cache_dir=tmp_path, corpus=str(empty_dir))).prepare(iter(ROWS))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "contents": "x"}\n{"title": "no id"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        BM25HardNeg(BM25sRetriever(cache_dir=tmp_path, corpus=str(bad))).prepare(iter(ROWS))


ZH_POSITIVE = "月亮的引力使海洋产生潮汐，海水每天涨落两次，沿海的渔民根据潮汐的时间安排出海和返航。"
ZH_TEXTS = {
    "zh-pos": ZH_POSITIVE,
    "zh-dup": ZH_POSITIVE.replace("，", " ") + "！",  # punctuation and spaces only: an exact duplicate
    "zh-near": "据说" + ZH_POSITIVE,  # two characters added: character 5-gram Jaccard 0.95
    "zh-tide": "潮汐发电利用海水涨落的能量，在河口修建水坝，涨潮时蓄水，落潮时放水发电。",
    "zh-moon": "月亮绕地球运行一周大约需要二十七天，月亮本身不发光，反射太阳的光。",
    "zh-fish": "沿海渔民出海捕鱼要看天气预报，台风来临前必须返航避风。",
    "zh-tea": "绿茶起源于中国，采摘后的茶叶需要杀青和揉捻。",
    "zh-train": "高速铁路列车的运行速度可以超过每小时三百公里。",
}


def test_chinese_end_to_end(cache):
    question = "月亮的引力为什么会让海水每天涨落两次，渔民怎么安排出海？"
    rows = [{"id": doc_id, "text": text, "question": question} for doc_id, text in ZH_TEXTS.items()]
    results = mine(cache, rows=rows, retriever_args={"language": "zh"}, score_margin=None)
    result = results["zh-pos"]
    ids = result["hard_negative_ids"]
    assert len(ids) == 3 and not {"zh-pos", "zh-dup", "zh-near"} & set(ids)
    assert set(ids) <= {"zh-tide", "zh-moon", "zh-fish"}
    assert result["hard_negative_info"]["dropped"]["duplicate"] == 1
    assert result["hard_negative_info"]["dropped"]["near_duplicate"] == 1
    assert all("\u4e00" <= text[0] <= "\u9fff" for text in result["hard_negatives"])


def test_second_prepare_builds_nothing(tmp_path):
    def snapshot(index_dir: Path):
        files = sorted((str(p.relative_to(index_dir)), p.stat().st_mtime_ns) for p in index_dir.rglob("*"))
        return (index_dir / MARKER).stat().st_mtime_ns, files

    first = PyseriniRetriever(cache_dir=tmp_path, show_progress=False)
    operator = BM25HardNeg(first)
    operator.prepare(iter(ROWS))
    assert first.index_reused is False
    before, results = snapshot(first.index_path), operator.process_batch(ROWS)

    again = PyseriniRetriever(cache_dir=tmp_path, show_progress=False)
    operator = BM25HardNeg(again)
    operator.prepare(iter(ROWS))  # same corpus, same settings: the cached index is opened
    assert again.index_reused is True and again.index_path == first.index_path
    assert snapshot(again.index_path) == before
    assert operator.process_batch(ROWS) == results
    indexes = [p.name for p in tmp_path.iterdir() if not p.name.startswith(MINED_FILE)]
    assert indexes == [first.index_path.name]  # one index, no staging left


def test_a_rerun_reads_its_negatives_instead_of_searching(tmp_path, monkeypatch):
    searched: list[str] = []
    real_search = PyseriniRetriever.search_ranked

    def counting_search(self, queries, k):
        searched.extend(queries)
        return real_search(self, queries, k)

    monkeypatch.setattr(PyseriniRetriever, "search_ranked", counting_search)
    first = mine(tmp_path)
    assert sorted(searched) == sorted(row["question"] for row in ROWS)

    searched.clear()
    assert mine(tmp_path) == first and searched == []  # the same rows, pool and options: nothing searched

    changed = [dict(row, question="alpha beta") if row["id"] == "pos" else row for row in ROWS]
    fewer = mine(tmp_path, rows=changed, num_negatives=2)  # another option: every row is mined again
    assert len(searched) == len(ROWS) and all(len(r["hard_negative_ids"]) <= 2 for r in fewer.values())
    searched.clear()
    assert mine(tmp_path, rows=changed, num_negatives=2) == fewer and searched == []


def test_negatives_are_not_kept_for_a_prebuilt_index_that_may_change(pool, tmp_path):
    prebuilt_index(pool, tmp_path / "prebuilt")
    retriever = PyseriniRetriever(cache_dir=tmp_path / "cache", show_progress=False, corpus=str(tmp_path / "prebuilt"))
    retriever.prepare(iter(()))
    assert retriever.ranking_key() is None

    def key_of(path):
        retriever = PyseriniRetriever(cache_dir=tmp_path / "cache", show_progress=False, corpus=str(path))
        retriever.prepare(iter(()))  # a .jsonl pool is indexed into the cache, by content
        return retriever.ranking_key()

    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(pool.read_bytes())
    assert key_of(pool) is not None and key_of(moved) == key_of(pool)  # the same content: the same key
    moved.write_text(moved.read_text() + '{"id": "new", "text": "one more document"}\n')
    assert key_of(moved) != key_of(pool)  # another pool: negatives are mined again


def test_config_keys_reach_the_operator(tmp_path):
    from conftest import compose_config

    from rare.pipeline.build import build_steps

    cfg = compose_config(
        tmp_path,
        "steps.bm25_hardneg.skip_top=1",
        "steps.bm25_hardneg.score_margin=null",
        "steps.bm25_hardneg.near_duplicate_threshold=0.9",
        "retriever.language=zh",
        f"retriever.corpus={tmp_path / 'pool.jsonl'}",
    )
    operator = dict(build_steps(cfg.steps))["bm25_hardneg"]
    assert (operator.skip_top, operator.score_margin, operator.near_duplicate_threshold) == (1, None, 0.9)
    assert operator.retriever.language == "zh" and operator.retriever.corpus == str(tmp_path / "pool.jsonl")
    assert "hard_negative_info" in operator.writes
