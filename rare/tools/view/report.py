"""What the report shows, gathered from a run dir: funnel, usage, histograms and row cards."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import jinja2
from markupsafe import Markup

from rare.pipeline.step_run import DROPPED_FILE
from rare.rundir.manifest import Manifest, StepReport
from rare.rundir.partial import finished_lines
from rare.rundir.record import FAILURES, RunRecord, positive_id, shown_documents
from rare.rundir.resume import failed_ids
from rare.tools.view.charts import histogram_svg

MAX_CARDS = 500  # cards beyond this are counted, not shown: the page stays light for big runs
TOP_REASONS = 3  # failure reasons listed per step
MISMATCH = "Documents are shown in BM25 order, not the teacher's"


def build_report(run_dir: str | Path, max_cards: int = MAX_CARDS) -> str:
    """The report of the run in `run_dir` as one HTML page (inline CSS and JS, nothing fetched)."""
    record = RunRecord(run_dir)
    manifest = record.manifest()
    taken_at = datetime.now(UTC)
    last = record.last_step_with_rows()
    cards, lengths, total, notes = _cards(record, last, max_cards)
    context = {
        "run_name": record.path.name,
        "run_path": str(record.path),
        "manifest": manifest,
        "snapshot": _snapshot(record, manifest, taken_at),
        "elapsed_s": _elapsed_s(manifest, taken_at),
        "models": record.models(),
        "funnel": _funnel(record, manifest),
        "usage": _usage(record, manifest),
        "charts": [
            Markup(histogram_svg(lengths["question"], "question length", " words")),
            Markup(histogram_svg(lengths["reasoning"], "reasoning length", " words")),
            Markup(histogram_svg(lengths["bm25"], "BM25 scores of hard negatives")),
        ],
        "chart_titles": ["Question length (words)", "Reasoning length (words)", "BM25 score of hard negatives"],
        "cards": cards,
        "total_rows": total,
        "rows_step": list(record.steps)[last - 1] if last else "input",
        "rows_final": manifest.status == "completed",
        "notes": notes,
    }
    return _template().render(**context)


def _snapshot(record: RunRecord, manifest: Manifest, taken_at: datetime) -> str | None:
    """What the page says of a run that has not completed: None for a completed one."""
    if manifest.status == "completed":
        return None
    at = taken_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    if manifest.status == "running":
        return (
            f"This run is still going (status running): this page is a snapshot of what it had written at {at}. "
            "A step marked running shows the rows it has finished so far; its tokens and cost are counted when it "
            "ends. Run `rare view` again for newer rows. (A run killed with kill -9 stays running too: "
            f"`rare resume={record.path}` continues it.)"
        )
    return (
        f"This run stopped before the end (status {manifest.status}): this page shows what it had written by {at}. "
        f"`rare resume={record.path}` continues it."
    )


def _elapsed_s(manifest: Manifest, taken_at: datetime) -> float:
    """The run's wall time, or for a run still going, the time since it started."""
    if manifest.wall_s is not None or manifest.status != "running":
        return manifest.wall_s or 0.0
    try:
        return max(0.0, (taken_at - datetime.fromisoformat(manifest.started_at)).total_seconds())
    except ValueError:
        return 0.0


def _template() -> jinja2.Template:
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)  # every value is escaped
    return environment.from_string((Path(__file__).parent / "report.html.j2").read_text(encoding="utf-8"))


def _funnel(record: RunRecord, manifest: Manifest) -> list[dict]:
    """Rows in and out of the input and of each step, with failures, filtered rows and rejections."""
    failures, dropped = record.failures(), record.dropped()
    stages = [
        {
            "name": "input",
            "state": None,
            "rows_in": None,
            "rows_out": manifest.input_rows,
            "failed": manifest.skipped_inputs,
            "filtered": 0,
            "rejected": None,
            "reasons": _reasons(failures, "input"),
            "drops": [],
        }
    ]
    verified = record.column("verified")
    for step, live in _step_reports(record, manifest):
        rejected = None
        if verified in (record.steps.get(step.name, {}).get("outputs") or {}).values():
            rejected = sum(1 for row in record.rows(record.step_index(step.name)) if row.get(verified) is False)
        stages.append(
            {
                "name": step.name,
                "state": _state(manifest, step, live),
                "rows_in": None if live else step.rows_in,
                "rows_out": step.rows_out,
                "failed": step.failed,
                "filtered": step.filtered,
                "rejected": rejected,
                "reasons": _reasons(failures, step.name),
                "drops": _reasons(dropped, step.name),
            }
        )
    widest = max([s["rows_out"] for s in stages] + [1])
    for stage in stages:
        stage["bar"] = round(100 * stage["rows_out"] / widest, 1)
    return stages


def _step_reports(record: RunRecord, manifest: Manifest) -> list[tuple[StepReport, bool]]:
    """Each step's report, and whether it is counted live: the manifest's once the step ended; for
    a step that has not (or did not: the run stopped in it), its rows finished, failed and filtered
    so far, counted from its journals (or step file), failed.jsonl and dropped.jsonl."""
    reported = {step.name: step for step in manifest.steps if step.finished}
    if all(name in reported for name in record.steps):
        return [(step, False) for step in manifest.steps]
    failed, dropped = failed_ids(record.path / FAILURES), failed_ids(record.path / DROPPED_FILE)
    reports = []
    for name in _step_names(record, manifest):
        if name in reported:
            reports.append((reported[name], False))
            continue
        finished = sum(1 for _ in finished_lines(record.storage, record.step_index(name)))  # counted, not parsed
        counts = {"rows_out": finished, "failed": len(failed.get(name, ())), "filtered": len(dropped.get(name, ()))}
        reports.append((StepReport(name=name, operator="", rows_in=0, **counts), True))
    return reports


