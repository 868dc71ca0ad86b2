"""The whole pipeline, in-process, against the local server through real litellm and real Lucene."""

import json

from conftest import compose_config, read_jsonl, server_overrides

from rare.runner import run


def test_pipeline_writes_every_field_and_step_file(tmp_path, server, small_corpus):
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}")
    manifest = run(cfg)

    run_dir = tmp_path / "run"
    rows = read_jsonl(run_dir / "dataset.jsonl")
    assert len(rows) == 12
    inputs = {row["id"]: row["text"] for row in read_jsonl(small_corpus)}
    for row in rows:
        assert row["text"] == inputs[row["id"]]
        assert row["question"] and row["scenario"]
        assert len(row["hard_negatives"]) == 3
        assert row["text"] not in row["hard_negatives"]
        assert row["id"] not in row["hard_negative_ids"]
        assert row["hard_negative_scores"] == sorted(row["hard_negative_scores"], reverse=True)
        assert row["reasoning"].strip()
        assert 1 <= row["positive_index"] <= 4
    for step in range(4):
        assert (run_dir / f"rare_step{step}.jsonl").exists()
    assert not list(run_dir.glob("*.partial.jsonl"))
    assert [s["name"] for s in manifest["steps"]] == ["doc2query", "bm25_hardneg", "reason_distill"]
    assert [s["rows_out"] for s in manifest["steps"]] == [12, 12, 12]
    assert manifest["steps"][0]["usage"]["calls"] == 12
    assert server.stats()["total_requests"] >= 24
    saved = json.loads((run_dir / "manifest.json").read_text())
    assert saved["status"] == "completed" and saved["input"]["rows"] == 12


def test_negatives_are_the_look_alike_documents(tmp_path, server, small_corpus):
    """The test server's questions reuse the document's words, so its look-alike pair ranks high."""
    cfg = compose_config(tmp_path, *server_overrides(server), f"data.input={small_corpus}")
    run(cfg)
    rows = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    scores = [row["hard_negative_scores"][0] for row in rows]
    assert all(score > 0 for score in scores)


def test_storage_formats_name_files_the_dataflow_way(tmp_path, server, small_corpus):
    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={small_corpus}",
        "storage=parquet",
        "storage.file_name_prefix=mycache",
    )
    run(cfg)
    run_dir = tmp_path / "run"
    assert (run_dir / "mycache_step3.parquet").exists()
    assert len(read_jsonl(run_dir / "dataset.jsonl")) == 12


def test_same_seed_same_shuffle_other_seed_other_shuffle(tmp_path, server, small_corpus):
    def positions(seed: int, name: str) -> dict:
        cfg = compose_config(tmp_path / name, *server_overrides(server), f"data.input={small_corpus}", f"seed={seed}")
        run(cfg)
        return {row["id"]: row["positive_index"] for row in read_jsonl(tmp_path / name / "run" / "dataset.jsonl")}

    first, again, other = positions(7, "a"), positions(7, "b"), positions(8, "c")
    assert first == again
    assert first != other
    assert len(set(first.values())) > 1  # the positive is not always in the same place


def test_secrets_never_reach_the_run_dir(tmp_path, server, small_corpus):
    secret = "rare-secret-DISTINCTIVE-0123456789"
    cfg = compose_config(
        tmp_path, "llm=openai", f"llm.api_base={server.url}", f"llm.api_key={secret}", f"data.input={small_corpus}"
    )
    run(cfg, overrides=[f"llm.api_key={secret}"])
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(encoding="utf-8", errors="ignore"), path
