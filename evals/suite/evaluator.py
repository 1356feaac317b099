"""Running a suite on one checkpoint: :func:`evaluate` an :class:`EvalRequest` into ``Results``, and
:func:`run` it the way ``shardlab eval`` does, writing results.json, junit.xml, report.md/.html and
the loggers' files, printing a table and returning the exit code: 0 passed, 1 a threshold missed /
an eval crashed / a regression against the baseline, 2 bad input (one line on stderr, nothing
written). ``shardlab.evaluate`` is this module's :func:`evaluate` behind keyword arguments; the
sweep (``sweep``) runs :func:`run` once per checkpoint."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator, Optional

from shardlab import __version__
from shardlab.configs.checks import ConfigError
from shardlab.evals.suite.base import EvalError
from shardlab.evals.suite.baseline import prepare_baseline
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.host import host_info
from shardlab.evals.suite.registry import check_fits, get
from shardlab.evals.suite.report import write_reports
from shardlab.evals.suite.request import EvalRequest, resolve_device
from shardlab.evals.suite.results import Result, Results, write_json_atomic, write_junit
from shardlab.evals.suite.suite_file import eval_config, load_suite, resolve_suite
from shardlab.trainers.checkpointing import CheckpointError
from shardlab.trainers.restore import ORACLE_PREFIX, Trained, load_oracle, load_trained, load_weights, wrap_policy

EXIT_OK, EXIT_THRESHOLD, EXIT_BAD_INPUT = 0, 1, 2
BAD_INPUT = (EvalError, CheckpointError, ConfigError, ValueError)
# what launchers set for a process group: an eval that trains (fine-tuning) must not see them, or
# Lightning would join a job array's or torchrun's group instead of training on its own
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAUNCHER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "PMI_", "OMPI_COMM_WORLD_")


@contextlib.contextmanager
def single_process() -> Iterator[None]:
    """Hide the launcher variables (SLURM, torchrun, MPI) while evals run; restore them after."""
    hidden = {name: value for name, value in os.environ.items()
              if name in LAUNCHER_VARIABLES or name.startswith(LAUNCHER_PREFIXES)}
    for name in hidden:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(hidden)


def prepare(request: EvalRequest) -> Trained:
    """What the request evaluates (see :func:`load_source`), on ``request.env_backend`` when given."""
    trained = load_source(request.checkpoint, request.weights, request.recipe)
    return trained if request.env_backend is None else with_env_backend(trained, request.env_backend)


def with_env_backend(trained: Trained, backend: str) -> Trained:
    """``trained`` with ``env.backend`` replaced in its config (the maze evals build their envs from
    it); EvalError (one line) for a checkpoint the backend cannot play."""
    from omegaconf import OmegaConf

    from shardlab.envs.maze_config import backend_problem

    if trained.kind != "ppo":
        raise EvalError(f"--env-backend picks the procgen maze's env, but {trained.path} is a {trained.kind} "
                        "checkpoint; drop --env-backend")
    env = trained.config.env
    if backend_problem(backend, env.num_levels) is not None:
        raise EvalError(f"--env-backend {backend} plays fresh mazes only, but {trained.path} "
                        f"was trained with env.num_levels: {env.num_levels}; "
                        "drop --env-backend (procgen plays it)")
    config = OmegaConf.merge(trained.config, {"env": {"backend": backend}})
    OmegaConf.set_readonly(config, True)  # as load_trained hands it out: evals read it, never change it
    return dataclasses.replace(trained, config=config)


def load_source(checkpoint: Any, weights: Optional[str] = None, recipe: Any = None, verb: str = "evaluate") -> Trained:
    """The network a command names: a checkpoint, ``oracle:NAME`` or a network object (with
    ``recipe``), or a published weights file (``weights`` with ``recipe``); EvalError (one line)
    for a combination that names none (``verb``: what the command does with it, for that line)."""
    from torch import nn

    if weights is not None:
        if recipe is None:
            raise EvalError("--weights needs --recipe: the training recipe the network was trained with, "
                            "e.g. --recipe maze_ppo")
        if checkpoint is not None:
            raise EvalError("give either a checkpoint or --weights, not both")
        return load_weights(weights, _recipe(recipe))
    if isinstance(checkpoint, nn.Module):
        if recipe is None:
            raise EvalError("evaluating a network object needs recipe= (a recipe name, path or training config)")
        return wrap_policy(checkpoint, _recipe(recipe))
    if checkpoint is None:
        raise EvalError(f"nothing to {verb}: give a checkpoint, oracle:NAME or --weights FILE --recipe RECIPE")
    if checkpoint.startswith(ORACLE_PREFIX):
        if recipe is None:
            raise EvalError(f"{checkpoint} is a scripted policy: give the training recipe whose mazes it plays, "
                            "e.g. --recipe maze_demo")
        return load_oracle(checkpoint[len(ORACLE_PREFIX):], _recipe(recipe))
    if recipe is not None:
        raise EvalError("--recipe is for scripted policies and weights files; a checkpoint carries its own config")
    return load_trained(checkpoint)


def _recipe(recipe: Any) -> Any:
    from omegaconf import DictConfig

    if isinstance(recipe, DictConfig):
        return recipe
    from shardlab import configs

    try:
        return configs.resolve("recipe", os.fspath(recipe))
    except FileNotFoundError as exc:
        raise EvalError(str(exc)) from None


def evaluate(request: EvalRequest) -> Results:
    """Run the request's suite on its checkpoint and return the Results (plots go to ``request.out``,
    default a fresh temporary folder; results files are :func:`run`'s). Bad input raises EvalError
    (or another ValueError) before anything is written."""
    if request.sweep:
        raise EvalError(f"{request.checkpoint} is a training run directory: evaluate one of its checkpoints, "
                        "or sweep it with `shardlab eval RUN_DIR --out DIR`")
    suite_path = resolve_suite(request.suite)
    device = resolve_device(request.device)
    trained = prepare(request)
    evals, thresholds, suite_seed = load_suite(suite_path, request.only, request.overrides)
    for name in evals:
        check_fits(get(name), trained.kind, trained.path)
    configs = {name: eval_config(get(name), name, values) for name, values in evals.items()}
    instances = {name: get(name)(config) for name, config in configs.items()}  # may reject a config
    for instance in instances.values():  # evals that need something of the checkpoint say so now
        if hasattr(instance, "check"):
            instance.check(trained.config)
        if hasattr(instance, "check_model"):  # layer names and channel indices the network must have
            instance.check_model(trained.model, trained.config)
    seed = request.seed if request.seed is not None else suite_seed
    out_dir = request.out if request.out is not None else tempfile.mkdtemp(prefix="shardlab-eval-")
    os.makedirs(out_dir, exist_ok=True)
    model = trained.model.to(device)
    runs = []
    with single_process():
        for name, config in configs.items():
            runs.append(_run_one(name, config, instances[name], model, trained, request, seed, device, out_dir))
    label = trained.path
    meta = {"checkpoint": label if not os.path.isfile(label) else os.path.abspath(label),
            "checkpoint_sha256": trained.sha256, "package_version": __version__, "git_commit": git_commit(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "suite": os.path.abspath(suite_path),
            "limit": request.limit, "device": str(device), "train_steps": trained.steps, **host_info(device)}
    if trained.kind == "ppo":  # the maze env the episodes were played in (--env-backend)
        meta["env_backend"] = trained.config.env.get("backend") or "procgen"
    return Results(runs, thresholds, meta, out_dir)


def _run_one(name: str, config: Any, instance: Any, model: Any, trained: Trained, request: EvalRequest, seed: int,
             device: Any, out_dir: str) -> dict[str, Any]:
    """One eval of the suite; its crash is recorded, not raised, so the others' results survive."""
    ctx = EvalContext(model, trained.config, os.path.join(out_dir, name), seed=seed, limit=request.limit,
                      device=device, kind=trained.kind, train_steps=trained.steps, checkpoint=trained.path,
                      progress=request.progress, log_episodes=request.log_episodes)
    cls = get(name)
    run: dict[str, Any] = {"eval": name, "seed": seed, "config": dataclasses.asdict(config),
                           "eval_version": cls.version, "headline": list(getattr(cls, "headline", ()))}
    if request.progress:
        print(f"running {name} ...", file=sys.stderr)
    start = time.perf_counter()
    try:
        run["result"] = instance.run(ctx)
    except Exception as exc:  # one broken eval should not hide the others' results
        run["result"], run["error"] = Result(), f"{type(exc).__name__}: {exc}"
    run["seconds"] = time.perf_counter() - start
    return run


