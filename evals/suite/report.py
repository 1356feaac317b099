"""The human-readable report of an eval run: ``report.md`` and a self-contained ``report.html``.

``shardlab eval`` writes both into ``--out`` (each atomically: a temp file in the same folder, then
a rename). Per eval they show a table of metric, value with its 95% interval and n (with its unit) with the
suite's thresholds first: ✅ met / ❌ missed by the point estimate (the exit code's rule), then the
verdict the interval gives (held, not held, or undetermined when it straddles the bound), its error if it crashed, and its PNGs: linked by their path relative to
``--out`` in the Markdown, inlined as base64 ``data:`` URIs in the HTML, which needs no other file.
A baseline comparison (``--baseline``), when there is one, comes before the evals.
``--summary FILE`` appends the Markdown to FILE (GitHub Actions: ``--summary "$GITHUB_STEP_SUMMARY"``),
with the plots listed by path instead of embedded, since a job summary cannot show local files.

Long metric lists stay readable: the Markdown keeps every row but puts the headline metrics (the
thresholded ones, then those the eval declares in ``headline``) first; the HTML shows the headline
rows and folds the full table into a ``<details>``.
"""

from __future__ import annotations

import base64
import html as _html
import math
import os
import sys
from typing import Any, Iterable, Optional
from urllib.parse import quote

from shardlab.atomic import write_text
from shardlab.evals.suite.baseline import Comparison, md_cell
from shardlab.evals.suite.base import EvalError
from shardlab.evals.suite.results import Metric, Threshold

MARKDOWN_NAME, HTML_NAME = "report.md", "report.html"
FOLD_ABOVE = 12  # HTML: an eval with more metrics than this gets its full table folded


# ----------------------------------------------------------------------------- shared pieces


def _thresholds(results: Any) -> list[Threshold]:
    """Every threshold of the suite (Results.thresholds; only the missed ones on older objects)."""
    found = getattr(results, "thresholds", None)
    return list(found) if found is not None else [t for t, _ in results.missed]


def _num(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4g}"


def _value(metric: Metric) -> str:
    """``value [low, high]`` for an estimate with its 95% interval, else ``value ± stderr`` or the
    value; an undefined metric shows why."""
    if metric.undefined:
        return f"undefined: {metric.note}" if metric.note else "n/a"
    if metric.ci_low is not None and metric.ci_high is not None:
        return f"{_num(metric.value)} [{_num(metric.ci_low)}, {_num(metric.ci_high)}]"
    if metric.stderr is None or (isinstance(metric.stderr, float) and math.isnan(metric.stderr)):
        return _num(metric.value)
    return f"{_num(metric.value)} ± {metric.stderr:.2g}"


def _n(metric: Metric) -> str:
    """``n`` with its unit (``300 mazes``); counts, settings and data properties say their kind."""
    if metric.kind != "estimate":
        return metric.kind
    if metric.n is None:
        return ""
    return f"{metric.n} {metric.unit}" if metric.unit else str(metric.n)


VERDICTS = ("held", "not held", "undetermined")  # stats.HELD, NOT_HELD, UNDETERMINED: the order reports list them


class _Section:
    """One eval's rows for either format: (metric name, value text, n text, threshold text, held)."""

    def __init__(self, run: dict, thresholds: list[Threshold]):
        self.name, self.run = run["eval"], run
        self.error: Optional[str] = run.get("error")
        metrics = {m.name: m for m in run["result"].metrics}
        mine = [t for t in thresholds if t.key.split(".", 1)[0] == self.name]
        self.rows: list[tuple[str, str, str, str, Optional[bool]]] = []
        bounded: dict[str, list[tuple[Threshold, bool, str]]] = {}
        for t in mine:
            metric = metrics.get(t.key.split(".", 1)[1] if "." in t.key else t.key)
            bounded.setdefault(t.key.split(".", 1)[-1], []).append((t, not t.missed(metric), t.verdict(metric)))
        for metric_name, checks in bounded.items():  # headline rows first, in threshold order
            metric = metrics.get(metric_name)
            held = all(h for _, h, _ in checks)
            # the mark is the exit code's rule (the point estimate); the verdict word reads the interval
            verdicts = sorted({v for _, _, v in checks}, key=VERDICTS.index)
            bounds = " and ".join(t.describe() for t, _, _ in checks) + " · " + ", ".join(verdicts)
            if metric is None:
                self.rows.append((metric_name, "missing", "", bounds, held))
            else:
                self.rows.append((metric_name, _value(metric), _n(metric), bounds, held))
        declared = [name for name in run.get("headline") or () if name in metrics and name not in bounded]
        self.rows += [(name, _value(metrics[name]), _n(metrics[name]), "", None) for name in declared]
        self.headline = len(self.rows)  # thresholded rows, then the eval's declared headline
        self.rows += [(m.name, _value(m), _n(m), "", None) for m in run["result"].metrics
                      if m.name not in bounded and m.name not in declared]
        self.checks = [h for _, checks in bounded.items() for _, h, _ in checks]
        self.verdicts = [v for _, checks in bounded.items() for _, _, v in checks]
        self.passed = not self.error and all(self.checks)
        self.pngs = [p for p in run["result"].artifacts if p.lower().endswith(".png")]
        self.others = [p for p in run["result"].artifacts if not p.lower().endswith(".png")]

    def title(self) -> str:
        mark = "✅" if self.passed else "❌"
        version = self.run.get("eval_version")
        extra = ([f"v{version}"] if version is not None else []) + [f"{self.run.get('seconds', 0):.1f} s"]
        return f"{self.name} {mark} ({', '.join(extra)})"

    def threshold_text(self) -> str:
        if not self.checks:
            return "none"
        counts = [(self.verdicts.count(v), v) for v in VERDICTS]
        return f"{sum(self.checks)}/{len(self.checks)} met; " + ", ".join(f"{c} {v}" for c, v in counts if c)


