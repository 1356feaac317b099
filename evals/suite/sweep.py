"""``shardlab eval RUN_DIR``: one suite over the checkpoints of a training run, on one machine or
split into shards over many.

A run directory (a folder with ``checkpoints/``, made by ``shardlab train``) is evaluated at each
kept ``step-N.ckpt`` — with ``every`` only at the first checkpoint at or after each multiple of
``every`` (0, every, 2·every, …) — and at ``last.ckpt`` when it holds a step no step file has.
Each checkpoint gets the usual outputs of ``shardlab eval`` in ``OUT/step-N/`` (``evaluator.run``);
``OUT/sweep.json`` collects one row per checkpoint (step, path, sha256, results path, exit code and
the headline metrics: every metric the suite has a threshold for, then each eval's declared
``headline``) and ``OUT/sweep.png`` plots each headline metric with its interval against the
training steps.

Sharded (``--shard K/N``, or a SLURM job array's or torchrun's variables): the shard evaluates
every N-th checkpoint from the K-th and writes its part, ``OUT/shards/shard-K-of-N.json``,
atomically; the last shard to finish, or ``shardlab eval --merge OUT``, writes sweep.json and
sweep.png from the N parts, refusing parts made with another suite, seed, limit, run or code
version. The merged sweep.json is the one an unsharded sweep writes.

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
from typing import Any, Optional, Sequence

from shardlab import __version__
from shardlab.evals.suite import evaluator
from shardlab.evals.suite.base import EvalError
from shardlab.evals.suite.registry import get
from shardlab.evals.suite.request import EvalRequest
from shardlab.evals.suite.results import Threshold, metric_from_row, write_json_atomic
from shardlab.trainers.checkpointing import LAST, step_checkpoints

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
SCHEMA_VERSION = 1
PART_SCHEMA_VERSION = 1
SHARDS = "shards"  # OUT/shards/shard-K-of-N.json
# what every part of one sweep must share; the first that differs is named when a merge refuses
SAME_IN_EVERY_PART = ("run_dir", "suite", "suite_sha256", "evals", "seed", "limit", "every", "thresholds",
                      "headline", "package_version", "git_commit", "shards")


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
    headline: list[str]  # thresholded metrics first, then each eval's declared headline


def _plan(request: EvalRequest) -> _Plan:
    """Resolve and check the suite before anything runs (EvalError / ValueError on bad input)."""
    from shardlab.evals.suite.suite_file import eval_config, load_suite, resolve_suite

    path = resolve_suite(request.suite)
    evals, thresholds, suite_seed = load_suite(path, request.only, request.overrides)
    configs = {}
    for name, values in evals.items():
        config = eval_config(get(name), name, values)
        get(name)(config)  # an eval may reject its config
        configs[name] = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    headline = [t.key for t in thresholds if t.key.split(".", 1)[0] in configs]
    headline += [f"{name}.{metric}" for name in configs for metric in get(name).headline]
    return _Plan(os.path.abspath(path), configs, thresholds, suite_seed if request.seed is None else request.seed,
                 request.limit, list(dict.fromkeys(headline)))


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


def _fingerprint(request: EvalRequest, plan: _Plan) -> dict[str, Any]:
    """What the sweep's parts must share (SAME_IN_EVERY_PART) and what sweep.json is made from."""
    return {"run_dir": os.path.abspath(request.checkpoint), "suite": plan.suite, "suite_sha256": file_sha256(plan.suite),
            "evals": plan.evals, "seed": plan.seed, "limit": plan.limit, "every": request.every,
            "thresholds": {t.key: {"min": t.min, "max": t.max} for t in plan.thresholds}, "headline": plan.headline,
            "package_version": __version__, "git_commit": evaluator.git_commit(),
            "shards": request.shard[1] if request.shard else 1}


