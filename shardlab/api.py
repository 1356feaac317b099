"""The Python API: ``shardlab.load`` a checkpoint, ``shardlab.evaluate`` a suite on it and get
``Results`` back. The pipeline lives in ``shardlab.evals.suite`` (``request``, ``evaluator``); this
module is its public face, and the ``shardlab eval`` command builds the same ``EvalRequest``."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch
from omegaconf import DictConfig
from torch import nn

from shardlab.evals.suite import evaluator
from shardlab.evals.suite.request import EvalRequest, check_out_dir, resolve_device
from shardlab.evals.suite.results import Results
from shardlab.trainers.restore import load_trained

__all__ = ["EvalRequest", "Results", "check_out_dir", "evaluate", "load", "resolve_device"]


def load(checkpoint: Union[str, os.PathLike]) -> tuple[nn.Module, DictConfig]:
    """A shardlab checkpoint's network (eval mode, CPU) and its resolved training config."""
    trained = load_trained(checkpoint)
    return trained.model, trained.config


def evaluate(checkpoint: Union[str, os.PathLike, nn.Module, None] = None, suite: str = "ci",
             only: Union[str, Sequence[str], None] = None, limit: Optional[int] = None, seed: Optional[int] = None,
             device: Union[str, torch.device, None] = "auto", out: Optional[str] = None,
             recipe: Union[str, DictConfig, None] = None, weights: Optional[str] = None,
             overrides: Sequence[str] = (), progress: bool = False, log_episodes: bool = False,
             env_backend: Optional[str] = None) -> Results:
    """Run an eval suite (a shipped name such as ``ci`` or a YAML path) and return its Results.

    ``checkpoint`` is a shardlab checkpoint, ``oracle:NAME`` or a network object (both with
    ``recipe``), or None with ``weights`` (a published weights file) and ``recipe``. ``out`` is
    where plots go (default: a fresh temporary folder); results files are written by the CLI.
    Bad input raises ``EvalError`` (or a subclass of ValueError) before anything is written.
    ``log_episodes``: evals that play episodes also write ``<out>/<eval>/episodes.jsonl``.
    ``env_backend`` (procgen or native) plays a maze checkpoint's evals on that env backend.
    """
    request = EvalRequest(checkpoint=checkpoint, suite=suite, only=only, limit=limit, seed=seed, device=device,
                          out=out, recipe=recipe, weights=weights, overrides=overrides, progress=progress,
                          log_episodes=log_episodes, env_backend=env_backend)
    return evaluator.evaluate(request)
