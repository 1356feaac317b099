"""Run an eval suite on a checkpoint: results.json, junit.xml, a printed table, exit 0/1/2."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from evals.context import EvalContext
from evals.registry import EvalError, check_fits, get
from evals.results import Result, Threshold, results_document, write_json_atomic, write_junit
from trainers import __version__
from trainers.checkpointing import CheckpointError
from trainers.config import ConfigError, read_yaml
from trainers.restore import ORACLE_PREFIX, Trained, load_oracle, load_trained

EXIT_OK, EXIT_THRESHOLD, EXIT_BAD_INPUT = 0, 1, 2


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def load_suite(path: str, only: Optional[str],
               overrides: Sequence[str] = ()) -> tuple[dict[str, Any], list[Threshold], int]:
    """The suite YAML: ``evals: {name: {config}}``, ``thresholds: {eval.metric: {min, max}}``, ``seed``;
    ``overrides`` (``EVAL.KEY=VALUE``) change the configs of evals in the suite."""
    try:
        suite = read_yaml(path)
    except ConfigError as exc:
        raise EvalError(str(exc).replace("config file", "suite file")) from None
    unknown = sorted(set(suite) - {"evals", "thresholds", "seed"})
    if unknown:
        raise EvalError(f"suite {path} has unknown keys {unknown}; use evals, thresholds, seed")
    evals = dict(suite.get("evals") or {})
    for name in evals:
        get(name)  # unknown names fail before anything runs
    evals = _apply_overrides(evals, overrides, path)
    if only:
        if only not in evals:
            get(only)
            raise EvalError(f"eval {only!r} is not in suite {path}; it has {', '.join(evals)}")
        evals = {only: evals[only]}
    thresholds = []
    for key, bounds in (suite.get("thresholds") or {}).items():
        if not isinstance(bounds, dict) or not set(bounds) <= {"min", "max"} or not bounds:
            raise EvalError(f"threshold {key!r} in {path} must look like {{min: x}} and/or {{max: y}}")
        thresholds.append(Threshold(key, bounds.get("min"), bounds.get("max")))
    seed = suite.get("seed", 0)
    if not isinstance(seed, int):
        raise EvalError(f"seed in suite {path} must be an integer, got {seed!r}")
    return {name: cfg or {} for name, cfg in evals.items()}, thresholds, seed


def _apply_overrides(evals: dict[str, Any], overrides: Sequence[str], path: str) -> dict[str, Any]:
    """The suite's eval configs with ``EVAL.KEY=VALUE`` overrides merged in (values parsed as YAML)."""
    for item in overrides:
        key, equals, _ = item.partition("=")
        name = key.split(".", 1)[0]
        if not equals or "." not in key:
            raise EvalError(f"override {item!r} must look like EVAL.KEY=VALUE, e.g. retargeting.max_steps=500")
        if name not in evals:
            get(name)  # an unknown eval gets the close-names message
            raise EvalError(f"override {item!r} names eval {name!r}, which is not in suite {path}; "
                            f"it has {', '.join(evals)}")
        try:
            patch = OmegaConf.to_container(OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as exc:
            raise EvalError(f"override {item!r}: {str(exc).splitlines()[0]}") from None
        merged = OmegaConf.merge(OmegaConf.create(evals[name] or {}), patch[name])
        evals[name] = OmegaConf.to_container(merged)
    return evals


def _eval_config(cls: type, name: str, values: dict) -> Any:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Config), values))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        where = f" key {key!r}" if key else ""
        raise EvalError(f"config of eval {name!r}{where}: {str(exc).splitlines()[0]}") from None