def run_sweep(request: EvalRequest) -> int:
    """Evaluate the request's suite on its run directory's checkpoints (this shard's, when
    sharded; see the module docstring); the exit code."""
    try:
        plan = _plan(request)
        points = select_every(run_checkpoints(request.checkpoint), request.every)
        if not points:
            raise EvalError(f"no checkpoints in {os.path.join(request.checkpoint, 'checkpoints')} "
                            "(step-*.ckpt or last.ckpt)")
    except evaluator.BAD_INPUT as exc:
        print(f"shardlab eval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out_dir = request.out
    mine = points
    if request.shard is not None:
        index, count = request.shard
        mine = points[index::count]
        source = f" (from {request.shard_source})" if request.shard_source else ""
        print(f"sweep shard {index}/{count}{source}: {len(mine)} of {len(points)} checkpoint(s)", file=sys.stderr)

    rows, evaluated = [], 0
    for number, point in enumerate(mine, 1):
        where = os.path.join(out_dir, point.folder)
        head = f"sweep [{number}/{len(mine)}] step {point.step} ({os.path.basename(point.path)})"
        document = _read(os.path.join(where, "results.json"))
        if _reusable(document, point, plan):
            print(f"{head}: results for this file (sha256 {point.sha256[:12]}) already in {where}, reused",
                  file=sys.stderr)
            rows.append(_row(point, out_dir, plan, _exit_code(document, plan), evaluated=False))
            continue
        print(f"{head}: evaluating into {where}", file=sys.stderr)
        code = evaluator.run(request.replace(checkpoint=point.path, out=where, every=None, shard=None,
                                             shard_source=None))
        if code == EXIT_BAD_INPUT:
            if not evaluated:  # the first evaluation refused its input: nothing has run, nothing is written
                return EXIT_BAD_INPUT
            code = EXIT_FAILED  # one bad checkpoint among good ones
        evaluated += 1
        rows.append(_row(point, out_dir, plan, code, evaluated=True))

    fingerprint = _fingerprint(request, plan)
    if request.shard is None:
        return _write_sweep(out_dir, fingerprint, rows, evaluated)
    index, count = request.shard
    os.makedirs(os.path.join(out_dir, SHARDS), exist_ok=True)
    write_json_atomic(_part_path(out_dir, index, count),
                      {"schema_version": PART_SCHEMA_VERSION, "shard": [index, count], **fingerprint,
                       "evaluated": evaluated, "rows": rows})
    parts = _parts(out_dir, count)
    if len(parts) == count and all(_difference(fingerprint, part) is None for part in parts.values()):
        print(f"sweep shard {index}/{count}: every part is in, merging", file=sys.stderr)
        return merge(out_dir)
    worst = max((row["exit_code"] for row in rows), default=EXIT_OK)
    print(f"\nsweep shard {index}/{count}: {len(rows)} checkpoint(s), {evaluated} evaluated; "
          f"{len(parts)} of {count} parts in {os.path.join(out_dir, SHARDS)}. The last shard to finish, or "
          f"`shardlab eval --merge {out_dir}`, writes sweep.json", file=sys.stderr)
    return worst


def _part_path(out_dir: str, index: int, count: int) -> str:
    return os.path.join(out_dir, SHARDS, f"shard-{index}-of-{count}.json")


def _parts(out_dir: str, count: Optional[int] = None) -> dict[str, dict]:
    """The readable part files under ``OUT/shards`` (of ``count`` shards, when given), by path."""
    folder = os.path.join(out_dir, SHARDS)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    parts = {}
    for name in names:
        if not (name.startswith("shard-") and name.endswith(".json")):
            continue
        document = _read(os.path.join(folder, name))
        if document is not None and (count is None or document.get("shards") == count):
            parts[os.path.join(folder, name)] = document
    return parts


def _difference(fingerprint: dict, part: dict) -> Optional[str]:
    """The first SAME_IN_EVERY_PART field ``part`` has otherwise than ``fingerprint`` (None: none)."""
    return next((key for key in SAME_IN_EVERY_PART if part.get(key) != fingerprint.get(key)), None)


def merge(out_dir: str) -> int:
    """``shardlab eval --merge OUT``: sweep.json and sweep.png from the parts of a sharded sweep;
    2 with one line when parts are missing or were made with another suite, seed, run or code."""
    try:
        if not os.path.isdir(out_dir):
            raise EvalError(f"--merge {out_dir}: no such folder; give the --out folder the shards wrote to")
        parts = _parts(out_dir)
        if not parts:
            raise EvalError(f"--merge {out_dir}: no shard parts in {os.path.join(out_dir, SHARDS)}; "
                            "run the shards first (`shardlab eval RUN_DIR --out DIR --shard K/N`)")
        paths = list(parts)
        first = parts[paths[0]]
        for path in paths[1:]:
            key = _difference(first, parts[path])
            if key is not None:
                raise EvalError(f"--merge: {os.path.basename(path)} and {os.path.basename(paths[0])} differ in "
                                f"{key} ({parts[path].get(key)!r} vs {first.get(key)!r}); re-run the stale shard "
                                f"or remove its part from {os.path.join(out_dir, SHARDS)}")
        count = first.get("shards")
        have = {tuple(part.get("shard") or ()) for part in parts.values()}
        missing = [index for index in range(count) if (index, count) not in have]
        if missing:
            raise EvalError(f"--merge: shard(s) {', '.join(map(str, missing))} of {count} have not finished "
                            f"(no part in {os.path.join(out_dir, SHARDS)}); run them, then merge")
    except EvalError as exc:
        print(f"shardlab eval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    rows = sorted((row for part in parts.values() for row in part["rows"]), key=lambda row: row["step"])
    for row in rows:  # where the results are now: a cluster's nodes may mount the folder elsewhere
        if row.get("results"):
            folder = Point(row["step"], row["checkpoint"], row["sha256"]).folder
            row["results"] = os.path.abspath(os.path.join(out_dir, folder, "results.json"))
    return _write_sweep(out_dir, first, rows, sum(part.get("evaluated", 0) for part in parts.values()))


def _write_sweep(out_dir: str, fingerprint: dict, rows: list[dict], evaluated: int) -> int:
    """sweep.json and sweep.png from the rows; the worst exit code among them."""
    os.makedirs(out_dir, exist_ok=True)
    plot = plot_sweep(rows, fingerprint["headline"], fingerprint["thresholds"], os.path.join(out_dir, "sweep.png"),
                      _step_label(fingerprint["run_dir"]))
    document = {"schema_version": SCHEMA_VERSION, "run_dir": fingerprint["run_dir"], "suite": fingerprint["suite"],
                "every": fingerprint["every"], "limit": fingerprint["limit"], "seed": fingerprint["seed"],
                "headline": fingerprint["headline"], "thresholds": fingerprint["thresholds"],
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "plot": os.path.abspath(plot),
                "rows": rows}
    path = os.path.join(out_dir, "sweep.json")
    write_json_atomic(path, document)
    worst = max((row["exit_code"] for row in rows), default=EXIT_OK)
    print(f"\nsweep: {len(rows)} checkpoint(s), {evaluated} evaluated, {len(rows) - evaluated} reused; "
          f"{'all passed' if worst == EXIT_OK else 'some failed'}\nsweep: {path}  plot: {plot}")
    return worst


def _step_label(run_dir: str) -> str:
    """The x-axis label: the run kind's progress unit (``env steps`` for PPO)."""
    try:
        from shardlab.trainers.config import read_yaml
        from shardlab.trainers.kinds import get_kind

        algo = read_yaml(os.path.join(run_dir, "config.yaml")).get("algo", "ppo")
        return "training " + get_kind(algo).progress_key.replace("_", " ")
    except Exception:  # a label is not worth failing the sweep for
        return "training steps"


def plot_sweep(rows: list[dict], headline: Sequence[str], thresholds: dict[str, dict], path: str,
               xlabel: str = "training env steps") -> str:
    """One panel per headline metric: its value and 95% interval at each checkpoint's step, the suite's
    bounds as dashed lines. A Figure on its own Agg canvas (no pyplot state), written atomically."""
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from shardlab.figures import write_png_atomic

    keys = list(headline)
    cols = min(3, max(1, len(keys)))
    nrows = max(1, math.ceil(len(keys) / cols))
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows + 0.3), dpi=100)
    FigureCanvasAgg(fig)
    if not keys:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no headline metrics: the suite has no thresholds", ha="center", va="center")
        ax.set_axis_off()
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
        for bound in (thresholds.get(key) or {}).values():
            if bound is not None:
                ax.axhline(bound, color="tab:red", linestyle="--", linewidth=0.8)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    write_png_atomic(fig, path)
    return path
