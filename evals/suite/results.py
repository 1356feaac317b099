"""Eval results: metrics, the schema-versioned results.json and a JUnit XML report."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional
from xml.etree import ElementTree

from shardlab.atomic import save_with, write_json

SCHEMA_VERSION = 1


@dataclass
class Metric:
    """One number an eval reports."""

    name: str
    value: float
    stderr: Optional[float] = None
    n: Optional[int] = None
    higher_is_better: Optional[bool] = None
    interval: Optional[tuple[float, float]] = None


@dataclass
class Result:
    """What one eval returns: metrics and artifact paths (PNGs, ...)."""

    metrics: list[Metric] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)

    def add(self, name: str, value: float, **kwargs: Any) -> None:
        """Append a metric."""
        self.metrics.append(Metric(name, float(value), **kwargs))


@dataclass
class Threshold:
    """A bound on one metric from the suite YAML (``eval.metric: {min: .., max: ..}``)."""

    key: str
    min: Optional[float] = None
    max: Optional[float] = None

    def holds(self, value: Optional[float]) -> bool:
        """True if ``value`` exists and lies within the bounds."""
        if value is None or math.isnan(value):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def describe(self) -> str:
        """Human-readable bounds."""
        parts = ([f">= {self.min:g}"] if self.min is not None else []) + ([f"<= {self.max:g}"] if self.max is not None else [])
        return " and ".join(parts)


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
