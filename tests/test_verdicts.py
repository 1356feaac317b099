"""Three-valued verdicts on hand-made results: the exit code keeps the point-estimate rule, the
reports say held / not held / undetermined from the interval, an undefined metric with a reason
is undetermined (not missed), and results of schema 1 still compare against schema 2."""

from __future__ import annotations

import math

from shardlab.api import Results
from shardlab.evals.suite import report, stats
from shardlab.evals.suite.baseline import OK, compare
from shardlab.evals.suite.results import SCHEMA_VERSION, Result, Threshold, results_document


def _results(tmp_path, metrics: Result, *thresholds: Threshold) -> Results:
    runs = [{"eval": "demo", "result": metrics, "seed": 0, "config": {}, "seconds": 0.1}]
    return Results(runs, list(thresholds), {"suite": "x.yaml"}, str(tmp_path))


def test_point_rule_for_the_exit_code_and_the_interval_for_the_verdict(tmp_path):
    result = Result()
    result.add("clear", stats.proportion(290, 300))        # [0.94, 0.98]: held against >= 0.9
    result.add("straddles", stats.proportion(28, 100))     # 0.28 [0.20, 0.37] against >= 0.25
    result.add("below", stats.proportion(5, 100))          # not held
    result.add("spearman", stats.undefined("every target gave the same mean return", 8, "levels"))
    result.add("budget", 300, kind="setting")
    bounds = [Threshold("demo.clear", min=0.9), Threshold("demo.straddles", min=0.25),
              Threshold("demo.below", min=0.25), Threshold("demo.spearman", min=0.5),
              Threshold("demo.missing", min=0.5)]
    results = _results(tmp_path, result, *bounds)
    assert results.verdicts == {"demo.clear": "held", "demo.straddles": "undetermined", "demo.below": "not held",
                                "demo.spearman": "undetermined", "demo.missing": "not held"}
    # exit code: point estimates; the undefined metric (with its reason) is not a miss, a missing one is
    assert [t.key for t, _ in results.missed] == ["demo.below", "demo.missing"] and results.exit_code == 1
    text = report.markdown(results, str(tmp_path))
    assert "| straddles | 0.28 [0.2" in text and "✅ >= 0.25 · undetermined" in text
    assert "❌ >= 0.25 · not held" in text and "✅ >= 0.9 · held" in text
    assert "undefined: every target gave the same mean return" in text
    assert "| budget | 300 | setting |" in text
    assert "2/5 met" not in text and "3/5 met; 1 held, 2 not held, 2 undetermined" in text


def test_results_rows_carry_the_interval_fields(tmp_path):
    result = Result()
    result.add("p", stats.proportion(30, 40, unit="layouts"), higher_is_better=True)
    result.add("count", 7, kind="count")
    document = results_document([{"eval": "e", "result": result, "seed": 0, "config": {}, "seconds": 0.0}], {})
    assert document["schema_version"] == SCHEMA_VERSION == 2
    p, count = document["results"]
    assert p["unit"] == "layouts" and p["method"] == "wilson" and p["n"] == 40 and p["kind"] == "estimate"
    assert p["ci_low"] < 0.75 < p["ci_high"] and p["higher_is_better"] is True
    assert count["kind"] == "count" and count["ci_low"] is None and count["ci_high"] is None


def test_a_schema_1_baseline_still_compares():
    def row(version_fields: dict) -> dict:
        return {"eval": "goal_misgeneralization", "name": "p_cheese", "value": 0.6, "stderr": 0.03, "n": 200,
                "higher_is_better": True, "seed": 0, "config": {"mazes": 200}, "eval_version": 1, "seconds": 1.0,
                **version_fields}

    old = {"schema_version": 1, "results": [row({"interval": None})], "artifacts": {}, "errors": {}}
    new = {"schema_version": 2, "results": [row({"ci_low": 0.54, "ci_high": 0.66, "method": "wilson",
                                                 "unit": "mazes", "kind": "estimate", "note": None})],
           "artifacts": {}, "errors": {}}
    comparison = compare(old, new)
    assert comparison.refused is None and [r.verdict for r in comparison.rows] == [OK]
    assert math.isclose(comparison.rows[0].diff, 0.0)
