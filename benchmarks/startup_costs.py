"""What rare's start-up and shutdown cost: the numbers its docstrings point to, measured here.

Each row runs in a fresh Python process (nothing is warm but the OS file cache), --repeats
times, and prints the median:
  - CPU seconds to import litellm (why rare imports it on first use, and once per run for
    worker processes);
  - CPU seconds to boot the JVM with only pyserini's class path, against importing
    pyserini's Python search module (torch, transformers, an OpenAI client: why rare drives
    Lucene's classes itself);
  - wall seconds of the interpreter's teardown with litellm and the JVM loaded (why `rare`
    exits with os._exit once everything that matters has run);
  - seconds to load only the vocabulary of the embedded model's GGUF file (documents are cut
    by the model's own tokens).

Usage: python benchmarks/startup_costs.py [--repeats 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PRELUDE = """
import json, os, sys, time
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, {root!r})
def cpu():
    return time.process_time()
"""

PROBES = {
    "import litellm (CPU s)": """
started = cpu()
from rare.llm import load_litellm
load_litellm()
print(json.dumps(cpu() - started))
""",
    "boot the JVM, pyserini's class path only (CPU s)": """
started = cpu()
from rare.retrieval.lucene.java import import_lucene
import_lucene()
print(json.dumps(cpu() - started))
""",
    "import pyserini.search.lucene (CPU s)": """
from rare.retrieval.lucene.java import import_lucene
os.environ.setdefault("OPENAI_API_KEY", "unused")
started = cpu()
import_lucene()
import pyserini.search.lucene
print(json.dumps(cpu() - started))
""",
    "load the embedded model's vocabulary only (s)": """
from rare.llm.local.model_file import bundled_model_path
from rare.llm.tokens import GGUFTokenizer
started = time.perf_counter()
GGUFTokenizer(bundled_model_path()).encode("warm")
print(json.dumps(time.perf_counter() - started))
""",
}

TEARDOWN = """
from rare.llm import load_litellm
from rare.retrieval.lucene.java import import_lucene
load_litellm(); import_lucene()
print(json.dumps(time.time()), flush=True)
"""


def probe(body: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE.format(root=str(ROOT)) + body],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return float(done.stdout.strip().splitlines()[-1])


def teardown_s() -> float:
    """Seconds from the script's last line to the process's exit (a normal exit, as Python does it)."""
    process = subprocess.Popen(
        [sys.executable, "-c", PRELUDE.format(root=str(ROOT)) + TEARDOWN],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    finished_at = json.loads(process.stdout.readline())
    process.wait()
    return time.time() - finished_at


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = {name: [probe(body) for _ in range(args.repeats)] for name, body in PROBES.items()}
    rows["interpreter teardown with litellm and the JVM loaded (wall s)"] = [teardown_s() for _ in range(args.repeats)]
    print(f"load average {os.getloadavg()[0]:.2f}, median of {args.repeats}")
    for name, values in rows.items():
        print(f"{name:<66} {statistics.median(values):6.2f}   ({min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()