def _relative(path: str, out_dir: str) -> str:
    try:
        rel = os.path.relpath(path, out_dir)
    except ValueError:  # another drive on Windows
        rel = path
    return rel.replace(os.sep, "/")


def _status(results: Any, comparison: Optional[Comparison]) -> tuple[bool, str]:
    problems = []
    if results.missed:
        problems.append(f"{len(results.missed)} threshold(s) missed")
    if results.errors:
        problems.append(f"{len(results.errors)} eval(s) crashed")
    if comparison is not None and comparison.refused is not None:
        problems.append("baseline comparison refused")
    elif comparison is not None and not comparison.passed:
        problems.append(f"{len(comparison.regressions)} regression(s) against the baseline")
    return (not problems, "passed" if not problems else "failed: " + ", ".join(problems))


def _with_detail(meta: dict, key: str, detail_key: str, detail: str) -> str:
    """``meta[key]``, then ``detail`` formatted with ``meta[detail_key]`` if that is known."""
    extra = meta.get(detail_key)
    return f"{meta[key]}" + (detail.format(extra) if extra else "")


def _meta_items(results: Any) -> list[tuple[str, str]]:
    """(label, text) pairs describing the run, those that are known; the seed third when one
    seed ran every eval."""
    meta, items = results.meta, []
    if meta.get("checkpoint"):
        items.append(("checkpoint", _with_detail(meta, "checkpoint", "checkpoint_sha256", " (sha256 {:.12})")))
    if meta.get("train_steps") is not None:
        items.append(("train steps", str(meta["train_steps"])))
    if meta.get("suite"):
        items.append(("suite", os.path.basename(str(meta["suite"]))))
    if meta.get("limit") is not None:
        items.append(("limit", str(meta["limit"])))
    if meta.get("device"):
        items.append(("device", _with_detail(meta, "device", "device_name", " ({})")))
    if meta.get("env_backend"):
        items.append(("env backend", str(meta["env_backend"])))
    if meta.get("torch_version"):
        items.append(("torch", str(meta["torch_version"])))
    host = meta.get("host") or {}
    if host:
        items.append(("host", f"{host.get('machine') or '?'}, {host.get('cpu_count') or '?'} CPUs"
                              + (f", {host['system']}" if host.get("system") else "")))
    if meta.get("package_version"):
        items.append(("shardlab", _with_detail(meta, "package_version", "git_commit", " @ {:.10}")))
    if meta.get("time"):
        items.append(("time", str(meta["time"])))
    seed = _seed(results)
    if seed is not None:
        items.insert(2, ("seed", str(seed)))
    return items


def _overview(sections: list[_Section], comparison: Optional[Comparison]) -> tuple[list[str], list[list[str]]]:
    """The overview table: header and one row per eval (regressions per eval with a baseline)."""
    header = ["eval", "status", "thresholds", "metrics", "seconds"]
    rows = [[s.name, "✅" if s.passed else "❌ crashed" if s.error else "❌", s.threshold_text(),
             str(len(s.run["result"].metrics)), f"{s.run.get('seconds', 0):.1f}"] for s in sections]
    if comparison is not None and comparison.refused is None:
        header.append("regressions")
        for s, row in zip(sections, rows):
            bad = sum(1 for r in comparison.regressions if r.eval == s.name)
            row.append("crashed" if s.name in comparison.crashed else f"❌ {bad}" if bad else "0")
    return header, rows


