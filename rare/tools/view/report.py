"""What the report shows, gathered from a run dir: funnel, usage, histograms and row cards."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import jinja2
from markupsafe import Markup

from rare.rundir.manifest import Manifest
from rare.rundir.record import RunRecord, positive_id, shown_documents
from rare.tools.view.charts import histogram_svg

MAX_CARDS = 500  # cards beyond this are counted, not shown: the page stays light for big runs
TOP_REASONS = 3  # failure reasons listed per step
MISMATCH = "Documents are shown in BM25 order, not the teacher's"


def build_report(run_dir: str | Path, max_cards: int = MAX_CARDS) -> str:
    """The report of the run in `run_dir` as one HTML page (inline CSS and JS, nothing fetched)."""
    record = RunRecord(run_dir)
    manifest = record.manifest()
    last = record.last_step_with_rows()
    cards, lengths, total, notes = _cards(record, last, max_cards)
    context = {
        "run_name": record.path.name,
        "run_path": str(record.path),
        "manifest": manifest,
        "models": record.models(),
        "funnel": _funnel(record, manifest),
        "usage": _usage(manifest),
        "charts": [
            Markup(histogram_svg(lengths["question"], "question length", " words")),
            Markup(histogram_svg(lengths["reasoning"], "reasoning length", " words")),
            Markup(histogram_svg(lengths["bm25"], "BM25 scores of hard negatives")),
        ],
        "chart_titles": ["Question length (words)", "Reasoning length (words)", "BM25 score of hard negatives"],
        "cards": cards,
        "total_rows": total,
        "rows_step": list(record.steps)[last - 1] if last else "input",
        "notes": notes,
    }
    return _template().render(**context)


def _template() -> jinja2.Template:
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)  # every value is escaped
    return environment.from_string((Path(__file__).parent / "report.html.j2").read_text(encoding="utf-8"))


def _funnel(record: RunRecord, manifest: Manifest) -> list[dict]:
    """Rows in and out of the input and of each step, with failures, filtered rows and rejections."""
    failures, dropped = record.failures(), record.dropped()
    stages = [
        {
            "name": "input",
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
    for step in manifest.steps:
        rejected = None
        if verified in (record.steps.get(step.name, {}).get("outputs") or {}).values():
            rejected = sum(1 for row in record.rows(record.step_index(step.name)) if row.get(verified) is False)
        stages.append(
            {
                "name": step.name,
                "rows_in": step.rows_in,
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


def _reasons(failures: Counter, step: str) -> list[tuple[str, int]]:
    return Counter({reason: n for (name, reason), n in failures.items() if name == step}).most_common(TOP_REASONS)


def _usage(manifest: Manifest) -> dict:
    rows, total = [], Counter()
    for step in manifest.steps:
        usage = step.usage
        row = {
            key: usage.get(key, 0)
            for key in ("calls", "cached_calls", "prompt_tokens", "completion_tokens", "cost_usd")
        }
        row.update(name=step.name, wall_s=step.wall_s, llm=bool(usage))
        rows.append(row)
        total.update({k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return {"steps": rows, "total": dict(total)}


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
