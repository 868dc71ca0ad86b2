"""A local OpenAI-compatible server for tests and benchmarks.

It answers chat completions deterministically (see `rare.testing.responder`),
implements the Files/Batch API in memory, injects faults on demand (see
`rare.testing.faults`) and exposes `/_stats`, `/_config` and `/_reset` for tests.

Run it in-process with `serve()` or as a subprocess with `serve_process()`; both
yield a `RunningServer` whose `.url` is an `api_base` for litellm. From a shell:

    python -m rare.testing.openai_server --port 0 --latency 0.2 --fault 429=0.1

prints `READY http://127.0.0.1:PORT/v1` once it is listening.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from rare.testing.app import create_app
from rare.testing.state import ServerConfig

__all__ = ["RunningServer", "ServerConfig", "create_app", "main", "serve", "serve_process"]

HOST = "127.0.0.1"
# How long in-flight handlers (e.g. a "timeout" fault) may delay shutdown.
_SHUTDOWN_TIMEOUT_S = 0.5
# Control calls must reach 127.0.0.1 directly even if a proxy is configured.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RunningServer:
    """Handle on a running test server: its `url` plus the control endpoints."""

    def __init__(self, url: str, process: subprocess.Popen | None = None):
        self.url = url  # e.g. http://127.0.0.1:PORT/v1, usable as litellm's api_base
        self.base_url = url.removesuffix("/v1")
        self.port = int(self.base_url.rsplit(":", 1)[1])
        self.process = process  # the subprocess, for servers started by serve_process()

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        with _OPENER.open(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict:
        """Counters from `/_stats`."""
        return self._call("GET", "/_stats")

    def configure(self, **changes: Any) -> dict:
        """Update config fields at runtime; returns the resulting config."""
        return self._call("POST", "/_config", changes)

    def reset(self) -> None:
        """Clear counters, files and batches."""
        self._call("POST", "/_reset", {})

    def finish_batches(self) -> int:
        """Complete every unfinished batch now, whatever its delay; returns how many."""
        return self._call("POST", "/_batches/finish", {})["finished"]


async def _start(config: ServerConfig | None, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(
        create_app(config),
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return runner, runner.addresses[0][1]


@contextmanager
def serve(config: ServerConfig | None = None, host: str = HOST, port: int = 0) -> Iterator[RunningServer]:
    """Run the server on a background thread with its own event loop."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            runner, outcome["port"] = loop.run_until_complete(_start(config, host, port))
        except BaseException as exc:
            outcome["error"] = exc
            started.set()
            loop.close()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="openai-test-server", daemon=True)
    thread.start()
    started.wait()
    if "error" in outcome:
        thread.join()
        raise outcome["error"]
    try:
        yield RunningServer(f"http://{host}:{outcome['port']}/v1")
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def _read_ready_line(stream: Any, lines: queue.Queue) -> None:
    lines.put(stream.readline())


@contextmanager
def serve_process(
    config: ServerConfig | None = None, host: str = HOST, port: int = 0, startup_timeout_s: float = 30.0
) -> Iterator[RunningServer]:
    """Run the server as a subprocess (`python -m rare.testing.openai_server`)."""
    config_json = json.dumps(dataclasses.asdict(config or ServerConfig()))
    env = dict(os.environ)
    project_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (project_root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "rare.testing.openai_server", "--host", host, "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--config", config_json],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_ready_line, args=(process.stdout, lines), daemon=True).start()
        try:
            line = lines.get(timeout=startup_timeout_s)
        except queue.Empty:
            raise RuntimeError(f"test server did not start within {startup_timeout_s}s") from None
        if not line.startswith("READY "):
            raise RuntimeError(f"test server failed to start (exit code {process.poll()}): {line!r}")
        yield RunningServer(line.split()[1], process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


async def _serve_forever(config: ServerConfig, host: str, port: int) -> None:
    runner, bound_port = await _start(config, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY http://{host}:{bound_port}/v1", flush=True)
    await stop.wait()
    await runner.cleanup()


def _fault_rate(text: str) -> tuple[str, float]:
    name, sep, rate = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected FAULT=RATE, got {text!r}")
    return name, float(rate)


def parse_args(argv: list[str] | None = None) -> tuple[ServerConfig, str, int]:
    """Parse CLI arguments into a config plus the address to listen on."""
    parser = argparse.ArgumentParser(prog="python -m rare.testing.openai_server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config", default="{}", help="JSON object of ServerConfig fields (flags below override it)")
    parser.add_argument("--latency", type=float, dest="latency_s")
    parser.add_argument("--jitter", type=float, dest="jitter_s")
    parser.add_argument("--fault", type=_fault_rate, action="append", dest="faults", metavar="FAULT=RATE")
    parser.add_argument("--script", type=lambda s: s.split(","), help="comma-separated faults for the next requests")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--batch-delay", type=float, dest="batch_delay_s")
    parser.add_argument("--require-api-key", dest="require_api_key")
    parser.add_argument("--responder", help="module:function producing the answer content")
    args = parser.parse_args(argv)
    changes = json.loads(args.config)
    for name in ("latency_s", "jitter_s", "script", "seed", "batch_delay_s", "require_api_key", "responder"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.faults:
        changes["faults"] = dict(args.faults)
    return ServerConfig().updated(changes), args.host, args.port


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: serve until SIGTERM/SIGINT."""
    config, host, port = parse_args(argv)
    asyncio.run(_serve_forever(config, host, port))


if __name__ == "__main__":
    main()
