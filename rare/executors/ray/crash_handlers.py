"""Keep this process's crash-signal handlers across calls that replace them (Ray's init and shutdown).

The Lucene retriever runs a JVM in the `rare` process, and the JVM uses SIGSEGV and friends
internally (implicit null checks, safepoint polls): its handlers must stay in place. `ray.init`
installs its own crash handler over them (and Python's faulthandler if off), and `ray.shutdown`
resets them to the default, so the JVM's next internal SIGSEGV would kill the process.
"""

import ctypes
import signal
from contextlib import contextmanager

CRASH_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL", "SIGTRAP") if hasattr(signal, name)
)
_SIGACTION_BYTES = 512  # larger than `struct sigaction` on every libc; the bytes are only copied back


def _sigaction():
    """libc's sigaction, or None where there is none (Windows)."""
    try:
        return ctypes.CDLL(None, use_errno=True).sigaction
    except (OSError, AttributeError):
        return None


def current_actions() -> dict[int, ctypes.Array]:
    """The C `struct sigaction` of each of CRASH_SIGNALS, as raw bytes (its first field is the handler)."""
    sigaction, actions = _sigaction(), {}
    for number in CRASH_SIGNALS if sigaction else ():
        buffer = ctypes.create_string_buffer(_SIGACTION_BYTES)
        if sigaction(number, None, buffer) == 0:
            actions[number] = buffer
    return actions


@contextmanager
def crash_handlers_kept():
    """Run the block, then put back the handlers of CRASH_SIGNALS exactly as they were (C level)."""
    from rare.retrieval.lucene.java import wait_for_java

    wait_for_java()  # a JVM booting meanwhile would install handlers that the restore then removes
    saved = current_actions()
    try:
        yield
    finally:
        sigaction = _sigaction()
        for number, buffer in saved.items():
            sigaction(number, buffer, None)
