"""The llama.cpp server child processes: started on a free port, waited for, stopped in order.

A registry with reference counts keeps one process per distinct settings. The child never
outlives `rare`: the kernel kills it when its parent dies (prctl PR_SET_PDEATHSIG, also after
`kill -9`), `atexit` stops it, and while it runs a SIGTERM sent to `rare` becomes `SystemExit`
so the runner's `finally` blocks release it. The child has its own process group, so a Ctrl-C
in the terminal reaches `rare`, which then stops it in order.
"""

from __future__ import annotations

import atexit
import ctypes
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

from rare.errors import RareError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STOP_TIMEOUT_S = 2.0  # grace after SIGTERM before SIGKILL (the server would finish a running answer first)
PR_SET_PDEATHSIG = 1


class LocalServerError(RareError):
    """The embedded model server could not start."""


@dataclass
class _Child:
    process: subprocess.Popen
    url: str
    port: int
    log_path: Path
    log_file: object
    owner_pid: int
    users: int = 0


registry_lock = threading.RLock()
children: dict[tuple, _Child] = {}
_previous_sigterm = None


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


def child_env() -> dict:
    env = dict(os.environ)
    for name in ("HOST", "PORT", "CONFIG_FILE"):  # the server reads these and they would win over our flags
        env.pop(name, None)
    # llama.cpp's OpenMP threads spin at every barrier by default: when another process holds one
    # of the cores, generation on 2 threads slowed to a crawl.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def start_child(server) -> _Child:
    """Start `server` (a `LocalServer`) on a free port and wait until it answers."""
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
            env=child_env(),
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
            stop_child(child)
            raise
        tail = _tail(child.log_path)
        stop_child(child, keep_log=True)
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


def stop_child(child: _Child, keep_log: bool = False) -> None:
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
    with registry_lock:
        for key, child in list(children.items()):
            if child.owner_pid == os.getpid():
                stop_child(child)
            del children[key]


def _sigterm_to_exit(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _catch_sigterm() -> None:
    """While a child runs, SIGTERM ends `rare` through its `finally` blocks (they stop the child)."""
    global _previous_sigterm
    if _previous_sigterm is not None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # never replace someone else's handler
        _previous_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_exit)


def restore_sigterm() -> None:
    global _previous_sigterm
    if _previous_sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _previous_sigterm)
        _previous_sigterm = None


atexit.register(_stop_all)