def _seed(results: Any) -> Optional[Any]:
    seeds = {run.get("seed") for run in results.runs}
    return seeds.pop() if len(seeds) == 1 else None


# ----------------------------------------------------------------------------- Markdown


def markdown(results: Any, out_dir: str, comparison: Optional[Comparison] = None, images: bool = True) -> str:
    """The Markdown report of ``results`` (an ``shardlab.api.Results``), PNG paths relative to
    ``out_dir``; ``images=False`` lists the plots by path instead of embedding them."""
    passed, status = _status(results, comparison)
    sections = [_Section(run, _thresholds(results)) for run in results.runs]
    items = _meta_items(results)
    lines = [f"# shardlab eval {'✅' if passed else '❌'} {status}", "",
             " · ".join(f"{label}: `{md_cell(text)}`" for label, text in items), ""]
    header, overview = _overview(sections, comparison)
    lines += ["| " + " | ".join(header) + " |", "|---|:-:|--:|--:|--:|" + "--:|" * (len(header) - 5)]
    lines += ["| " + " | ".join(md_cell(cell) for cell in row) + " |" for row in overview]
    if comparison is not None:
        lines += ["", "## Baseline comparison", ""]
        lines += [comparison.summary()] if comparison.refused is not None else [comparison.markdown().rstrip()]
    for s in sections:
        lines += ["", f"## {s.title()}", ""]
        if s.error:
            lines += ["**Crashed:**", "", _fence(s.error), ""]
        if s.rows:
            lines += ["| metric | value [95% CI] | n | threshold · verdict |", "|---|--:|--:|---|"]
            for name, value, n, bounds, held in s.rows:
                mark = "" if held is None else f"{'✅' if held else '❌'} {bounds}"
                lines.append(f"| {md_cell(name)} | {md_cell(value)} | {n} | {md_cell(mark)} |")
        elif not s.error:
            lines.append("No metrics.")
        for path in s.pngs + s.others:
            rel = _relative(path, out_dir)
            name = md_cell(os.path.basename(path)).replace("[", "\\[").replace("]", "\\]")
            if images and path in s.pngs:
                lines += ["", f"![{name}]({quote(rel)})"]
            elif images:
                lines += ["", f"[{name}]({quote(rel)})"]
            else:
                lines += ["", f"- `{rel}`"]
    return "\n".join(lines).rstrip() + "\n"


def _fence(text: str) -> str:
    """``text`` in a fenced code block whose fence is longer than any backtick run inside."""
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


