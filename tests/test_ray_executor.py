"""executor=ray: the same pipeline on a local Ray instance gives the same dataset, streamed or step after
step; one rate limit for all actors."""

import signal
import sqlite3
import threading
import time

import pytest

ray = pytest.importorskip("ray")

from conftest import (  # noqa: E402
    TOPICS,
    compose_config,
    look_alike_documents,
    read_jsonl,
    request_keys,
    server_overrides,
    write_corpus,
)
from test_resume import read_jsonl_complete, start_rare, wait_for_rows  # noqa: E402

from rare.errors import ConfigError  # noqa: E402
from rare.executors.ray.executor import init_ray, shutdown_ray  # noqa: E402
from rare.pipeline.runner import run  # noqa: E402
from rare.testing.responder import default_responder  # noqa: E402

UNUSABLE_DOC = f"{TOPICS[3]}. Related:"  # only doc-03 starts so: its questions always come back unusable
REQUEST_TIMES: list[float] = []  # filled by `timed_responder`
ONLY_DOC2QUERY = ["steps.bm25_hardneg=null", "steps.reason_distill=null"]
STEP_FILES = ("dataset.jsonl", "rare_doc2query.jsonl", "rare_bm25_hardneg.jsonl", "rare_reason_distill.jsonl")
STREAM_ON_RAY = ["executor=ray", "executor.streaming=true", "executor.actors=1", "executor.batch_size=4"]


def responder_failing_one_doc(body: dict) -> str:
    """The default fake-LLM answer, except prose instead of JSON for every request about doc-03."""
    if any(UNUSABLE_DOC in str(message.get("content")) for message in body["messages"]):
        return "I would rather not answer in JSON."
    return default_responder(body)


def timed_responder(body: dict) -> str:
    """The default fake-LLM answer, noting when the server answered."""
    REQUEST_TIMES.append(time.monotonic())
    return default_responder(body)


def cached_answers(root) -> int:
    with sqlite3.connect(root / "cache" / "llm_cache.sqlite") as cache:
        return cache.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance on 127.0.0.1 with 2 CPUs, shared by this module's tests."""
    init_ray(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        _node_ip_address="127.0.0.1",
        logging_level="warning",
    )
    yield
    shutdown_ray()


def crash_handlers() -> dict[int, bytes]:
    """The C-level handler (address) of each crash signal in this process."""
    import ctypes

    from rare.executors.ray.crash_handlers import current_actions

    return {number: action.raw[: ctypes.sizeof(ctypes.c_void_p)] for number, action in current_actions().items()}


def test_starting_and_stopping_ray_keeps_the_jvms_crash_handlers():
    """The Lucene JVM in this process handles its own SIGSEGVs; Ray must not replace or reset its handlers."""
    from rare.retrieval.lucene.java import import_lucene

    import_lucene()
    before = crash_handlers()
    assert not ray.is_initialized(), "this test must run before the module's shared Ray instance starts"
    init_ray(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="warning")
    assert crash_handlers() == before
    shutdown_ray()
    assert crash_handlers() == before


def test_bad_executor_settings_are_named_before_any_call(tmp_path, server, small_corpus):
    settings = [*server_overrides(server), f"data.input={small_corpus}", *ONLY_DOC2QUERY, "executor=ray"]
    with pytest.raises(ConfigError, match="executor.actors must be at least 1"):
        run(compose_config(tmp_path, *settings, "executor.actors=0"))
    cfg = compose_config(tmp_path / "b", *settings, "executor.address=127.0.0.1:1")
    with pytest.raises(ConfigError, match="could not start or join the Ray cluster at 127.0.0.1:1.*ray start --head"):
        run(cfg)
    assert server.stats()["total_requests"] == 0


