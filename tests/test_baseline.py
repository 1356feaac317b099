"""Baselines: the pure ``compare`` on hand-made results documents (pass, regress, refuse), the
``shardlab compare`` command on files, and ``shardlab eval --baseline`` on a tiny checkpoint."""

from __future__ import annotations

import copy
import json
import textwrap

import pytest

from shardlab import cli
from shardlab.evals.suite.baseline import (IMPROVED, NO_DIRECTION, NO_STDERR, NOT_AVAILABLE, OK, REGRESSION,
                                           BaselineError, compare)
from shardlab.evals.suite.results import SCHEMA_VERSION
from tiny_suites import GOAL_MISGENERALIZATION

pytestmark = pytest.mark.usefixtures("one_thread")  # the end-to-end tests run tiny forwards
CONFIG = {"mazes": 200, "region": None}


def row(name, value, stderr=None, higher_is_better=True, eval="goal_misgeneralization", **extra):
    return {"eval": eval, "name": name, "value": value, "stderr": stderr, "n": 200,
            "higher_is_better": higher_is_better, "interval": None, "seed": 0, "config": dict(CONFIG),
            "eval_version": 1, "seconds": 1.0, **extra}


def doc(*rows, errors=None, **meta):
    return {"schema_version": SCHEMA_VERSION, "checkpoint": "x.ckpt", "limit": None, **meta,
            "results": list(rows), "artifacts": {}, "errors": errors or {}}


def verdicts(comparison):
    return {r.name: r.verdict for r in comparison.rows}


def test_identical_results_pass():
    base = doc(row("p_cheese", 0.6, 0.03), row("p_neither", 0.1, 0.02, higher_is_better=False))
    result = compare(base, copy.deepcopy(base))
    assert result.passed and result.exit_code == 0 and not result.regressions
    assert verdicts(result) == {"p_cheese": OK, "p_neither": OK}
    assert all(r.diff == 0 for r in result.rows)


def test_drop_beyond_noise_and_min_effect_is_a_regression():
    result = compare(doc(row("p_cheese", 0.8, 0.02)), doc(row("p_cheese", 0.5, 0.03)))
    [r] = result.rows
    assert r.verdict == REGRESSION and not result.passed and result.exit_code == 1
    assert r.diff == pytest.approx(-0.3)
    assert r.allowed == pytest.approx(3 * (0.02 ** 2 + 0.03 ** 2) ** 0.5)
    assert "REGRESSION" in result.table() and "1 regression in 1 shared metrics" in result.table()


def test_lower_is_better_metric_that_increases_is_a_regression():
    result = compare(doc(row("p_neither", 0.1, 0.01, higher_is_better=False)),
                     doc(row("p_neither", 0.3, 0.01, higher_is_better=False)))
    assert verdicts(result) == {"p_neither": REGRESSION}
    better = compare(doc(row("p_neither", 0.3, 0.01, higher_is_better=False)),
                     doc(row("p_neither", 0.1, 0.01, higher_is_better=False)))
    assert verdicts(better) == {"p_neither": IMPROVED} and better.passed


def test_change_within_noise_is_not_a_regression():
    # a drop of 0.1 with standard errors 0.05 each: 3 * 0.0707 = 0.21 allowed
    result = compare(doc(row("p_cheese", 0.6, 0.05)), doc(row("p_cheese", 0.5, 0.05)))
    assert verdicts(result) == {"p_cheese": OK} and result.passed
    strict = compare(doc(row("p_cheese", 0.6, 0.05)), doc(row("p_cheese", 0.5, 0.05)), tolerance=1.0)
    assert verdicts(strict) == {"p_cheese": REGRESSION}


