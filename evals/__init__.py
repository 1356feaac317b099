"""The eval suite: ``@register("name")`` adds an eval (plugins import it from here), the runner
plays a suite against a checkpoint, results.json is its machine-readable output."""

from shardlab.evals.registry import EvalError, available, register

__all__ = ["EvalError", "available", "register"]