def test_ray_gives_the_same_dataset_and_failures_as_local(tmp_path, server, small_corpus, ray_instance):
    """Cold caches on both sides, so every ray row is really asked of the server by an actor."""
    server.configure(responder=f"{__name__}:responder_failing_one_doc")
    local = run(compose_config(tmp_path / "local", *server_overrides(server), f"data.input={small_corpus}"))
    local_requests = server.stats()["total_requests"]
    server.reset()

    cfg = compose_config(
        tmp_path / "ray",
        *server_overrides(server),
        f"data.input={small_corpus}",
        "executor=ray",
        "executor.actors=2",
        "executor.batch_size=4",
    )
    on_ray = run(cfg)

    assert server.stats()["total_requests"] == local_requests
    dataset = (tmp_path / "local" / "run" / "dataset.jsonl").read_bytes()
    assert (tmp_path / "ray" / "run" / "dataset.jsonl").read_bytes() == dataset
    assert on_ray["dataset"]["sha256"] == local["dataset"]["sha256"]
    assert [s["rows_out"] for s in on_ray["steps"]] == [11, 11, 11]
    assert [s["usage"]["calls"] for s in on_ray["steps"] if s["usage"]] == [
        s["usage"]["calls"] for s in local["steps"] if s["usage"]
    ]
    failed = read_jsonl(tmp_path / "ray" / "run" / "failed.jsonl")
    assert failed == read_jsonl(tmp_path / "local" / "run" / "failed.jsonl")
    assert [(f["step"], f["id"]) for f in failed] == [("doc2query", "doc-03")]
    # the actors wrote their answers to the shared response cache, for the next run to reuse
    assert cached_answers(tmp_path / "ray") == cached_answers(tmp_path / "local") >= 11 + 11


def test_rpm_is_one_limit_for_all_actors(tmp_path, server, ray_instance):
    """rpm=600 over 2 actors: every request is answered, each actor paced by the run-wide limiter."""
    documents = [
        {"id": f"d{i}", "text": f"document {i} on renal dosing, contract law and bond duration {i}"} for i in range(40)
    ]
    corpus = write_corpus(tmp_path / "docs.jsonl", documents)
    server.configure(responder=f"{__name__}:timed_responder")
    REQUEST_TIMES.clear()
    cfg = compose_config(
        tmp_path,
        *server_overrides(server),
        f"data.input={corpus}",
        *ONLY_DOC2QUERY,
        "llm.rpm=600",
        "executor=ray",
        "executor.actors=2",
        "executor.batch_size=4",
    )
    manifest = run(cfg)
    assert manifest["steps"][0]["rows_out"] == 40
    assert len(REQUEST_TIMES) == 40


@ray.remote
class _Acquirer:
    """A Ray actor asking the run's shared limiter for slots, as a step's actor does."""

    def __init__(self, limits, key):
        from rare.executors.ray.limits import ClusterLimiter

        self.limiter = ClusterLimiter(limits, key)

    async def grants(self, count: int) -> list[float]:
        import asyncio

        return list(await asyncio.gather(*(self.limiter.acquire() for _ in range(count))))


def test_the_shared_limiter_spaces_the_grants_of_all_actors_whatever_the_machine_speed(ray_instance):
    """The times the limiter grants (its own clock, not when a request happens to reach the server,
    which start-up and scheduling delays bunch up on a busy machine): 10/s with a 1 s burst for
    40 requests from 2 actors means the n-th grant comes >= (n - 9) / 10 s after the first."""
    from rare.executors.ray.limits import RunLimits

    limits = RunLimits.remote()
    key = ("openai/test", "http://127.0.0.1:1/v1", 600.0, None, "used")  # model, endpoint, rpm, tpm, tpm_counts
    actors = [_Acquirer.remote(limits, key) for _ in range(2)]
    grants = sorted(t for granted in ray.get([actor.grants.remote(20) for actor in actors]) for t in granted)
    assert len(grants) == 40
    early = [(n, round(t - grants[0], 3)) for n, t in enumerate(grants) if t - grants[0] < (n - 9) / 10 - 0.01]
    assert not early, f"grants (n, seconds after the first) earlier than one shared 10/s limit allows: {early}"
    assert grants[-1] - grants[0] >= 2.99


@ray.remote(max_calls=1)  # the worker process exits after: its installed limiters leave with it
def _limiters_of_an_actor(op, limits) -> list[str]:
    """Which limiter each client of `op` paces its calls with, in an actor of the step's pool."""
    from rare.executors.ray.actor import RowStepActor

    RowStepActor(op, limits, concurrency=4)
    return [type(client._limiter()).__name__ for client in op.clients()]


