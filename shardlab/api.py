"""The Python API: ``shardlab.load`` a checkpoint, ``shardlab.evaluate`` a suite on it and get
``Results`` back (the ``shardlab eval`` command is built on the same function)."""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any, Iterator, Optional, Union

import torch
from omegaconf import DictConfig
from torch import nn

from shardlab import __version__
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.host import host_info
from shardlab.evals.suite.registry import EvalError, check_fits, get
from shardlab.evals.suite.results import Result, Threshold, results_document
from shardlab.evals.suite.suite_file import check_seed, eval_config, load_suite, resolve_suite
from shardlab.trainers.restore import ORACLE_PREFIX, Trained, load_oracle, load_trained, load_weights, wrap_policy


def load(checkpoint: Union[str, os.PathLike]) -> tuple[nn.Module, DictConfig]:
    """A shardlab checkpoint's network (eval mode, CPU) and its resolved training config."""
    trained = load_trained(checkpoint)
    return trained.model, trained.config


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N`` as a torch.device."""
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise EvalError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if (parsed.index or 0) >= count:
            raise EvalError(f"device {device!r} asked for but this machine has {count} CUDA GPU(s); use --device cpu")
    return parsed


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


def prepare(checkpoint: Union[str, os.PathLike, nn.Module], recipe: Optional[Union[str, DictConfig]] = None,
            weights: Optional[str] = None) -> Trained:
    """What to evaluate: a checkpoint path, ``oracle:NAME`` or a network (with ``recipe``), or a
    published weights file (``weights`` with ``recipe``)."""
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
        raise EvalError("nothing to evaluate: give a checkpoint, oracle:NAME or --weights FILE --recipe RECIPE")
    checkpoint = os.fspath(checkpoint)
    if checkpoint.startswith(ORACLE_PREFIX):
        if recipe is None:
            raise EvalError(f"{checkpoint} is a scripted policy: give the training recipe whose mazes it plays, "
                            "e.g. --recipe maze_demo")
        return load_oracle(checkpoint[len(ORACLE_PREFIX):], _recipe(recipe))
    if recipe is not None:
        raise EvalError("--recipe is for scripted policies and weights files; a checkpoint carries its own config")
    return load_trained(checkpoint)


def _recipe(recipe: Union[str, DictConfig]) -> Union[str, DictConfig]:
    if isinstance(recipe, DictConfig):
        return recipe
    from shardlab import configs
    try:
        return configs.resolve("recipe", os.fspath(recipe))
    except FileNotFoundError as exc:
        raise EvalError(str(exc)) from None


def check_out_dir(out: Optional[str]) -> None:
    """EvalError if ``out`` cannot be the output folder (an existing file, or under one)."""
    if out is None:
        return
    if not os.fspath(out).strip():
        raise EvalError("--out is empty; name the output folder, e.g. --out evals/run1")
    from shardlab.trainers.paths import file_in_the_way

    blocker = file_in_the_way(out)
    if blocker is not None:
        raise EvalError(f"--out {out}: {blocker} is a file, not a folder; choose another output folder")


def evaluate(checkpoint: Union[str, os.PathLike, nn.Module, None] = None, suite: str = "ci",
             only: Union[str, Sequence[str], None] = None, limit: Optional[int] = None, seed: Optional[int] = None,
             device: Union[str, torch.device, None] = "auto", out: Optional[str] = None,
             recipe: Union[str, DictConfig, None] = None, weights: Optional[str] = None,
             overrides: Sequence[str] = (), progress: bool = False, log_episodes: bool = False) -> Results:
    """Run an eval suite (a shipped name such as ``ci`` or a YAML path) and return its Results.

    ``checkpoint`` is a shardlab checkpoint, ``oracle:NAME`` or a network object (both with
    ``recipe``), or None with ``weights`` (a published weights file) and ``recipe``. ``out`` is
    where plots go (default: a fresh temporary folder); results files are written by the CLI.
    Bad input raises ``EvalError`` (or a subclass of ValueError) before anything is written.
    ``log_episodes``: evals that play episodes also write ``<out>/<eval>/episodes.jsonl``.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise EvalError(f"limit must be a positive integer, got {limit!r}")
    if seed is not None:
        check_seed(seed, "--seed")
    check_out_dir(out)
    suite_path = resolve_suite(suite)
    names = [only] if isinstance(only, str) else list(only) if only else None
    torch_device = resolve_device(device)
    trained = prepare(checkpoint, recipe, weights)
    label = trained.path
    evals, thresholds, suite_seed = load_suite(suite_path, names, overrides)
    for name in evals:
        check_fits(get(name), trained.kind, label)
    configs = {name: eval_config(get(name), name, values) for name, values in evals.items()}
    instances = {name: get(name)(config) for name, config in configs.items()}  # may reject a config
    for instance in instances.values():  # evals that need something of the checkpoint say so now
        if hasattr(instance, "check"):
            instance.check(trained.config)
        if hasattr(instance, "check_model"):  # layer names and channel indices the network must have
            instance.check_model(trained.model, trained.config)
    suite_seed = seed if seed is not None else suite_seed
    out_dir = out if out is not None else tempfile.mkdtemp(prefix="shardlab-eval-")
    os.makedirs(out_dir, exist_ok=True)
    model = trained.model.to(torch_device)
    runs = []
    for name, config in configs.items():
        ctx = EvalContext(model, trained.config, os.path.join(out_dir, name), seed=suite_seed, limit=limit,
                          device=torch_device, kind=trained.kind, train_steps=trained.steps, checkpoint=label,
                          progress=progress, log_episodes=log_episodes)
        start = time.perf_counter()
        run: dict[str, Any] = {"eval": name, "seed": suite_seed, "config": dataclasses.asdict(config),
                               "eval_version": get(name).version}
        if progress:
            print(f"running {name} ...", file=sys.stderr)
        try:
            run["result"] = instances[name].run(ctx)
        except Exception as exc:  # one broken eval should not hide the others' results
            run["result"], run["error"] = Result(), f"{type(exc).__name__}: {exc}"
        run["seconds"] = time.perf_counter() - start
        runs.append(run)
    meta = {"checkpoint": label if not os.path.isfile(label) else os.path.abspath(label),
            "checkpoint_sha256": trained.sha256, "package_version": __version__, "git_commit": _git_commit(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "suite": os.path.abspath(suite_path),
            "limit": limit, "device": str(torch_device), "train_steps": trained.steps, **host_info(torch_device)}
    return Results(runs, thresholds, meta, out_dir)


def _git_commit() -> Optional[str]:
    """The checkout's commit when shardlab runs from one (None for an installed package)."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    if not os.path.exists(os.path.join(os.path.dirname(here), ".git")):
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
