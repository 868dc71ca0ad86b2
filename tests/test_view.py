"""`rare view`: the report of a real run, opened in headless Chromium (Debian's `chromium`)."""

import html
import os
import re
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser

import pytest
from conftest import compose_config, look_alike_documents, read_jsonl, server_overrides, write_corpus

from rare.cli import main as cli_main
from rare.tools.view import main as view_main
from rare.tools.view.report import build_report

HOSTILE = (
    "<script>console.error('xss-script')</script><img src=x onerror=\"console.error('xss-img')\"> "
    "</div></article><b>broken markup</b> & {{ braces }} warfarin anticoagulation reversal vitamin prothrombin "
    "complex dabigatran thrombin inhibitor idarucizumab renal clearance negligence duty care breach causation."
)


class Elements(HTMLParser):
    """Counts the elements of a page and collects its inline event handlers."""

    def __init__(self):
        super().__init__()
        self.tags, self.handlers = Counter(), []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        self.handlers += [name for name, _ in attrs if name.startswith("on")]


def chromium_binary() -> str:
    """Debian's headless Chromium, installed through apt on first use so `python -m pytest` needs nothing by hand."""
    binary = shutil.which("chromium")
    if binary is None and shutil.which("apt-get"):
        quiet = {
            "stdin": subprocess.DEVNULL,
            "capture_output": True,
            "timeout": 900,
            "env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        }
        subprocess.run(["apt-get", "update", "-qq"], **quiet)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], **quiet)
        binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("headless Chromium is missing and apt-get could not install it: apt-get install -y chromium")
    return binary


def chromium(url: str, *flags: str, profile) -> tuple[str, list[str]]:
    """(the DOM after scripts ran, the page's console lines) from headless Chromium."""
    binary = chromium_binary()
    done = subprocess.run(
        [
            binary,
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            *flags,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def report(tmp_path_factory, llm_server):
    """A full-preset run over documents that include a hostile one, and its report."""
    from rare.pipeline.runner import run

    llm_server.reset()
    tmp_path = tmp_path_factory.mktemp("view")
    documents = look_alike_documents()
    documents += [
        {"id": "hostile", "text": HOSTILE},
        {"id": "stub", "text": "Too short."},
        {**documents[0], "id": "copy"},
    ]
    corpus = write_corpus(tmp_path / "corpus.jsonl", documents)
    cfg = compose_config(
        tmp_path, *server_overrides(llm_server), f"data.input={corpus}", "preset=full", "retriever=bm25s"
    )
    manifest = run(cfg)
    run_dir = tmp_path / "run"
    assert view_main([str(run_dir)]) == 0
    return {
        "dir": run_dir,
        "path": run_dir / "report.html",
        "manifest": manifest,
        "tmp": tmp_path,
        "rows": read_jsonl(run_dir / "dataset.jsonl"),
    }


def test_report_loads_without_console_errors_and_shows_rows_and_funnel(report):
    dom, console = chromium(report["path"].as_uri(), "--dump-dom", profile=report["tmp"] / "profile1")
    assert console == []  # no error, no stray log: the page's script ran clean
    assert 'data-ready="true"' in dom  # ...to its last line
    shown = {html.unescape(q).strip() for q in re.findall(r'<h3 class="question">(.*?)</h3>', dom, re.S)}
    assert shown == {row["question"] for row in report["rows"]}
    for step in report["manifest"]["steps"]:
        cells = re.search(rf'<tr data-step="{step["name"]}">(.*?)</tr>', dom, re.S).group(1)
        numbers = re.findall(r"<td>(\d+)</td>", cells)
        assert numbers[:3] == [str(step["rows_in"]), str(step["rows_out"]), str(step["failed"])]
    doc_filter = re.search(r'<tr data-step="doc_filter">(.*?)</tr>', dom, re.S).group(1)
    assert re.findall(r"<td>(\d+)</td>", doc_filter) == ["15", "13", "0", "2"]  # the stub and the copy filtered
    assert doc_filter.count("filtered 1 ×") == 2  # each with its reason
    rejected = sum(1 for row in report["rows"] if row["verified"] is False)
    assert rejected and dom.count('class="card rejected"') == rejected
    assert dom.count('<span class="badge pos">positive</span>') == len(report["rows"])  # one positive per card
    assert dom.count("<svg") == 3  # question, reasoning and BM25 histograms
    assert "reason_distill" in re.search(r'<table id="usage">(.*?)</table>', dom, re.S).group(1)


def test_hostile_document_text_is_shown_not_run(report):
    dom, console = chromium(report["path"].as_uri(), "--dump-dom", profile=report["tmp"] / "profile2")
    assert console == []
    elements = Elements()
    elements.feed(dom)
    assert elements.tags["script"] == 1  # the report's own, nothing from the document
    assert elements.tags["b"] == 0 and elements.tags["img"] == 0 and not elements.handlers
    assert "&lt;script&gt;console.error('xss-script')&lt;/script&gt;" in dom  # shown as text
    # the control: the same payload unescaped does run, so the console check above can fail
    control = report["tmp"] / "control.html"
    control.write_text(f"<!DOCTYPE html><html><body>{HOSTILE}</body></html>", encoding="utf-8")
    _, control_console = chromium(control.as_uri(), "--dump-dom", profile=report["tmp"] / "profile3")
    assert any("xss-script" in line for line in control_console)


def test_screenshot_of_the_report(report):
    shot = report["tmp"] / "report.png"
    chromium(
        report["path"].as_uri(),
        f"--screenshot={shot}",
        "--window-size=1280,2200",
        "--hide-scrollbars",
        profile=report["tmp"] / "profile4",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_big_runs_show_the_first_cards_and_say_so(report):
    page = build_report(report["dir"], max_cards=2)
    assert page.count('<article class="card') == 2
    assert f"Showing the first 2 of {len(report['rows'])} rows" in page


def test_documents_come_in_the_order_the_row_records_with_no_operator_rebuilt(report, tmp_path):
    """The report reads the shown order from the rows: a config whose teacher cannot be built still renders it."""
    from rare.rundir.record import RunRecord, shown_documents

    copy = tmp_path / "run"
    shutil.copytree(report["dir"], copy)
    config = (copy / "config.yaml").read_text(encoding="utf-8")
    (copy / "config.yaml").write_text(
        config.replace("rare.operators.reason_distill.ReasonDistill", "nowhere.Gone"), encoding="utf-8"
    )
    record = RunRecord(copy)
    for row in report["rows"]:
        documents = shown_documents(row, record)
        assert [d["doc_id"] for d in documents] == row["shown_document_ids"]
        assert (
            documents[row["positive_index"] - 1]["positive"]
            and documents[row["positive_index"] - 1]["text"] == row["text"]
        )
    page = build_report(copy)
    assert page.count('<span class="badge pos">positive</span>') == len(report["rows"]) and "BM25 order" not in page


def test_rare_view_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["rare", "view", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        cli_main()
    assert exit_info.value.code == 2
    assert "is not a rare run dir" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