def _step_names(record: RunRecord, manifest: Manifest) -> list[str]:
    """The run's steps in run order (the saved config's), then any other the manifest reports."""
    return [*record.steps, *(step.name for step in manifest.steps if step.name not in record.steps)]


def _state(manifest: Manifest, step: StepReport, live: bool) -> str | None:
    """None for a step that ended; else `running`, `waiting` (nothing yet) or, in a run that stopped, `unfinished`."""
    if not live:
        return None
    if manifest.status != "running":
        return "unfinished"
    return "running" if step.rows_out or step.failed or step.filtered else "waiting"


def _reasons(failures: Counter, step: str) -> list[tuple[str, int]]:
    return Counter({reason: n for (name, reason), n in failures.items() if name == step}).most_common(TOP_REASONS)


def _usage(record: RunRecord, manifest: Manifest) -> dict:
    """Calls, tokens, cost and time per step as the manifest has them (a step the run stopped in: what it
    spent by then); a step that has not ended has none yet."""
    rows, total = [], Counter()
    reported = {step.name: step for step in manifest.steps}
    for name in _step_names(record, manifest):
        step = reported.get(name)
        if step is None:
            rows.append({"name": name, "pending": True})
            continue
        usage = step.usage
        row = {
            key: usage.get(key, 0)
            for key in ("calls", "cached_calls", "prompt_tokens", "completion_tokens", "cost_usd")
        }
        row.update(name=step.name, wall_s=step.wall_s, llm=bool(usage), pending=False)
        rows.append(row)
        total.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {"steps": rows, "total": dict(total), "partial": any(row["pending"] for row in rows)}


def _cards(record: RunRecord, step: int, max_cards: int) -> tuple[list[dict], dict, int, list[str]]:
    """The first `max_cards` rows as cards, the lengths and scores of every row, the row count, notes."""
    columns = {
        role: record.column(role)
        for role in (
            "question",
            "scenario",
            "reasoning",
            "answer",
            "reference_answer",
            "verdict",
            "verified",
            "hard_negatives",
            "hard_negative_scores",
        )
    }
    lengths = {"question": [], "reasoning": [], "bm25": []}
    cards, total, notes = [], 0, []
    rows = record.rows(step) if step else record.storage.read(0)
    for row in rows:
        total += 1
        question, reasoning = row.get(columns["question"]), row.get(columns["reasoning"])
        if question:
            lengths["question"].append(len(str(question).split()))
        if reasoning:
            lengths["reasoning"].append(len(str(reasoning).split()))
        lengths["bm25"] += [s for s in row.get(columns["hard_negative_scores"]) or [] if s is not None]
        if len(cards) < max_cards:
            documents = _documents(row, record, columns, notes)
            mining = _mining(
                row.get(record.column("hard_negative_info")), row.get(record.column("hard_negative_ids")), documents
            )
            verdict = row.get(columns["verdict"])
            cards.append(
                {
                    "id": row["id"],
                    "question": question,
                    "scenario": row.get(columns["scenario"]),
                    "reference_answer": row.get(columns["reference_answer"]),
                    "documents": documents,
                    "reasoning": reasoning,
                    "answer": row.get(columns["answer"]),
                    "verdict": verdict if isinstance(verdict, dict) else None,
                    "verified": row.get(columns["verified"]),
                    "mining": mining,
                }
            )
    if total > len(cards):
        notes.append(f"Showing the first {len(cards)} of {total} rows; `rare view --max-cards N` shows more.")
    return cards, lengths, total, notes


def _mining(info, ids, documents: list[dict]) -> dict | None:
    """What hard_negative_info says about the negatives: the retriever, each one's ranks (set on the
    documents as `found`, e.g. "bm25 #3, dense #5"), and the candidates dropped per reason."""
    if not isinstance(info, dict):
        return None
    found = {}
    for doc_id, negative in zip(ids or [], info.get("negatives") or []):
        ranks = negative.get("ranks") if isinstance(negative, dict) else None
        if ranks:
            found[doc_id] = ", ".join(f"{name} #{rank}" for name, rank in sorted(ranks.items()))
    for document in documents:
        if not document["positive"] and document.get("doc_id") in found:
            document["found"] = found[document["doc_id"]]
    dropped = info.get("dropped") or {}
    return {
        "retriever": (info.get("options") or {}).get("retriever", "BM25"),
        "dropped": ", ".join(f"{reason.replace('_', ' ')} {count}" for reason, count in dropped.items() if count),
        "short": bool(info.get("short")),
    }


def _documents(row: dict, record: RunRecord, columns: dict, notes: list[str]) -> list[dict]:
    """The documents as the teacher saw them (the row records their ids); before the teacher ran, or
    for a run older than that record, the positive then the negatives by BM25 rank."""
    shown = shown_documents(row, record)
    if shown is not None:
        return shown
    if row.get(record.column("positive_index")) is not None and not any(note.startswith(MISMATCH) for note in notes):
        notes.append(f"{MISMATCH}: these rows do not record the order it saw them in (shown_document_ids)")
    negatives = row.get(columns["hard_negatives"]) or []
    ids = row.get(record.column("hard_negative_ids")) or [None] * len(negatives)
    scores = row.get(columns["hard_negative_scores"]) or [None] * len(negatives)
    documents = [
        {"number": 1, "text": row.get("text", ""), "positive": True, "doc_id": positive_id(row, record), "score": None}
    ]
    for number, (text, doc_id, score) in enumerate(zip(negatives, ids, scores), 2):
        documents.append({"number": number, "text": text, "positive": False, "doc_id": doc_id, "score": score})
    return documents