def run_suite(checkpoint: str, suite_path: str, out_dir: str, only: Optional[str] = None,
              limit: Optional[int] = None, seed: Optional[int] = None, progress: bool = True,
              overrides: Sequence[str] = (), recipe: Optional[str] = None) -> int:
    """Run the suite and write the outputs; returns the exit code. ``checkpoint`` may name a
    scripted policy (``oracle:cheese_seeker``), played in the env of the training ``recipe``."""
    try:
        trained = _load(checkpoint, recipe)
        evals, thresholds, suite_seed = load_suite(suite_path, only, overrides)
        for name in evals:
            check_fits(get(name), trained.kind, checkpoint)
        configs = {name: _eval_config(get(name), name, values) for name, values in evals.items()}
        instances = {name: get(name)(config) for name, config in configs.items()}  # may reject a config
        for instance in instances.values():  # evals that need something of the checkpoint say so now
            if hasattr(instance, "check"):
                instance.check(trained.config)
    except (EvalError, CheckpointError, ConfigError, ValueError) as exc:
        print(f"shardlab eval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    suite_seed = seed if seed is not None else suite_seed
    os.makedirs(out_dir, exist_ok=True)
    runs = []
    for name, config in configs.items():
        ctx = EvalContext(trained.model, trained.config, os.path.join(out_dir, name), seed=suite_seed,
                          limit=limit, kind=trained.kind, train_steps=trained.steps, checkpoint=checkpoint,
                          progress=progress)
        start = time.perf_counter()
        run: dict[str, Any] = {"eval": name, "seed": suite_seed, "config": dataclasses.asdict(config)}
        print(f"running {name} ...", file=sys.stderr)
        try:
            run["result"] = instances[name].run(ctx)
        except Exception as exc:  # one broken eval should not hide the others' results
            run["result"], run["error"] = Result(), f"{type(exc).__name__}: {exc}"
        run["seconds"] = time.perf_counter() - start
        runs.append(run)
    values = {f"{r['eval']}.{m.name}": m.value for r in runs for m in r["result"].metrics}
    failures: dict[str, list[str]] = {}
    missed = []
    for threshold in thresholds:
        value = values.get(threshold.key)
        if threshold.key.split(".", 1)[0] not in configs:
            continue
        if not threshold.holds(value):
            missed.append((threshold, value))
            failures.setdefault(threshold.key.split(".", 1)[0], []).append(
                f"{threshold.key} = {value} (needs {threshold.describe()})")
    scripted = checkpoint.startswith(ORACLE_PREFIX)
    meta = {"checkpoint": checkpoint if scripted else os.path.abspath(checkpoint),
            "checkpoint_sha256": None if scripted else _sha256(checkpoint),
            "package_version": __version__, "git_commit": _git_commit(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "suite": os.path.abspath(suite_path),
            "limit": limit}
    write_json_atomic(os.path.join(out_dir, "results.json"), results_document(runs, meta))
    write_junit(os.path.join(out_dir, "junit.xml"), runs, failures)
    _write_scalars(os.path.join(out_dir, "tb"), runs, trained.steps)
    _print_table(runs)
    errors = [r for r in runs if r.get("error")]
    for run in errors:
        print(f"eval {run['eval']} failed: {run['error']}", file=sys.stderr)
    if missed:
        print("\nthresholds missed:", file=sys.stderr)
        for threshold, value in missed:
            shown = "missing" if value is None else f"{value:.4g}"
            print(f"  {threshold.key:<45} {shown:>10}   needs {threshold.describe()}", file=sys.stderr)
    print(f"\nresults: {os.path.join(out_dir, 'results.json')}  junit: {os.path.join(out_dir, 'junit.xml')}")
    return EXIT_THRESHOLD if missed or errors else EXIT_OK


def _load(checkpoint: str, recipe: Optional[str]) -> Trained:
    """A checkpoint's network, or a scripted policy with the recipe's config."""
    if checkpoint.startswith(ORACLE_PREFIX):
        if recipe is None:
            raise EvalError(f"{checkpoint} is a scripted policy: give the training recipe whose mazes it plays, "
                            "e.g. --recipe configs/train/maze_demo.yaml")
        return load_oracle(checkpoint[len(ORACLE_PREFIX):], recipe)
    if recipe is not None:
        raise EvalError("--recipe is only for scripted policies (oracle:NAME); a checkpoint carries its own config")
    return load_trained(checkpoint)


def _write_scalars(folder: str, runs: list[dict], step: int) -> None:
    """Every metric as a TensorBoard scalar ``eval/metric`` at the checkpoint's training step, so
    evals of successive checkpoints of a run line up as curves."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(folder)
    try:
        for run in runs:
            for m in run["result"].metrics:
                if m.value == m.value:  # NaN would break TensorBoard's plots
                    writer.add_scalar(f"{run['eval']}/{m.name}", m.value, step)
    finally:
        writer.close()


def _print_table(runs: list[dict]) -> None:
    print(f"\n{'eval':<24} {'metric':<46} {'value':>10} {'± stderr':>9} {'n':>6}")
    for run in runs:
        for m in run["result"].metrics:
            stderr = f"{m.stderr:.3f}" if m.stderr is not None else ""
            print(f"{run['eval']:<24} {m.name:<46} {m.value:>10.4g} {stderr:>9} {m.n or '':>6}")