def test_the_calls_of_a_teacher_inside_a_step_are_paced_by_the_shared_limiter(tmp_path, server, ray_instance):
    """verify with samples > 1 calls through its judge and through the teacher step it holds; on Ray
    both must wait on the run-wide limiter, also when the teacher has ceilings of its own."""
    from rare.executors.ray.limits import RunLimits
    from rare.pipeline.build import build_steps

    cfg = compose_config(tmp_path, *server_overrides(server), "preset=full", "steps.verify.samples=3", "llm.rpm=600")
    verify = dict(build_steps(cfg.steps))["verify"]
    verify.teacher.llm.rpm = 300.0  # another model's ceiling: a limiter key of its own
    limits = RunLimits.remote()
    try:
        assert ray.get(_limiters_of_an_actor.remote(verify, limits)) == ["ClusterLimiter", "ClusterLimiter"]
    finally:
        ray.kill(limits)


def journal_ids(path) -> set[str]:
    return {row["id"] for row in read_jsonl_complete(path)} if path.exists() else set()


def test_streamed_on_ray_a_row_reaches_the_last_step_while_another_is_held_and_the_bytes_are_local_ones(
    tmp_path, server, small_corpus, ray_instance, caplog
):
    """Against a local run step after step (cold caches on both sides): the same requests, the same files."""
    local = run(compose_config(tmp_path / "local", *server_overrides(server), f"data.input={small_corpus}"))
    local_requests = server.stats()["total_requests"]
    server.reset()
    rows = read_jsonl(small_corpus)
    held = rows[5]["id"]
    server.configure(delay_prompt_keys={request_keys(tmp_path, "doc2query", rows)[held]: 8.0})
    cfg = compose_config(tmp_path / "ray", *server_overrides(server), f"data.input={small_corpus}", *STREAM_ON_RAY)
    run_dir = tmp_path / "ray" / "run"
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.setdefault("manifest", run(cfg)))
    with caplog.at_level("INFO", logger="rare"):
        runner.start()
        seen_while_held = set()
        while runner.is_alive() and not seen_while_held:
            if held not in journal_ids(run_dir / "rare_doc2query.partial.jsonl"):
                seen_while_held = journal_ids(run_dir / "rare_reason_distill.partial.jsonl")
            time.sleep(0.05)
        runner.join(timeout=120)
    assert seen_while_held, "no row reached reason_distill while the held row was still in doc2query"
    assert held not in seen_while_held
    assert "streaming doc2query, bm25_hardneg, reason_distill on Ray actors" in caplog.text
    assert server.stats()["total_requests"] == local_requests
    for name in STEP_FILES:
        assert (run_dir / name).read_bytes() == (tmp_path / "local" / "run" / name).read_bytes(), name
    on_ray = outcome["manifest"]
    assert [s["rows_out"] for s in on_ray["steps"]] == [12, 12, 12]
    assert [s["usage"].get("calls") for s in on_ray["steps"]] == [s["usage"].get("calls") for s in local["steps"]]
    assert on_ray["steps"][0]["wall_s"] >= 8.0  # from its first row to its last, the held one


def test_kill_9_in_a_ray_stream_then_resume_asks_nothing_finished_again(tmp_path, server):
    """Each `rare` process starts its own local Ray instance (which ends with it, also on kill -9)."""
    documents = look_alike_documents()
    corpus = write_corpus(tmp_path / "corpus.jsonl", documents)
    held = documents[7]["id"]
    server.configure(latency_s=0.1, delay_prompt_keys={request_keys(tmp_path, "doc2query", documents)[held]: 60.0})
    on_ray = [*STREAM_ON_RAY, "executor.num_cpus=2"]
    run_dir = tmp_path / "run"
    process = start_rare(run_dir, server, corpus, *on_ray)
    wait_for_rows(run_dir / "rare_reason_distill.partial.jsonl", 2, process, timeout_s=120)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    finished = {
        step: read_jsonl_complete(run_dir / f"rare_{step}.partial.jsonl") for step in ("doc2query", "reason_distill")
    }
    assert held not in {row["id"] for row in finished["doc2query"]}, "the kill was not in the middle of the stream"

    server.configure(delay_prompt_keys={})
    resumed = start_rare(run_dir, server, corpus, *on_ray, f"resume={run_dir}")
    output, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, output
    assert sorted(row["id"] for row in read_jsonl(run_dir / "dataset.jsonl")) == sorted(d["id"] for d in documents)
    counts = server.stats()["prompt_keys"]
    for step, rows in finished.items():
        for row_id, key in request_keys(tmp_path, step, rows).items():
            assert counts[key] == 1, f"{step}: row {row_id} finished before the kill but was asked again"