def run(request: EvalRequest) -> int:
    """Evaluate the request's checkpoint and write every output under ``request.out``; the exit code."""
    try:
        if request.out is None:
            raise EvalError("--out is needed: the folder results.json, junit.xml and the reports go to")
        old = prepare_baseline(request.baseline, request.tolerance, request.min_effect, resolve_suite(request.suite),
                               request.only, request.overrides, request.seed)
        results = evaluate(request)
    except BAD_INPUT as exc:
        print(f"shardlab eval: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out_dir = request.out
    failures: dict[str, list[str]] = {}
    for threshold, value in results.missed:
        failures.setdefault(threshold.key.split(".", 1)[0], []).append(
            f"{threshold.key} = {value} (needs {threshold.describe()})")
    write_json_atomic(os.path.join(out_dir, "results.json"), results.to_dict())
    write_junit(os.path.join(out_dir, "junit.xml"), results.runs, failures)
    if request.loggers:
        from shardlab.trainers.loggers import log_eval_metrics

        log_eval_metrics(out_dir, results.runs, int(results.meta.get("train_steps") or 0), list(request.loggers))
    print_table(results.runs)
    for name, error in results.errors.items():
        print(f"eval {name} failed: {error}", file=sys.stderr)
    if results.missed:
        print("\nthresholds missed:", file=sys.stderr)
        for threshold, value in results.missed:
            shown = "missing" if value is None else f"{value:.4g}"
            print(f"  {threshold.key:<45} {shown:>10}   needs {threshold.describe()}", file=sys.stderr)
    comparison = old.compare(results.to_dict()) if old is not None else None  # prints its table
    report, _ = write_reports(results, out_dir, comparison, request.summary)
    print(f"\nresults: {os.path.join(out_dir, 'results.json')}  junit: {os.path.join(out_dir, 'junit.xml')}  "
          f"report: {report}")
    code = EXIT_THRESHOLD if not results.passed else EXIT_OK
    return max(code, comparison.exit_code) if comparison is not None else code


def print_table(runs: list[dict]) -> None:
    """Every metric of ``runs`` with its 95% interval and n, one line each."""
    print(f"\n{'eval':<24} {'metric':<46} {'value':>10} {'95% interval':>21} {'n':>6}")
    for one in runs:
        for m in one["result"].metrics:
            interval = f"[{m.ci_low:.4g}, {m.ci_high:.4g}]" if m.ci_low is not None and m.ci_high is not None else ""
            shown = f"{m.value:>10.4g}" if not m.undefined else f"{'undefined':>10}"
            extra = f"  ({m.note})" if m.undefined and m.note else ""
            print(f"{one['eval']:<24} {m.name:<46} {shown} {interval:>21} {m.n or '':>6}{extra}")


def git_commit() -> Optional[str]:
    """The checkout's commit when shardlab runs from one (None for an installed package)."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))  # evals/suite -> the repository
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
