"""``shardlab eval RUN_DIR``: one suite over the checkpoints of a training run.

A run directory (a folder with ``checkpoints/``, made by ``shardlab train``) is evaluated at each
kept ``step-N.ckpt`` — with ``every`` only at the first checkpoint at or after each multiple of
``every`` (0, every, 2·every, …) — and at ``last.ckpt`` when it holds a step no step file has.
Each checkpoint gets the usual outputs of ``shardlab eval`` in ``OUT/step-N/`` (``run_suite``);
``OUT/sweep.json`` collects one row per checkpoint (step, path, sha256, results path, exit code and
the headline metrics: every metric the suite has a threshold for, plus P(cheese) outside and in
the region and the paired gap of ``goal_misgeneralization``) and ``OUT/sweep.png`` plots each
headline metric with its stderr against the training steps.

Resumable: a checkpoint whose ``step-N/results.json`` was made from a file with the same sha256
(and the same suite, evals, configs, seed and ``--limit``) is not evaluated again; sweep.json is
rebuilt from the results files. The exit code is the worst of the checkpoints' (0 or 1); 2 only
for bad input found before anything runs (one line on stderr, nothing written).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from shardlab.configs.checks import ConfigError
from shardlab.evals.suite.registry import EvalError, get
from shardlab.evals.suite.results import Threshold, metric_from_row, write_json_atomic
from shardlab.trainers.checkpointing import LAST, CheckpointError, step_checkpoints

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
SCHEMA_VERSION = 1
# goal_misgeneralization's headline metrics, shown in a sweep with or without thresholds
HEADLINE = {"goal_misgeneralization": ("p_cheese", "in_region/p_cheese", "gap/p_cheese")}


@dataclass(frozen=True)
class Point:
    """One checkpoint of the sweep."""

    step: int  # the checkpoint's training progress (env steps for PPO)
    path: str
    sha256: str

    @property
    def folder(self) -> str:
        """The output subfolder, named like the checkpoint file (zero-padded, so it sorts)."""
        return f"step-{self.step:012d}"


def is_run_dir(path: Optional[str]) -> bool:
    """True for a folder with a ``checkpoints/`` subfolder (a ``shardlab train`` run directory)."""
    return bool(path) and os.path.isdir(os.path.join(path, "checkpoints"))


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, as results.json records it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_checkpoints(run_dir: str) -> list[Point]:
    """The run's step checkpoints, oldest first, plus ``last.ckpt`` when it holds another step
    (same file by sha256, or the same stored step, as a step file: left out)."""
    folder = os.path.join(run_dir, "checkpoints")
    points = [Point(step, path, file_sha256(path)) for step, path in step_checkpoints(folder)]
    last = os.path.join(folder, LAST)
    if os.path.isfile(last):
        sha = file_sha256(last)
        if sha not in {p.sha256 for p in points}:
            from shardlab.trainers.restore import load_trained

            step = load_trained(last).steps
            if step not in {p.step for p in points}:
                points = sorted([*points, Point(step, last, sha)], key=lambda p: p.step)
    return points


def select_every(points: Sequence[Point], every: Optional[int]) -> list[Point]:
    """All ``points``, or with ``every`` the first at or after each multiple of it (0 included)."""
    if every is None or not points:
        return list(points)
    chosen: list[Point] = []
    for multiple in range(0, points[-1].step + 1, every):
        first = next((p for p in points if p.step >= multiple), None)
        if first is not None and first not in chosen:
            chosen.append(first)
    return chosen


@dataclass
class _Plan:
    """What every checkpoint's results must match to be reused, and what sweep.json shows."""

    suite: str
    evals: dict[str, Any]  # name → resolved config, as results.json stores it
    thresholds: list[Threshold]
    seed: int
    limit: Optional[int]

    @property
    def headline(self) -> list[str]:
        keys = [t.key for t in self.thresholds if t.key.split(".", 1)[0] in self.evals]
        for name, metrics in HEADLINE.items():
            if name in self.evals:
                keys += [f"{name}.{metric}" for metric in metrics]
        return list(dict.fromkeys(keys))