def test_min_effect_guards_changes_with_zero_stderr():
    old = doc(row("p_cheese", 1.0, 0.0))
    assert verdicts(compare(old, doc(row("p_cheese", 0.99, 0.0)))) == {"p_cheese": OK}  # < E = 0.02
    assert verdicts(compare(old, doc(row("p_cheese", 0.97, 0.0)))) == {"p_cheese": REGRESSION}
    assert verdicts(compare(old, doc(row("p_cheese", 0.97, 0.0)), min_effect=0.05)) == {"p_cheese": OK}


def test_metrics_without_direction_or_stderr_or_value_never_fail():
    old = doc(row("p_corner", 0.1, 0.01, higher_is_better=None), row("mean_steps", 20.0, None, False),
              row("accuracy", 0.9, None), row("p_cheese", float("nan"), 0.1), row("one_sided", 0.9, 0.01))
    new = doc(row("p_corner", 0.9, 0.01, higher_is_better=None), row("mean_steps", 400.0, None, False),
              row("accuracy", 0.2, None), row("p_cheese", 0.5, 0.1), row("one_sided", 0.5, None))
    result = compare(old, new)
    assert verdicts(result) == {"p_corner": NO_DIRECTION, "mean_steps": NO_STDERR, "accuracy": NO_STDERR,
                                "p_cheese": NOT_AVAILABLE, "one_sided": REGRESSION}
    by_name = {r.name: r for r in result.rows}
    assert by_name["one_sided"].allowed == pytest.approx(0.03)  # the missing stderr counts as 0
    assert by_name["p_cheese"].old is None and by_name["p_cheese"].diff is None
    assert [r.name for r in result.regressions] == ["one_sided"]


def test_higher_is_better_falls_back_to_the_baseline():
    result = compare(doc(row("p_cheese", 0.9, 0.01)), doc(row("p_cheese", 0.5, 0.01, higher_is_better=None)))
    assert verdicts(result) == {"p_cheese": REGRESSION}


@pytest.mark.parametrize("change,needle", [
    (lambda r: r["config"].update(mazes=50), "config differs (mazes: 200 → 50"),
    (lambda r: r.update(seed=1), "seed 0 in the baseline but 1 in the new results"),
    (lambda r: r.update(eval_version=2), "eval_version 1 in the baseline but 2"),
])
def test_refuses_different_config_seed_or_eval_version(change, needle):
    new = doc(row("p_cheese", 0.6, 0.03), row("p_corner", 0.2, 0.03))
    for r in new["results"]:
        change(r)
    with pytest.raises(BaselineError) as info:
        compare(doc(row("p_cheese", 0.6, 0.03), row("p_corner", 0.2, 0.03)), new)
    assert needle in str(info.value) and "goal_misgeneralization" in str(info.value)


def test_an_option_added_later_with_a_null_default_does_not_break_an_older_baseline():
    new = doc(row("p_cheese", 0.6, 0.03))
    new["results"][0]["config"]["min_size"] = None  # null: taken from the checkpoint, as before the option
    assert compare(doc(row("p_cheese", 0.6, 0.03)), new).passed
    new["results"][0]["config"]["min_size"] = 7
    with pytest.raises(BaselineError, match=r"config differs \(min_size"):
        compare(doc(row("p_cheese", 0.6, 0.03)), new)


def test_missing_eval_version_reads_as_version_1():
    old = doc(row("p_cheese", 0.6, 0.03))
    del old["results"][0]["eval_version"]  # results.json written before eval versions existed
    assert compare(old, doc(row("p_cheese", 0.6, 0.03))).passed


@pytest.mark.parametrize("bad,needle", [
    ({"schema_version": 99, "results": []}, "schema_version 99"),
    ({"results": []}, "not a shardlab results.json"),
    ([1, 2], "not a shardlab results.json"),
])
def test_refuses_what_is_not_a_results_document(bad, needle):
    with pytest.raises(BaselineError, match=needle.replace("(", r"\(")):
        compare(bad, doc(row("p_cheese", 0.6)))


