"""``shardlab eval``: run a suite through ``shardlab.evaluate``, write results.json, junit.xml,
report.md/report.html and TensorBoard scalars, print a table, exit 0 (passed), 1 (threshold missed /
eval crashed / regression against ``--baseline``), 2 (bad input)."""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence, Union

from shardlab.configs.checks import ConfigError
from shardlab.evals.suite.baseline import prepare_baseline
from shardlab.evals.suite.registry import EvalError
from shardlab.evals.suite.report import check_summary, write_reports
from shardlab.evals.suite.results import write_json_atomic, write_junit
from shardlab.trainers.checkpointing import CheckpointError

EXIT_OK, EXIT_THRESHOLD, EXIT_BAD_INPUT = 0, 1, 2


def run_suite(checkpoint: Optional[str], suite_path: str, out_dir: str,
              only: Union[str, Sequence[str], None] = None, limit: Optional[int] = None,
              seed: Optional[int] = None, progress: bool = True, overrides: Sequence[str] = (),
              recipe: Optional[str] = None, weights: Optional[str] = None, device: str = "auto",
              loggers: Sequence[str] = ("tensorboard",), log_episodes: bool = False,
              baseline: Optional[str] = None, tolerance: Optional[float] = None,
              min_effect: Optional[float] = None, summary: Optional[str] = None) -> int:
    """Run the suite and write the outputs; returns the exit code. ``checkpoint`` may name a
    scripted policy (``oracle:cheese_seeker``) played in the env of the training ``recipe``, or be
    None with ``weights`` (a published weights file) and ``recipe``. ``loggers`` (tensorboard,
    csv, wandb) receive every metric and the PNGs under ``out_dir``. ``baseline`` (an earlier
    results.json) is compared metric by metric (evals/suite/baseline.py: ``tolerance`` standard
    errors, ``min_effect``); ``summary`` is a file the Markdown report is appended to."""
    from shardlab.api import evaluate
    from shardlab.trainers.trainer_config import LOGGERS, check_loggers_installed
    from shardlab.trainers.loggers import check_logger_paths

    try:
        unknown = sorted(set(loggers) - set(LOGGERS))
        if unknown:
            raise EvalError(f"--loggers {','.join(unknown)}: unknown; use some of {', '.join(LOGGERS)}")
        if len(set(loggers)) != len(loggers):
            raise EvalError(f"--loggers names a logger twice: {','.join(loggers)}")
        check_loggers_installed(loggers)
        check_logger_paths(loggers, out_dir)  # an existing --out folder the loggers would continue
        check_summary(summary)
        old = prepare_baseline(baseline, tolerance, min_effect, suite_path, only, overrides, seed)
        results = evaluate(checkpoint, suite=suite_path, only=only, limit=limit, seed=seed, device=device,
                           out=out_dir, recipe=recipe, weights=weights, overrides=overrides, progress=progress,
                           log_episodes=log_episodes)
    except (EvalError, CheckpointError, ConfigError, ValueError) as exc:
        print(f"shardlab eval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    failures: dict[str, list[str]] = {}
    for threshold, value in results.missed:
        failures.setdefault(threshold.key.split(".", 1)[0], []).append(
            f"{threshold.key} = {value} (needs {threshold.describe()})")
    write_json_atomic(os.path.join(out_dir, "results.json"), results.to_dict())
    write_junit(os.path.join(out_dir, "junit.xml"), results.runs, failures)
    _log(out_dir, results.runs, int(results.meta.get("train_steps") or 0), loggers)
    _print_table(results.runs)
    for name, error in results.errors.items():
        print(f"eval {name} failed: {error}", file=sys.stderr)
    if results.missed:
        print("\nthresholds missed:", file=sys.stderr)
        for threshold, value in results.missed:
            shown = "missing" if value is None else f"{value:.4g}"
            print(f"  {threshold.key:<45} {shown:>10}   needs {threshold.describe()}", file=sys.stderr)
    comparison = old.compare(results.to_dict()) if old is not None else None  # prints its table
    report, _ = write_reports(results, out_dir, comparison, summary)
    print(f"\nresults: {os.path.join(out_dir, 'results.json')}  junit: {os.path.join(out_dir, 'junit.xml')}  "
          f"report: {report}")
    code = EXIT_THRESHOLD if not results.passed else EXIT_OK
    return max(code, comparison.exit_code) if comparison is not None else code


def _log(out_dir: str, runs: list[dict], step: int, names: Sequence[str]) -> None:
    """Metrics and PNGs to the loggers ``names`` under ``out_dir`` (TensorBoard in ``tb/``, CSV in ``csv/``)."""
    if names:
        from shardlab.trainers.loggers import log_eval_metrics

        log_eval_metrics(out_dir, runs, step, list(names))


def _print_table(runs: list[dict]) -> None:
    print(f"\n{'eval':<24} {'metric':<46} {'value':>10} {'95% interval':>21} {'n':>6}")
    for run in runs:
        for m in run["result"].metrics:
            interval = f"[{m.ci_low:.4g}, {m.ci_high:.4g}]" if m.ci_low is not None and m.ci_high is not None else ""
            shown = f"{m.value:>10.4g}" if not m.undefined else f"{'undefined':>10}"
            extra = f"  ({m.note})" if m.undefined and m.note else ""
            print(f"{run['eval']:<24} {m.name:<46} {shown} {interval:>21} {m.n or '':>6}{extra}")