def _plan(suite: str, only: Union[str, Sequence[str], None], seed: Optional[int], limit: Optional[int],
          overrides: Sequence[str]) -> _Plan:
    """Resolve and check the suite before anything runs (EvalError / ValueError on bad input)."""
    from shardlab.evals.suite.suite_file import eval_config, load_suite, resolve_suite

    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise EvalError(f"limit must be a positive integer, got {limit!r}")
    path = resolve_suite(suite)
    names = [only] if isinstance(only, str) else list(only) if only else None
    evals, thresholds, suite_seed = load_suite(path, names, overrides)
    configs = {}
    for name, values in evals.items():
        config = eval_config(get(name), name, values)
        get(name)(config)  # an eval may reject its config
        configs[name] = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    return _Plan(os.path.abspath(path), configs, thresholds, suite_seed if seed is None else seed, limit)


def _read(path: str) -> Optional[dict]:
    try:
        with open(path) as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _reusable(document: Optional[dict], point: Point, plan: _Plan) -> bool:
    """True when ``document`` (a results.json) came from this checkpoint file and this plan."""
    if not document or document.get("checkpoint_sha256") != point.sha256:
        return False
    if document.get("suite") != plan.suite or document.get("limit") != plan.limit:
        return False
    if set(document.get("artifacts") or {}) != set(plan.evals):
        return False
    return all(row.get("seed") == plan.seed and row.get("config") == plan.evals.get(row.get("eval"))
               for row in document.get("results") or [])


def _exit_code(document: dict, plan: _Plan) -> int:
    """1 when an eval crashed or a threshold is missed in ``document``, else 0 (as ``shardlab eval``)."""
    if document.get("errors"):
        return EXIT_FAILED
    metrics = {f"{row['eval']}.{row['name']}": metric_from_row(row) for row in document.get("results") or []}
    ran = set(document.get("artifacts") or {})
    missed = [t for t in plan.thresholds if t.key.split(".", 1)[0] in ran and t.missed(metrics.get(t.key))]
    return EXIT_FAILED if missed else EXIT_OK


def _row(point: Point, out_dir: str, plan: _Plan, code: int, evaluated: bool) -> dict:
    """One sweep.json row, its headline metrics read back from the checkpoint's results.json."""
    results = os.path.join(out_dir, point.folder, "results.json")
    document = _read(results)
    rows = {f"{r['eval']}.{r['name']}": r for r in (document or {}).get("results") or []}
    metrics = {key: {field: rows[key].get(field) for field in ("value", "stderr", "ci_low", "ci_high", "n")}
               for key in plan.headline if key in rows}
    return {"step": point.step, "checkpoint": os.path.abspath(point.path), "sha256": point.sha256,
            "results": os.path.abspath(results) if document else None, "exit_code": code, "evaluated": evaluated,
            "metrics": metrics}


