"""The eval suite: ``@register("name")`` adds an eval, ``Eval`` is its optional base class and
``Result`` is what it returns (plugins import all three from here), the runner plays a suite
against a checkpoint, results.json is its machine-readable output.

The wings: ``suite`` (registry, suite files, runner, sweeps, results, reports, baselines),
``maze`` (procgen maze evals and the maze pictures), ``dt`` (decision-transformer evals),
``minigrid`` (MiniGrid PPO evals) and ``sparsity``."""

from shardlab.evals.suite.base import Eval, EvalError, register
from shardlab.evals.suite.registry import available
from shardlab.evals.suite.results import Result

__all__ = ["Eval", "EvalError", "Result", "available", "register"]
