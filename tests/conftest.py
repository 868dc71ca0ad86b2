"""Shared fixtures: the real `conf/` composed by Hydra, and a local OpenAI-compatible server."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hypothesis import settings  # noqa: E402

from rare.config.paths import config_dir  # noqa: E402
from rare.testing.openai_server import serve  # noqa: E402

TEST_KEY = "test-key-not-secret"

# Property tests draw the same examples on every run, so a red suite always means a change broke
# something; `HYPOTHESIS_PROFILE=explore` searches new random examples (a found bug becomes an @example).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(scope="session")
def llm_server():
    """One in-process OpenAI-compatible server for the session."""
    with serve() as server:
        yield server


@pytest.fixture
def server(llm_server):
    """The shared server with counters and faults cleared."""
    llm_server.reset()
    llm_server.configure(
        latency_s=0.0,
        jitter_s=0.0,
        faults={},
        script=[],
        require_api_key=None,
        answer_key={},
        correct_rate=1.0,
        rpm=None,
        tpm=None,
        rate_burst_s=1.0,
        tpm_counts="used",
        long_answer_share=0.0,
        fail_prompt_keys={},
        delay_prompt_keys={},
    )
    yield llm_server


def compose_config(tmp_path: Path, *overrides: str):
    """The real `conf/pipeline.yaml` composed with overrides, writing under `tmp_path`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(
            "pipeline",
            overrides=[f"paths.output_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *overrides],
        )


def server_overrides(server) -> list[str]:
    """Point the default provider at the local server."""
    return ["llm=openai", f"llm.api_base={server.url}", f"llm.api_key={TEST_KEY}"]


def request_keys(tmp_path: Path, step_name: str, rows: list[dict]) -> dict[str, str]:
    """Prompt keys of the exact requests the step sends for `rows` (as the server counts them), by row id;
    `server.configure(fail_prompt_keys=...)` makes those rows fail."""
    from rare.pipeline.build import build_steps
    from rare.pipeline.step_contract import StepContext
    from rare.testing.responder import prompt_key

    cfg = compose_config(tmp_path / "keys")
    op = dict(build_steps(cfg.steps))[step_name]
    op.bind(StepContext(name=step_name, index=0, seed=int(cfg.seed)))
    return {row["id"]: prompt_key(op.messages(row)) for row in rows}


def write_corpus(path: Path, documents: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in documents), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    # split on "\n" only: splitlines() would also cut at a U+2028 inside a JSON string
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


TOPICS = [
    "warfarin anticoagulation reversal vitamin k prothrombin complex",
    "dabigatran thrombin inhibitor reversal idarucizumab renal clearance",
    "negligence duty of care breach causation damages foreseeability",
    "strict liability abnormally dangerous activities defendant fault",
    "fifo inventory costing inflation cost of goods sold taxable income",
    "lifo inventory costing inflation layers liquidation tax deferral",
    "macaulay duration bond cash flows weighted average time",
    "modified duration bond price sensitivity yield change convexity",
    "gdpr lawful basis consent legitimate interest data controller",
    "beta blockers heart rate hypertension asthma bronchospasm",
    "ace inhibitors cough angioedema hyperkalemia renal artery stenosis",
    "contract offer acceptance consideration revocation mailbox rule",
]


def look_alike_documents() -> list[dict]:
    """Twelve short documents; each repeats its three predecessors' topics, so any word of a
    document occurs in at least three others and every question has look-alikes to find."""
    n = len(TOPICS)
    return [
        {
            "id": f"doc-{i:02d}",
            "text": f"{TOPICS[i]}. Related: " + "; ".join(TOPICS[(i - j) % n] for j in (1, 2, 3)) + ".",
        }
        for i in range(n)
    ]


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl", look_alike_documents())


def sharing_processes(workers: int) -> set[str]:
    """The slots that share a sharded step's rows (`rows_by_process`): the workers, and the parent
    unless it only coordinates them."""
    from rare.executors.local.workers import parent_waits, worker_slots

    return {str(slot) for slot in worker_slots(workers)} | (set() if parent_waits() else {"0"})
