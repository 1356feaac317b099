"""The eval suite: ``@register("name")`` adds an eval and ``Result`` is what it returns (plugins
import both from here), the runner plays a suite against a checkpoint, results.json is its
machine-readable output.

The wings: ``suite`` (registry, suite files, runner, sweeps, results, reports, baselines),
``maze`` (procgen maze evals and the maze pictures), ``dt`` (decision-transformer evals),
``minigrid`` (MiniGrid PPO evals) and ``sparsity``."""

from shardlab.evals.suite.registry import EvalError, available, register
from shardlab.evals.suite.results import Result

__all__ = ["EvalError", "Result", "available", "register"]