# ----------------------------------------------------------------------------- HTML

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:70em;
padding:0 1em;color:#1f2328;line-height:1.4}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #d0d7de;padding:.25em .6em;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}th{background:#f6f8fa}
tr.bad td{background:#ffebe9}pre{background:#f6f8fa;padding:.8em;overflow-x:auto;white-space:pre-wrap}
.meta{color:#57606a}.meta code{color:#1f2328}img{max-width:100%;border:1px solid #d0d7de}
figure{margin:1em 0}figcaption{color:#57606a;font-size:.9em}summary{cursor:pointer;margin:.4em 0}
"""


def _e(text: Any) -> str:
    return _html.escape(str(text), quote=True)


def _tag(name: str, content: str = "", **attrs: Any) -> str:
    """``<name attrs>content</name>``; ``content`` must already be HTML (escape text with ``_e``)."""
    rendered = "".join(f' {key.rstrip("_").replace("_", "-")}="{_e(value)}"' for key, value in attrs.items()
                       if value is not None)
    return f"<{name}{rendered}>{content}</{name}>"


def _table(header: Iterable[str], rows: Iterable[tuple[list[str], Optional[str]]], numeric: set[int]) -> str:
    """A table from escaped-text cells; each row comes with an optional class (``bad``)."""
    head = _tag("tr", "".join(_tag("th", _e(h)) for h in header))
    body = "".join(_tag("tr", "".join(_tag("td", _e(c), class_="num" if i in numeric else None)
                                      for i, c in enumerate(cells)), class_=cls) for cells, cls in rows)
    return _tag("table", _tag("thead", head) + _tag("tbody", body))


def _data_uri(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as handle:
            return "data:image/png;base64," + base64.b64encode(handle.read()).decode("ascii")
    except OSError:
        return None


def html(results: Any, out_dir: str, comparison: Optional[Comparison] = None) -> str:
    """The report as one self-contained HTML page: PNGs inlined as data URIs, no external assets."""
    passed, status = _status(results, comparison)
    sections = [_Section(run, _thresholds(results)) for run in results.runs]
    items = _meta_items(results)
    parts = [_tag("h1", _e(f"shardlab eval {'✅' if passed else '❌'} {status}")),
             _tag("p", " · ".join(f"{_e(label)}: {_tag('code', _e(text))}" for label, text in items), class_="meta")]
    header, overview = _overview(sections, comparison)
    parts.append(_table(header, [(row, None if s.passed and row[5:] in ([], ["0"]) else "bad")
                                 for s, row in zip(sections, overview)], {2, 3, 4, 5}))
    if comparison is not None:
        parts.append(_tag("h2", "Baseline comparison"))
        parts.append(_tag("p", _e(comparison.summary())))
        if comparison.refused is None:
            rows = [(comparison.cells(r, marks=True), "bad" if r.regression else None) for r in comparison.ordered()]
            table = _table(("eval", "metric", "old", "new", "diff", "allowed", "verdict"), rows, {2, 3, 4, 5})
            summary = f"all {len(rows)} shared metrics" + (f", {len(comparison.regressions)} regressed first"
                                                           if comparison.regressions else "")
            parts.append(_tag("details", _tag("summary", _e(summary)) + table,
                              open="open" if comparison.regressions else None))
            parts += [_tag("p", _e(f"❌ {name} crashed since the baseline: {error}"))
                      for name, error in comparison.crashed.items()]
            parts += [_tag("p", _e(f"note: {note}"), class_="meta") for note in comparison.notes]
    for s in sections:
        body = [_tag("h2", _e(s.title()))]
        if s.error:
            body += [_tag("p", _tag("strong", "Crashed:")), _tag("pre", _e(s.error))]
        rows = [([name, value, n, "" if held is None else f"{'✅' if held else '❌'} {bounds}"],
                 "bad" if held is False else None) for name, value, n, bounds, held in s.rows]
        header = ("metric", "value [95% CI]", "n", "threshold · verdict")
        if len(rows) > FOLD_ABOVE:
            if s.headline:
                body.append(_table(header, rows[:s.headline], {1, 2}))
            count = len(s.run["result"].metrics)
            body.append(_tag("details", _tag("summary", _e(f"all {count} metrics")) + _table(header, rows, {1, 2})))
        elif rows:
            body.append(_table(header, rows, {1, 2}))
        elif not s.error:
            body.append(_tag("p", "No metrics."))
        for path in s.pngs:
            rel = _relative(path, out_dir)
            uri = _data_uri(path)
            image = _tag("p", _e(f"missing plot: {rel}")) if uri is None else f'<img src="{_e(uri)}" alt="{_e(rel)}">'
            body.append(_tag("figure", image + _tag("figcaption", _e(rel))))
        if s.others:
            body.append(_tag("p", "Other outputs: " + ", ".join(_tag("code", _e(_relative(p, out_dir)))
                                                                 for p in s.others), class_="meta"))
        parts.append(_tag("section", "".join(body)))
    head = '<meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">' \
           + _tag("title", _e(f"shardlab eval: {status}")) + _tag("style", _STYLE)
    return "<!DOCTYPE html>\n" + _tag("html", _tag("head", head) + _tag("body", "\n".join(parts)), lang="en") + "\n"


# ----------------------------------------------------------------------------- files


def check_summary(path: Optional[str]) -> None:
    """EvalError (before anything runs) if ``--summary`` cannot be appended to."""
    if path is None:
        return
    if os.path.isdir(path):
        raise EvalError(f"--summary {path} is a folder; give a file to append the Markdown report to")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise EvalError(f"--summary {path}: folder {folder} does not exist")


def write_reports(results: Any, out_dir: str, comparison: Optional[Comparison] = None,
                  summary: Optional[str] = None) -> tuple[str, str]:
    """Write report.md and report.html into ``out_dir`` and append the Markdown to ``summary``
    (a warning on stderr if that fails); returns the two paths."""
    md_path, html_path = os.path.join(out_dir, MARKDOWN_NAME), os.path.join(out_dir, HTML_NAME)
    write_text(md_path, markdown(results, out_dir, comparison))
    write_text(html_path, html(results, out_dir, comparison))
    if summary is not None:
        try:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(markdown(results, out_dir, comparison, images=False) + "\n")
        except OSError as exc:
            print(f"shardlab eval: warning: could not append the report to --summary {summary}: {exc}",
                  file=sys.stderr)
    return md_path, html_path
