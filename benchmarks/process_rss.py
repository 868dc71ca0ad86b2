"""Peak RSS of each process of a command's process tree, by polling /proc (Linux).

`tree_peaks(args)` runs `args` and returns the peak RSS (VmHWM) of every process it starts, its
children and theirs included, by role: `parent` (the command itself), `forkserver`, `worker N`
(multiprocessing's workers, in start order), `other` (anything else, e.g. a JVM child). A process
is read every `POLL_S` while it lives; VmHWM never decreases, so the last reading before it ends is
its peak to within what it grew in its last `POLL_S`.

Usage: python benchmarks/process_rss.py COMMAND...   (prints one line per process, MiB)
"""

import os
import subprocess
import sys
import time

POLL_S = 0.05


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as handle:
            return dict(line.rstrip("\n").split(":\t", 1) for line in handle if ":\t" in line)
    except OSError:  # ended between the listing and the read
        return {}


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as handle:
                found.extend(int(child) for child in handle.read().split())
    except OSError:
        pass
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kib(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def tree_peaks(args: list[str], env: dict | None = None) -> dict[str, float]:
    """Run `args` to its end (it must succeed); the peak RSS MiB of each of its processes, by role."""
    child = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    seen: dict[int, tuple[int, str]] = {}  # pid -> (parent pid, command line), as last read
    peaks: dict[int, int] = {}
    while child.poll() is None:
        frontier = [child.pid]
        while frontier:
            pid = frontier.pop()
            status = _status(pid)
            if not status:
                continue
            # read at every poll: a process seen between its fork and its exec still shows its parent's command
            seen[pid] = (int(status.get("PPid", "0")), _cmdline(pid))
            peaks[pid] = max(peaks.get(pid, 0), _kib(status.get("VmHWM")))
            frontier.extend(_children(pid))
        time.sleep(POLL_S)
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, args)
    by_role: dict[str, float] = {}
    for pid, role in _roles(child.pid, seen).items():
        by_role[role] = max(by_role.get(role, 0.0), peaks[pid] / 1024)
    return by_role


def _roles(root: int, seen: dict[int, tuple[int, str]]) -> dict[int, str]:
    """Each process's role: the command itself, multiprocessing's forkserver, its workers (in pid order)."""
    servers = {pid for pid, (parent, command) in seen.items() if pid != root and "forkserver" in command}
    servers -= {pid for pid in servers if seen[pid][0] in servers}  # a forkserver's children share its command
    roles = {root: "parent", **{pid: "forkserver" for pid in servers}}
    workers = sorted(pid for pid, (parent, _) in seen.items() if parent in servers)
    roles.update({pid: f"worker {number}" for number, pid in enumerate(workers, 1)})
    return {pid: roles.get(pid, "other") for pid in seen}


if __name__ == "__main__":
    for role, mib in tree_peaks(sys.argv[1:]).items():
        print(f"{role:12s} {mib:8.1f} MiB")
