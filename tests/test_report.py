"""report.md and report.html: written by every ``shardlab eval`` (thresholds ✅/❌, plots by
relative path or inlined), ``--summary`` appends the Markdown, and the writers on hand-made results."""

from __future__ import annotations

import base64
import os
import re
import textwrap
from html.parser import HTMLParser

import pytest

from shardlab import cli
from shardlab.api import Results
from shardlab.evals.suite import report
from shardlab.evals.suite.results import Result, Threshold
from tiny_suites import GOAL_MISGENERALIZATION

pytestmark = pytest.mark.usefixtures("one_thread")

SUITE = GOAL_MISGENERALIZATION + "  goal_misgeneralization.p_cheese: {min: 1.5}\n"


@pytest.fixture(scope="module")
def evaluated(tiny_maze_checkpoint, tmp_path_factory):
    """One ``shardlab eval --limit 2 --summary FILE`` of the tiny checkpoint (a threshold missed):
    its out folder and the summary file, which held a line before."""
    folder = tmp_path_factory.mktemp("report")
    suite = folder / "suite.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    summary = folder / "step_summary.md"
    summary.write_text("earlier step\n")
    out = folder / "out"
    assert cli.main(["eval", tiny_maze_checkpoint, "--suite", str(suite), "--out", str(out), "--limit", "2",
                     "--loggers", "none", "--no-progress", "--summary", str(summary)]) == 1
    return out, summary


def _eval_table(markdown: str) -> list[list[str]]:
    """The metric rows of the goal_misgeneralization section."""
    section = markdown.split("## goal_misgeneralization", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| metric")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in rows]


def test_eval_writes_a_markdown_report_with_thresholds_first(evaluated):
    out, _ = evaluated
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# shardlab eval ❌ failed: 1 threshold(s) missed")
    assert "| goal_misgeneralization | ❌ | 1/2 met; 1 held, 1 not held |" in text
    rows = _eval_table(text)
    assert [row[0] for row in rows[:2]] == ["p_neither", "p_cheese"]  # the headline (thresholded) metrics
    assert rows[0][3] == "✅ <= 1 · held" and rows[1][3] == "❌ >= 1.5 · not held"
    assert all(row[3] == "" for row in rows[2:]) and len(rows) > 15  # then every other metric
    value, n = rows[1][1], rows[1][2]
    # the value with its 95% interval (Wilson over the 2 mazes), n with its unit
    assert re.fullmatch(r"[0-9.e+-]+ \[[0-9.e+-]+, [0-9.e+-]+\]", value) and n == "2 mazes"
    [image] = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert image == "goal_misgeneralization/goal_misgeneralization.png" and (out / image).is_file()
    assert not [name for name in os.listdir(out) if ".tmp" in name]  # written atomically, nothing left over


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.sources, self.open = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        self.sources += [attrs[key] for key in ("src", "href") if key in attrs]
        if tag not in ("meta", "img", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (self.open[-5:], tag)
        self.open.pop()


def test_eval_writes_a_self_contained_html_report(evaluated):
    out, _ = evaluated
    page = (out / "report.html").read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
    assert parser.open == []  # every element closed, properly nested
    assert "script" not in parser.tags and "link" not in parser.tags
    [source] = parser.sources  # the one plot, inlined: nothing else is fetched
    assert source.startswith("data:image/png;base64,")
    assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "details" in parser.tags and "all " in page  # the long metric list is folded
    assert "❌ &gt;= 1.5 · not held" in page and "✅ &lt;= 1 · held" in page


def test_summary_file_gets_the_markdown_appended(evaluated):
    out, summary = evaluated
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n# shardlab eval ❌")
    assert "![" not in text and "- `goal_misgeneralization/goal_misgeneralization.png`" in text
    assert _eval_table(text) == _eval_table((out / "report.md").read_text(encoding="utf-8"))


def test_summary_that_is_a_folder_exits_2_before_running(tiny_maze_checkpoint, tmp_path, capsys):
    assert cli.main(["eval", tiny_maze_checkpoint, "--suite", "ci", "--out", str(tmp_path / "o"),
                     "--summary", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a folder" in err and not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- hand-made results


def _results(tmp_path) -> Results:
    plot = tmp_path / "ev" / "plot.png"
    plot.parent.mkdir()
    plot.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    good = Result(artifacts=[str(plot), str(tmp_path / "ev" / "table.csv"), str(tmp_path / "ev" / "gone.png")])
    good.add("a|b <script>alert(1)</script>", 0.5, stderr=0.01, n=10, higher_is_better=True)
    for k in range(20):
        good.add(f"extra/{k}", k / 20)
    runs = [{"eval": "ev", "seed": 0, "config": {}, "eval_version": 2, "result": good, "seconds": 1.5},
            {"eval": "broken", "seed": 0, "config": {}, "eval_version": 1, "result": Result(), "seconds": 0.1,
             "error": "RuntimeError: ```boom``` <b>"}]
    thresholds = [Threshold("ev.a|b <script>alert(1)</script>", min=0.4), Threshold("ev.absent", max=1.0)]
    return Results(runs, thresholds, {"checkpoint": "x.ckpt", "device": "cpu", "limit": 2}, str(tmp_path))


def test_markdown_escapes_cells_and_shows_crashes_and_missing_metrics(tmp_path):
    text = report.markdown(_results(tmp_path), str(tmp_path))
    assert "1 threshold(s) missed, 1 eval(s) crashed" in text.splitlines()[0]
    assert "| a\\|b &lt;script>alert(1)&lt;/script> | 0.5 ± 0.01 | 10 | ✅ >= 0.4 · held |" in text
    assert "| absent | missing |  | ❌ <= 1 · not held |" in text
    assert "## ev ❌ (v2, 1.5 s)" in text and "## broken ❌ (v1, 0.1 s)" in text
    assert "````text\nRuntimeError: ```boom``` <b>\n````" in text  # the fence outgrows the backticks inside
    assert "![plot.png](ev/plot.png)" in text and "[table.csv](ev/table.csv)" in text
    assert "| broken | ❌ crashed |" in text


def test_html_escapes_text_and_skips_missing_plots(tmp_path):
    page = report.html(_results(tmp_path), str(tmp_path))
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "RuntimeError: ```boom``` &lt;b&gt;" in page
    assert page.count("data:image/png;base64,") == 1 and "missing plot: ev/gone.png" in page
    assert "<code>ev/table.csv</code>" in page
    assert "<details><summary>all 21 metrics</summary>" in page  # more than FOLD_ABOVE rows: folded