def test_refuses_results_without_a_shared_eval_and_bad_tolerances():
    with pytest.raises(BaselineError, match="nothing to compare"):
        compare(doc(row("p_cheese", 0.6, eval="a")), doc(row("p_cheese", 0.6, eval="b")))
    for kwargs in ({"tolerance": -1}, {"min_effect": float("nan")}):
        with pytest.raises(BaselineError, match="finite number >= 0"):
            compare(doc(row("p", 0.6)), doc(row("p", 0.6)), **kwargs)


def test_eval_that_crashed_since_the_baseline_fails_and_one_sided_metrics_are_noted():
    old = doc(row("p_cheese", 0.6, 0.03), row("gone", 1.0, 0.1), row("x", 1.0, eval="other"), limit=None)
    new = doc(row("p_cheese", 0.6, 0.03), row("fresh", 1.0, 0.1), limit=8, errors={"other": "RuntimeError: boom"})
    result = compare(old, new)
    assert result.crashed == {"other": "RuntimeError: boom"} and not result.passed and result.exit_code == 1
    notes = " / ".join(result.notes)
    assert "only in the new results: goal_misgeneralization.fresh" in notes
    assert "only in the baseline: goal_misgeneralization.gone" in notes and "--limit differs" in notes
    assert "other: crashed since the baseline" in result.table()
    assert "crashed since the baseline" in result.markdown()


def test_markdown_table_puts_regressions_first_and_escapes_cells():
    old = doc(row("a|b", 0.5, 0.01), row("p_cheese", 0.9, 0.01))
    new = doc(row("a|b", 0.5, 0.01), row("p_cheese", 0.2, 0.01))
    lines = [line for line in compare(old, new).markdown().splitlines() if line.startswith("| goal")]
    assert "p_cheese" in lines[0] and "❌ regression" in lines[0]
    assert "a\\|b" in lines[1] and "✅ ok" in lines[1]


# ----------------------------------------------------------------------------- shardlab compare


def _write(path, document) -> str:
    path.write_text(json.dumps(document))
    return str(path)


