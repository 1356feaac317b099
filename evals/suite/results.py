"""Eval results: metrics, what a suite run measured (``Results``), the schema-versioned results.json
and a JUnit XML report."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Optional
from xml.etree import ElementTree

from shardlab.atomic import save_with, write_json

SCHEMA_VERSION = 2  # 2: rows carry ci_low/ci_high, method, unit, kind and note
READABLE_SCHEMAS = (1, 2)  # results.json versions a baseline comparison still reads
KINDS = ("estimate", "count", "setting", "data")


@dataclass
class Metric:
    """One number an eval reports.

    ``kind`` says what it is: an ``estimate`` (of a rate, a mean, a difference: it carries a 95%
    interval ``ci_low``/``ci_high``, the ``method`` that made it and ``n`` independent ``unit``s),
    a ``count`` (mazes used, pairs skipped), a ``setting`` (a chosen layer index, a budget) or a
    property of the ``data`` (a dataset's best return): the last three carry no interval. ``note``
    says why a value is undefined (NaN) or what a reader should know about it.
    """

    name: str
    value: float
    stderr: Optional[float] = None
    n: Optional[int] = None
    higher_is_better: Optional[bool] = None
    ci_low: Optional[float] = None
    ci_high: Optional[float] = None
    method: Optional[str] = None
    unit: Optional[str] = None
    kind: str = "estimate"
    note: Optional[str] = None

    @property
    def undefined(self) -> bool:
        """True when the value is NaN (``note`` says why)."""
        return self.value is None or (isinstance(self.value, float) and math.isnan(self.value))


@dataclass
class Result:
    """What one eval returns: metrics and artifact paths (PNGs, ...)."""

    metrics: list[Metric] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)

    def add(self, name: str, value: Any, **kwargs: Any) -> None:
        """Append a metric: ``value`` is a number (give ``kind`` for counts, settings and data) or
        a ``stats.Estimate``, whose interval, method, unit and note the row takes over."""
        if hasattr(value, "ci_low") and hasattr(value, "method"):  # a stats.Estimate
            fields = {"stderr": value.stderr, "n": value.n, "ci_low": value.ci_low, "ci_high": value.ci_high,
                      "method": value.method, "unit": value.unit, "note": value.note}
            self.metrics.append(Metric(name, float(value.value), **{**fields, **kwargs}))
            return
        if kwargs.get("kind", "estimate") not in KINDS:
            raise ValueError(f"metric kind must be one of {', '.join(KINDS)}, got {kwargs['kind']!r}")
        self.metrics.append(Metric(name, float(value), **kwargs))


@dataclass
class Threshold:
    """A bound on one metric from the suite YAML (``eval.metric: {min: .., max: ..}``)."""

    key: str
    min: Optional[float] = None
    max: Optional[float] = None

    def holds(self, value: Optional[float]) -> bool:
        """True if ``value`` exists and lies within the bounds (the exit code's rule: the point estimate)."""
        if value is None or math.isnan(value):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def verdict(self, metric: Optional["Metric"]) -> str:
        """held / not held / undetermined from the metric's 95% interval (stats.verdict); a missing
        metric is not held, an undefined one (NaN) undetermined."""
        from shardlab.evals.suite.stats import NOT_HELD, verdict

        if metric is None:
            return NOT_HELD
        return verdict(metric.value, metric.ci_low, metric.ci_high, self.min, self.max)

    def missed(self, metric: Optional["Metric"]) -> bool:
        """What fails the exit code: a missing metric, or a defined one whose point estimate is out
        of bounds. An undefined metric (NaN with a note saying why) is undetermined, not missed."""
        if metric is None:
            return True
        if metric.undefined:
            return metric.note is None
        return not self.holds(metric.value)

    def describe(self) -> str:
        """Human-readable bounds."""
        parts = ([f">= {self.min:g}"] if self.min is not None else []) + ([f"<= {self.max:g}"] if self.max is not None else [])
        return " and ".join(parts)


def metric_from_row(row: dict) -> Metric:
    """A results.json row back as a Metric (schema 1 rows have no interval fields)."""
    names = Metric.__dataclass_fields__
    value = row.get("value")
    return Metric(**{**{key: row[key] for key in names if key in row and row[key] is not None},
                     "name": row.get("name", ""), "value": math.nan if value is None else float(value)})


def _finite(data: Any) -> Any:
    """NaN and ±inf become null: strict JSON parsers (jq, JavaScript) reject them."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def write_json_atomic(path: str, data: Any) -> None:
    """Write strict JSON (NaN and ±inf as null, other objects as str) atomically."""
    write_json(path, _finite(data), default=str, allow_nan=False)


def results_document(runs: list[dict], meta: dict) -> dict:
    """The results.json document: one row per (eval, metric) with the run's metadata."""
    rows = []
    for run in runs:
        for metric in run["result"].metrics:
            rows.append({"eval": run["eval"], **asdict(metric), "seed": run["seed"], "config": run["config"],
                         "eval_version": run.get("eval_version", 1), "seconds": run["seconds"]})
    return {"schema_version": SCHEMA_VERSION, **meta, "results": rows,
            "artifacts": {run["eval"]: run["result"].artifacts for run in runs},
            "errors": {run["eval"]: run["error"] for run in runs if run.get("error")}}


def write_junit(path: str, runs: list[dict], failures: dict[str, list[str]]) -> None:
    """JUnit XML with one test case per eval, failed when a threshold is missed or it crashed."""
    suite = ElementTree.Element("testsuite", name="shardlab.evals", tests=str(len(runs)),
                                failures=str(sum(1 for r in runs if failures.get(r["eval"]))),
                                errors=str(sum(1 for r in runs if r.get("error"))),
                                time=f"{sum(r['seconds'] for r in runs):.3f}")
    for run in runs:
        case = ElementTree.SubElement(suite, "testcase", classname="shardlab.evals", name=run["eval"],
                                      time=f"{run['seconds']:.3f}")
        if run.get("error"):
            ElementTree.SubElement(case, "error", message=run["error"])
        elif failures.get(run["eval"]):
            ElementTree.SubElement(case, "failure", message="; ".join(failures[run["eval"]]))
        out = ElementTree.SubElement(case, "system-out")
        out.text = "\n".join(f"{m.name} = {m.value:.6g}" for m in run["result"].metrics)
    save_with(path, lambda handle: ElementTree.ElementTree(suite).write(handle, encoding="utf-8",
                                                                         xml_declaration=True))


class Results(Mapping):
    """What a suite run measured: ``results["goal_misgeneralization"]["p_cheese"]`` is a value,
    ``rows()`` every metric with its stderr and n, ``missed``/``errors`` what failed."""

    def __init__(self, runs: list[dict], thresholds: list[Threshold], meta: dict, out_dir: str):
        self.runs, self.meta, self.out_dir = runs, meta, out_dir
        self.thresholds = list(thresholds)
        self._values = {run["eval"]: {m.name: m.value for m in run["result"].metrics} for run in runs}
        metrics = {f"{run['eval']}.{m.name}": m for run in runs for m in run["result"].metrics}
        ran = [t for t in thresholds if t.key.split(".", 1)[0] in self._values]
        # the exit code's rule is the point estimate against the bound; verdicts read the interval
        self.missed: list[tuple[Threshold, Optional[float]]] = [
            (t, metrics[t.key].value if t.key in metrics else None) for t in ran if t.missed(metrics.get(t.key))]
        self.verdicts: dict[str, str] = {t.key: t.verdict(metrics.get(t.key)) for t in ran}
        self.errors: dict[str, str] = {run["eval"]: run["error"] for run in runs if run.get("error")}

    def __getitem__(self, eval_name: str) -> dict[str, float]:
        """The metrics of one eval, name → value."""
        if eval_name not in self._values:
            raise KeyError(f"no eval {eval_name!r} in these results; they have {', '.join(self._values)}")
        return self._values[eval_name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def passed(self) -> bool:
        """True when every threshold held and no eval crashed."""
        return not self.missed and not self.errors

    @property
    def exit_code(self) -> int:
        """0 when passed, 1 when a threshold was missed or an eval crashed (``shardlab eval``'s code)."""
        return 0 if self.passed else 1

    def rows(self) -> list[dict[str, Any]]:
        """One dict per (eval, metric): eval, name, value, stderr, ci_low, ci_high, n, unit, method, kind, note, seed, seconds."""
        return [row for row in self.to_dict()["results"]]

    def to_dict(self) -> dict[str, Any]:
        """The results.json document (schema-versioned, with the run's metadata)."""
        return results_document(self.runs, self.meta)

    def to_dataframe(self) -> Any:
        """The rows as a pandas DataFrame (``pip install 'shardlab[pandas]'``)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Results.to_dataframe needs pandas; pip install 'shardlab[pandas]'") from None
        columns = ["eval", "name", "value", "stderr", "ci_low", "ci_high", "n", "unit", "method", "kind", "seed",
                   "seconds"]
        return pandas.DataFrame([{key: row[key] for key in columns} for row in self.rows()], columns=columns)

    def __repr__(self) -> str:
        state = "passed" if self.passed else f"{len(self.missed)} threshold(s) missed, {len(self.errors)} error(s)"
        return f"Results({', '.join(self._values)}; {state})"