def run_sweep(run_dir: str, suite: str, out_dir: str, every: Optional[int] = None,
              only: Union[str, Sequence[str], None] = None, limit: Optional[int] = None,
              seed: Optional[int] = None, progress: bool = True, overrides: Sequence[str] = (),
              recipe: Optional[str] = None, weights: Optional[str] = None, device: str = "auto",
              loggers: Sequence[str] = ("tensorboard",), log_episodes: bool = False) -> int:
    """Evaluate the suite on the run's checkpoints (see the module docstring); the exit code."""
    from shardlab.api import check_out_dir, resolve_device
    from shardlab.evals.suite import runner
    from shardlab.trainers.trainer_config import LOGGERS, check_loggers_installed

    try:
        if not is_run_dir(run_dir):
            what = "--every needs a training run directory" if run_dir is None or os.path.isfile(run_dir) else \
                f"{run_dir} is not a training run directory"
            raise EvalError(f"{what} (a folder with checkpoints/, made by `shardlab train`)")
        if every is not None and every < 1:
            raise EvalError(f"--every must be a positive integer, got {every}")
        if recipe is not None or weights is not None:
            raise EvalError("a run directory's checkpoints carry their own config; drop --recipe/--weights")
        unknown = sorted(set(loggers) - set(LOGGERS))
        if unknown:
            raise EvalError(f"--loggers {','.join(unknown)}: unknown; use some of {', '.join(LOGGERS)}")
        check_loggers_installed(loggers)
        check_out_dir(out_dir)
        resolve_device(device)
        plan = _plan(suite, only, seed, limit, overrides)
        points = select_every(run_checkpoints(run_dir), every)
        if not points:
            raise EvalError(f"no checkpoints in {os.path.join(run_dir, 'checkpoints')} (step-*.ckpt or last.ckpt)")
    except (EvalError, CheckpointError, ConfigError, ValueError) as exc:
        print(f"shardlab eval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    rows, evaluated = [], 0
    for number, point in enumerate(points, 1):
        where = os.path.join(out_dir, point.folder)
        head = f"sweep [{number}/{len(points)}] step {point.step} ({os.path.basename(point.path)})"
        document = _read(os.path.join(where, "results.json"))
        if _reusable(document, point, plan):
            print(f"{head}: results for this file (sha256 {point.sha256[:12]}) already in {where}, reused",
                  file=sys.stderr)
            rows.append(_row(point, out_dir, plan, _exit_code(document, plan), evaluated=False))
            continue
        print(f"{head}: evaluating into {where}", file=sys.stderr)
        code = runner.run_suite(point.path, suite, where, only=only, limit=limit, seed=seed, progress=progress,
                                overrides=overrides, device=device, loggers=loggers, log_episodes=log_episodes)
        if code == EXIT_BAD_INPUT:
            if not evaluated:  # the first evaluation refused its input: nothing has run, nothing is written
                return EXIT_BAD_INPUT
            code = EXIT_FAILED  # one bad checkpoint among good ones
        evaluated += 1
        rows.append(_row(point, out_dir, plan, code, evaluated=True))

    os.makedirs(out_dir, exist_ok=True)
    plot = plot_sweep(rows, plan, os.path.join(out_dir, "sweep.png"), _step_label(run_dir))
    document = {"schema_version": SCHEMA_VERSION, "run_dir": os.path.abspath(run_dir), "suite": plan.suite,
                "every": every, "limit": limit, "seed": plan.seed, "headline": plan.headline,
                "thresholds": {t.key: {"min": t.min, "max": t.max} for t in plan.thresholds},
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "plot": os.path.abspath(plot),
                "rows": rows}
    path = os.path.join(out_dir, "sweep.json")
    write_json_atomic(path, document)
    worst = max(row["exit_code"] for row in rows)
    print(f"\nsweep: {len(rows)} checkpoint(s), {evaluated} evaluated, {len(rows) - evaluated} reused; "
          f"{'all passed' if worst == EXIT_OK else 'some failed'}\nsweep: {path}  plot: {plot}")
    return worst


def _step_label(run_dir: str) -> str:
    """The x-axis label: the run kind's progress unit (``env steps`` for PPO)."""
    try:
        from shardlab.trainers.config import read_yaml
        from shardlab.trainers.kinds import get_kind

        algo = read_yaml(os.path.join(run_dir, "config.yaml")).get("algo", "ppo")
        return "training " + get_kind(algo).load("module").progress_key.replace("_", " ")
    except Exception:  # a label is not worth failing the sweep for
        return "training steps"


def plot_sweep(rows: list[dict], plan: _Plan, path: str, xlabel: str = "training env steps") -> str:
    """One panel per headline metric: its value and 95% interval at each checkpoint's step, the suite's
    bounds as dashed lines. A Figure on its own Agg canvas (no pyplot state), written atomically."""
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from shardlab.evals.maze.render import write_png_atomic

    keys = plan.headline
    cols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    if not keys:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no headline metrics: the suite has no thresholds", ha="center", va="center")
        ax.set_axis_off()
    bounds = {t.key: t for t in plan.thresholds}
    for index, key in enumerate(keys):
        ax = fig.add_subplot(nrows, cols, index + 1)
        points = [(row["step"], row["metrics"][key]) for row in rows
                  if key in row["metrics"] and row["metrics"][key]["value"] is not None]
        if points:
            # the 95% interval where the row has one (schema 2), else ± stderr
            low = [m["value"] - (m["ci_low"] if m.get("ci_low") is not None else m["value"] - (m["stderr"] or 0))
                   for _, m in points]
            high = [(m["ci_high"] if m.get("ci_high") is not None else m["value"] + (m["stderr"] or 0)) - m["value"]
                    for _, m in points]
            ax.errorbar([step for step, _ in points], [m["value"] for _, m in points],
                        yerr=[low, high], marker="o", capsize=3)
        threshold = bounds.get(key)
        for bound in (threshold.min, threshold.max) if threshold else ():
            if bound is not None:
                ax.axhline(bound, color="tab:red", linestyle="--", linewidth=0.8)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    write_png_atomic(fig, path)
    return path