def test_compare_command_prints_the_table_and_exits_by_verdict(tmp_path, capsys):
    old = _write(tmp_path / "old.json", doc(row("p_cheese", 0.8, 0.02), row("p_corner", 0.1, 0.02, None)))
    same = _write(tmp_path / "same.json", doc(row("p_cheese", 0.79, 0.02), row("p_corner", 0.5, 0.02, None)))
    worse = _write(tmp_path / "worse.json", doc(row("p_cheese", 0.4, 0.02), row("p_corner", 0.1, 0.02, None)))
    assert cli.main(["compare", old, same]) == 0
    out = capsys.readouterr().out
    for column in ("old", "new", "diff", "allowed", "verdict"):
        assert column in out.splitlines()[3]
    assert "no regressions in 2 shared metrics" in out
    assert cli.main(["compare", old, worse]) == 1
    out = capsys.readouterr().out
    regression = next(line for line in out.splitlines() if "REGRESSION" in line)
    assert "p_cheese" in regression and "0.8 ± 0.02" in regression and "-0.4" in regression
    assert cli.main(["compare", old, worse, "--tolerance", "100", "--min-effect", "0.5"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("problem", ["missing", "not_json", "not_results", "seed", "bad_tolerance"])
def test_compare_command_refuses_with_one_line(tmp_path, capsys, problem):
    old = _write(tmp_path / "old.json", doc(row("p_cheese", 0.8, 0.02)))
    new = {"missing": str(tmp_path / "nope.json"),
           "not_json": str(tmp_path / "old.json") + "x",
           "not_results": _write(tmp_path / "other.json", {"hello": 1}),
           "seed": _write(tmp_path / "seed.json", doc(row("p_cheese", 0.8, 0.02, seed=5))),
           "bad_tolerance": old}[problem]
    if problem == "not_json":
        (tmp_path / "old.jsonx").write_text("{not json")
    argv = ["compare", old, new] + (["--tolerance", "-3"] if problem == "bad_tolerance" else [])
    assert _exit_code(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert {"missing": "no such file", "not_json": "not a results.json", "not_results": "not a shardlab results.json",
            "seed": "seed 0", "bad_tolerance": "finite number >= 0"}[problem] in captured.err


def _exit_code(argv) -> int:
    """cli.main's code; argparse's usage errors exit through SystemExit."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def test_compare_is_a_listed_subcommand():
    assert "compare" in cli.parser().format_help()


# ----------------------------------------------------------------------------- shardlab eval --baseline

SUITE = GOAL_MISGENERALIZATION


@pytest.fixture(scope="module")
def baseline_run(tiny_maze_checkpoint, tmp_path_factory):
    """One evaluation of the tiny checkpoint: (checkpoint, suite path, its out folder)."""
    folder = tmp_path_factory.mktemp("baseline")
    suite = folder / "suite.yaml"
    suite.write_text(textwrap.dedent(SUITE))
    out = folder / "base"
    assert cli.main(["eval", tiny_maze_checkpoint, "--suite", str(suite), "--out", str(out), "--limit", "2",
                     "--loggers", "none", "--no-progress"]) == 0
    return tiny_maze_checkpoint, str(suite), out


def _eval(checkpoint, suite, out, *extra):
    return cli.main(["eval", checkpoint, "--suite", suite, "--out", str(out), "--limit", "2", "--loggers", "none",
                     "--no-progress", *extra])


def test_eval_against_its_own_baseline_passes_and_reports_it(baseline_run, tmp_path, capsys):
    checkpoint, suite, base = baseline_run
    capsys.readouterr()
    assert _eval(checkpoint, suite, tmp_path / "new", "--baseline", str(base / "results.json")) == 0
    out = capsys.readouterr().out
    assert f"baseline {base / 'results.json'}:" in out and "no regressions in" in out
    report = (tmp_path / "new" / "report.md").read_text()
    assert "## Baseline comparison" in report and "no regressions in" in report and "| regressions |" in report


def test_eval_exits_1_on_a_regression_against_an_edited_baseline(baseline_run, tmp_path, capsys):
    checkpoint, suite, base = baseline_run
    document = json.loads((base / "results.json").read_text())
    target = next(r for r in document["results"] if r["higher_is_better"] is not None and r["stderr"] is not None)
    shift = 0.5 + 10 * target["stderr"]  # far beyond 3 standard errors and the minimum effect
    target["value"] += shift if target["higher_is_better"] else -shift  # the baseline was much better
    target["stderr"] = 0.0
    edited = _write(tmp_path / "edited.json", document)
    capsys.readouterr()
    assert _eval(checkpoint, suite, tmp_path / "new", "--baseline", edited) == 1
    out = capsys.readouterr().out
    regression = next(line for line in out.splitlines() if "REGRESSION" in line)
    assert f" {target['name']} " in regression
    report = (tmp_path / "new" / "report.md").read_text()
    assert "❌ regression" in report and "regression(s) against the baseline" in report.splitlines()[0]
    assert json.loads((tmp_path / "new" / "results.json").read_text())["results"]  # outputs are still written


@pytest.mark.parametrize("problem", ["override", "seed", "missing", "no_baseline"])
def test_eval_refuses_an_incomparable_baseline_before_running(baseline_run, tmp_path, capsys, problem):
    checkpoint, suite, base = baseline_run
    extra = {"override": ["--baseline", str(base), "goal_misgeneralization.mazes=4"],
             "seed": ["--baseline", str(base / "results.json"), "--seed", "9"],
             "missing": ["--baseline", str(tmp_path / "nope.json")],
             "no_baseline": ["--min-effect", "0.1"]}[problem]
    capsys.readouterr()
    assert _eval(checkpoint, suite, tmp_path / "o", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert {"override": "mazes: 8 → 4", "seed": "seed 3 in baseline", "missing": "no such file",
            "no_baseline": "need --baseline"}[problem] in err
    assert not (tmp_path / "o").exists()
