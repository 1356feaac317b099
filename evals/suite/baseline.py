"""Compare two results.json documents metric by metric: did the new run get worse than a baseline?

Used by ``shardlab eval CKPT ... --baseline OLD/results.json`` (exit 1 on a regression) and
``shardlab compare OLD/results.json NEW/results.json`` (runs nothing). The rule, for every metric
the two documents share (same eval and metric name):

* ``diff = new - old``. The bad direction comes from the metric's ``higher_is_better`` (the new
  document's, else the baseline's): down when True, up when False. A metric whose
  ``higher_is_better`` is None has no bad direction: it is listed with its diff, never fails.
* ``allowed = max(K * sqrt(se_old² + se_new²), E)`` with K = ``--tolerance`` (default 3) and
  E = ``--min-effect`` (default 0.02, absolute, in the metric's own units). A **regression** is a
  move in the bad direction by more than ``allowed``: beyond K combined standard errors (sampling
  noise alone seldom gets there) *and* bigger than E (a real but negligible change does not fail
  CI). A move in the good direction by more than ``allowed`` is reported as ``improved``.
* Standard errors: when only one side has one, the other counts as 0. When *neither* side has
  one the metric is shown with verdict ``no stderr`` and never fails: without a noise estimate a
  change cannot be told from sampling noise, and such metrics here are sampled numbers on their
  own scales (goal_misgeneralization's mean_steps, finetune_to_cheese's env steps, probe
  accuracies), where a fixed absolute E would fail nearly every comparison. Bound those with suite
  thresholds, or have the eval report a stderr. E is absolute, so it suits probabilities and
  rates; pass a larger ``--min-effect`` for metrics on larger scales.
* A value that is null (NaN when measured) on either side is shown as ``n/a`` and never fails.
* An eval that has metrics in the baseline but crashed in the new results fails the comparison;
  evals and metrics on one side only are listed in the notes, never failed.

Refusals (``BaselineError``, exit 2 with one line naming the difference): a file that is missing,
not JSON or not a results.json (no ``schema_version`` this shardlab reads: 1 and 2, whose rows
differ only in the interval fields 2 added, which the rule does not use); two documents that
share no eval; and, for any shared eval, a different ``config``, ``seed`` or ``eval_version`` (the
numbers would measure different things). A different ``--limit`` is only noted: it changes n,
which the standard errors carry.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from shardlab.evals.suite.base import EvalError
from shardlab.evals.suite.results import READABLE_SCHEMAS, _finite

DEFAULT_TOLERANCE = 3.0
DEFAULT_MIN_EFFECT = 0.02
REGRESSION, IMPROVED, OK, NO_DIRECTION, NO_STDERR, NOT_AVAILABLE = (
    "REGRESSION", "improved", "ok", "no direction", "no stderr", "n/a")


class BaselineError(EvalError):
    """The two results cannot be compared (bad file, different configs, seeds or eval versions)."""


@dataclass
class Row:
    """One shared metric: both values with their standard errors, the allowance and the verdict."""

    eval: str
    name: str
    old: Optional[float]
    new: Optional[float]
    old_stderr: Optional[float] = None
    new_stderr: Optional[float] = None
    higher_is_better: Optional[bool] = None
    allowed: Optional[float] = None
    verdict: str = OK

    @property
    def diff(self) -> Optional[float]:
        """new - old (None when either is missing)."""
        return None if self.old is None or self.new is None else self.new - self.old

    @property
    def regression(self) -> bool:
        return self.verdict == REGRESSION


@dataclass
class Comparison:
    """Every shared metric's row, the evals that crashed since the baseline, and notes."""

    rows: list[Row]
    tolerance: float = DEFAULT_TOLERANCE
    min_effect: float = DEFAULT_MIN_EFFECT
    crashed: dict[str, str] = field(default_factory=dict)  # eval → its error in the new results
    notes: list[str] = field(default_factory=list)
    refused: Optional[str] = None  # set when the comparison could not be made (exit 2)

    @property
    def regressions(self) -> list[Row]:
        return [row for row in self.rows if row.regression]

    @property
    def passed(self) -> bool:
        """No regression, no eval crashed since the baseline, and the comparison was made."""
        return not self.regressions and not self.crashed and self.refused is None

    @property
    def exit_code(self) -> int:
        """0 passed, 1 regressed (or an eval crashed), 2 refused."""
        return 2 if self.refused is not None else 0 if self.passed else 1

    def ordered(self) -> list[Row]:
        """Regressions first, then the rest in the baseline's order."""
        return self.regressions + [row for row in self.rows if not row.regression]

    def summary(self) -> str:
        """One line: how many regressions among how many shared metrics, with K and E."""
        if self.refused is not None:
            return f"baseline comparison refused: {self.refused}"
        bad = len(self.regressions)
        what = f"{bad} regression{'s' if bad != 1 else ''}" if bad else "no regressions"
        crashed = f", {len(self.crashed)} eval(s) crashed since the baseline" if self.crashed else ""
        return (f"{what} in {len(self.rows)} shared metrics{crashed} "
                f"(tolerance {self.tolerance:g} stderr, min effect {self.min_effect:g})")

    HEADER = ("eval", "metric", "old", "new", "diff", "allowed", "verdict")
    MARKS = {REGRESSION: "❌ regression", IMPROVED: "✅ improved", OK: "✅ ok"}

    @classmethod
    def cells(cls, r: Row, marks: bool = False) -> list[str]:
        """One row's texts under HEADER; ``marks`` puts ✅/❌ before the verdict."""
        return [r.eval, r.name, _value(r.old, r.old_stderr), _value(r.new, r.new_stderr), _diff(r.diff),
                "" if r.allowed is None else f"{r.allowed:.3g}", cls.MARKS.get(r.verdict, r.verdict) if marks
                else r.verdict]

    def table(self) -> str:
        """The plain-text table: eval | metric | old | new | diff | allowed | verdict."""
        header = self.HEADER
        cells = [header] + [self.cells(r) for r in self.ordered()]
        widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
        left = (0, 1)
        lines = ["  ".join(c.ljust(w) if i in left or i == 6 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(row, widths))).rstrip() for row in cells]
        lines += [f"{name}: crashed since the baseline: {error}" for name, error in self.crashed.items()]
        return "\n".join(lines + [self.summary()] + [f"note: {note}" for note in self.notes])

    def markdown(self) -> str:
        """The same table in GitHub Markdown (regressions first), with the notes."""
        lines = [self.summary(), "", "| " + " | ".join(self.HEADER) + " |", "|---|---|--:|--:|--:|--:|---|"]
        for r in self.ordered():
            lines.append("| " + " | ".join(md_cell(c) for c in self.cells(r, marks=True)) + " |")
        lines += [""] + [f"- ❌ `{name}` crashed since the baseline: {md_cell(error)}"
                         for name, error in self.crashed.items()]
        lines += [f"- note: {md_cell(note)}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def md_cell(text: Any) -> str:
    """Text safe inside a Markdown table cell: backslashes, pipes and newlines escaped, and ``<``
    where it could open an HTML tag (``<= 1`` stays as it is)."""
    text = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def _value(value: Optional[float], stderr: Optional[float]) -> str:
    if value is None:
        return NOT_AVAILABLE
    return f"{value:.4g} ± {stderr:.2g}" if stderr is not None else f"{value:.4g}"


def _diff(diff: Optional[float]) -> str:
    return NOT_AVAILABLE if diff is None else f"{diff:+.4g}"


def _number(value: Any) -> Optional[float]:
    """A finite float, or None (null, NaN, ±inf, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _plain(data: Any) -> Any:
    """``data`` as results.json stores it (tuples as lists, NaN as null, odd objects as strings)."""
    return json.loads(json.dumps(_finite(data), default=str))


def check_document(doc: Any, label: str) -> dict:
    """``doc`` if it is a results.json document this shardlab reads, else BaselineError."""
    if not isinstance(doc, dict) or "schema_version" not in doc or not isinstance(doc.get("results"), list):
        raise BaselineError(f"{label} is not a shardlab results.json (no schema_version and results)")
    if doc["schema_version"] not in READABLE_SCHEMAS:
        raise BaselineError(f"{label} has schema_version {doc['schema_version']!r}; this shardlab reads "
                            f"{', '.join(map(str, READABLE_SCHEMAS))}")
    return doc


def load_results(path: Union[str, os.PathLike]) -> dict:
    """A results.json file, checked; BaselineError when it is missing or is something else."""
    path = os.fspath(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "results.json")):
        path = os.path.join(path, "results.json")  # an eval's --out folder names its results
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except FileNotFoundError:
        raise BaselineError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BaselineError(f"{path} is a folder without a results.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"{path} is not a results.json ({type(exc).__name__}: {exc})") from None
    return check_document(doc, path)


def runs_of(doc: dict) -> dict[str, dict[str, Any]]:
    """Per eval with metrics in ``doc``: its config, seed and eval_version (from its first row)."""
    runs: dict[str, dict[str, Any]] = {}
    for row in doc["results"]:
        if isinstance(row, dict) and row.get("eval") not in runs:
            runs[row.get("eval")] = {"config": _plain(row.get("config")), "seed": row.get("seed"),
                                     "eval_version": row.get("eval_version", 1)}
    return runs


def _without_nulls(config: Any) -> Any:
    """A config with its null options left out: an option added later whose null default keeps the
    old behaviour (e.g. a size bound taken from the checkpoint) must not break older baselines."""
    if isinstance(config, dict):
        return {k: _without_nulls(v) for k, v in config.items() if v is not None}
    return config


def check_compatible(old_runs: dict[str, dict], new_runs: dict[str, dict], old_label: str = "the baseline",
                     new_label: str = "the new results") -> list[str]:
    """The evals both sides ran (maybe none); BaselineError naming the first eval whose config,
    seed or eval version differs."""
    shared = [name for name in old_runs if name in new_runs]
    for name in shared:
        old, new = old_runs[name], new_runs[name]
        if old["eval_version"] != new["eval_version"]:
            raise BaselineError(f"eval {name}: eval_version {old['eval_version']} in {old_label} but "
                                f"{new['eval_version']} in {new_label}; results of different eval versions "
                                "are not comparable")
        if old["seed"] != new["seed"]:
            raise BaselineError(f"eval {name}: seed {old['seed']} in {old_label} but {new['seed']} in {new_label}")
        if _without_nulls(old["config"]) != _without_nulls(new["config"]):
            raise BaselineError(f"eval {name}: config differs ({config_difference(old['config'], new['config'])} "
                                f"in {old_label} vs {new_label})")
    return shared


def _nothing_shared(old_runs: dict, new_runs: dict, old_label: str, new_label: str) -> BaselineError:
    return BaselineError(f"nothing to compare: {old_label} has evals {', '.join(map(str, old_runs)) or 'none'} "
                         f"and {new_label} {', '.join(map(str, new_runs)) or 'none'}")


def config_difference(old: Any, new: Any, most: int = 3) -> str:
    """``key: old → new`` for the (first ``most``) keys whose values differ."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return f"{old!r} → {new!r}"
    missing = object()
    keys = [k for k in sorted(set(old) | set(new), key=str) if old.get(k, missing) != new.get(k, missing)]
    shown = [f"{k}: {_show(old.get(k, missing), missing)} → {_show(new.get(k, missing), missing)}"
             for k in keys[:most]]
    return ", ".join(shown) + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _show(value: Any, missing: object) -> str:
    return "(absent)" if value is missing else json.dumps(value)


def compare(old_doc: dict, new_doc: dict, tolerance: float = DEFAULT_TOLERANCE,
            min_effect: float = DEFAULT_MIN_EFFECT, old_label: str = "the baseline",
            new_label: str = "the new results") -> Comparison:
    """Every metric both documents have, judged by the rule in the module docstring.

    BaselineError (a ValueError) when a document is not a results.json, the two share no eval, a
    shared eval differs in config, seed or eval version, or the tolerance or minimum effect is
    negative or not finite."""
    for name, value in (("tolerance", tolerance), ("min_effect", min_effect)):
        if _number(value) is None or value < 0:
            raise BaselineError(f"{name} must be a finite number >= 0, got {value!r}")
    check_document(old_doc, old_label)
    check_document(new_doc, new_label)
    old_runs, new_runs = runs_of(old_doc), runs_of(new_doc)
    shared = check_compatible(old_runs, new_runs, old_label, new_label)
    errors = new_doc.get("errors") or {}
    crashed = {name: str(errors[name]) for name in old_runs if name in errors}
    if not shared and not crashed:
        raise _nothing_shared(old_runs, new_runs, old_label, new_label)
    new_rows = {(r.get("eval"), r.get("name")): r for r in new_doc["results"] if isinstance(r, dict)}
    old_rows = {(r.get("eval"), r.get("name")): r for r in old_doc["results"] if isinstance(r, dict)}
    rows = [judge(old, new_rows[key], tolerance, min_effect) for key, old in old_rows.items()
            if key[0] in shared and key in new_rows]
    notes = []
    for side, here, there in ((new_label, new_rows, old_rows), (old_label, old_rows, new_rows)):
        only = [f"{e}.{n}" for (e, n) in here if e in shared and (e, n) not in there]
        if only:
            more = f" and {len(only) - 8} more" if len(only) > 8 else ""
            notes.append(f"only in {side}: {', '.join(only[:8])}{more}")
    for side, here, there in ((old_label, old_runs, new_runs), (new_label, new_runs, old_runs)):
        only = [str(name) for name in here if name not in there and name not in crashed]
        if only:
            notes.append(f"evals only in {side}: {', '.join(only)}")
    if old_doc.get("limit") != new_doc.get("limit"):
        notes.append(f"--limit differs: {old_doc.get('limit')} in {old_label}, {new_doc.get('limit')} in {new_label} "
                     "(sample sizes differ; the standard errors carry it)")
    return Comparison(rows, float(tolerance), float(min_effect), crashed, notes)


def judge(old: dict, new: dict, tolerance: float, min_effect: float) -> Row:
    """One metric's row: old and new result rows (results.json dicts) → allowance and verdict."""
    direction = new.get("higher_is_better")
    if direction is None:
        direction = old.get("higher_is_better")
    row = Row(str(old.get("eval")), str(old.get("name")), _number(old.get("value")), _number(new.get("value")),
              _number(old.get("stderr")), _number(new.get("stderr")), direction)
    if row.diff is None:
        row.verdict = NOT_AVAILABLE
        return row
    if direction is None:
        row.verdict = NO_DIRECTION
        return row
    if row.old_stderr is None and row.new_stderr is None:
        row.verdict = NO_STDERR
        return row
    noise = math.hypot(row.old_stderr or 0.0, row.new_stderr or 0.0)
    row.allowed = max(tolerance * noise, min_effect)
    bad = -row.diff if direction else row.diff  # > 0: moved the wrong way
    row.verdict = REGRESSION if bad > row.allowed else IMPROVED if -bad > row.allowed else OK
    return row


def expected_runs(suite: str, only: Union[str, Sequence[str], None], overrides: Sequence[str],
                  seed: Optional[int]) -> dict[str, dict[str, Any]]:
    """The config, seed and eval_version each eval of a suite will run with, as results.json will
    record them, without running anything (bad suites raise EvalError as ``evaluate`` would)."""
    import dataclasses

    from shardlab.evals.suite.registry import get
    from shardlab.evals.suite.suite_file import eval_config, load_suite, resolve_suite

    names = [only] if isinstance(only, str) else list(only) if only else None
    evals, _, suite_seed = load_suite(resolve_suite(suite), names, overrides)
    seed = seed if seed is not None else suite_seed
    return {name: {"config": _plain(dataclasses.asdict(eval_config(get(name), name, values))), "seed": seed,
                   "eval_version": get(name).version} for name, values in evals.items()}


@dataclass
class Baseline:
    """A baseline results.json checked against a suite before it runs, for ``eval --baseline``."""

    path: str
    doc: dict
    tolerance: float = DEFAULT_TOLERANCE
    min_effect: float = DEFAULT_MIN_EFFECT

    def compare(self, new_doc: dict, out: Any = None) -> Comparison:
        """Compare a finished run's document and print the table to ``out`` (default stdout); a
        refusal (which the check before the run makes unlikely) comes back as ``refused``."""
        out = sys.stdout if out is None else out
        try:
            comparison = compare(self.doc, new_doc, self.tolerance, self.min_effect, f"baseline {self.path}",
                                 "this run")
        except BaselineError as exc:
            print(f"shardlab eval: error: --baseline: {exc}", file=sys.stderr)
            return Comparison([], self.tolerance, self.min_effect, refused=str(exc))
        print(f"\nbaseline {self.path}:", file=out)
        print(comparison.table(), file=out)
        return comparison


def prepare_baseline(path: Optional[str], tolerance: Optional[float], min_effect: Optional[float],
                     suite: str, only: Union[str, Sequence[str], None] = None, overrides: Sequence[str] = (),
                     seed: Optional[int] = None) -> Optional[Baseline]:
    """``--baseline PATH`` read and checked against what the suite will run (BaselineError before
    anything runs); None without a baseline. ``tolerance``/``min_effect`` None mean the defaults."""
    if path is None:
        if tolerance is not None or min_effect is not None:
            raise BaselineError("--tolerance and --min-effect need --baseline OLD/results.json")
        return None
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    min_effect = DEFAULT_MIN_EFFECT if min_effect is None else min_effect
    for name, value in (("--tolerance", tolerance), ("--min-effect", min_effect)):
        if _number(value) is None or value < 0:
            raise BaselineError(f"{name} must be a finite number >= 0, got {value!r}")
    doc = load_results(path)
    old_runs, new_runs = runs_of(doc), expected_runs(suite, only, overrides, seed)
    if not check_compatible(old_runs, new_runs, f"baseline {path}", "this run"):
        raise _nothing_shared(old_runs, new_runs, f"baseline {path}", "this run")
    return Baseline(os.fspath(path), doc, float(tolerance), float(min_effect))


def main(old_path: str, new_path: str, tolerance: Optional[float] = None, min_effect: Optional[float] = None) -> int:
    """``shardlab compare OLD NEW``: print the table; 0 no regression, 1 regression, 2 refused."""
    try:
        comparison = compare(load_results(old_path), load_results(new_path),
                             DEFAULT_TOLERANCE if tolerance is None else tolerance,
                             DEFAULT_MIN_EFFECT if min_effect is None else min_effect, old_path, new_path)
    except BaselineError as exc:
        print(f"shardlab compare: error: {exc}", file=sys.stderr)
        return 2
    print(f"old: {old_path}\nnew: {new_path}\n")
    print(comparison.table())
    return comparison.exit_code
