"""What every eval receives: the policy and config rebuilt from the checkpoint, and run options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from torch import nn


@dataclass
class EvalContext:
    """The checkpoint's network, kind and training config, the output folder, seed and --limit."""

    model: nn.Module
    train_config: DictConfig
    out_dir: str
    seed: int = 0
    limit: Optional[int] = None
    device: torch.device = torch.device("cpu")
    progress: bool = True
    kind: str = "ppo"  # the checkpoint's training kind: its config's algo (trainers/kinds.py)
    train_steps: int = 0  # the checkpoint's progress in its kind's unit (env steps for PPO)
    checkpoint: Optional[str] = None
    scalars: Optional[Any] = None  # a TensorBoard SummaryWriter shared by the suite, or None
    log_episodes: bool = False  # --log-episodes: evals that play episodes write episodes.jsonl

    @property
    def policy(self) -> nn.Module:
        """The network, by the name maze evals use."""
        return self.model

    def artifact(self, name: str) -> str:
        """A path for an output file of this eval run (folders created)."""
        os.makedirs(self.out_dir, exist_ok=True)
        return os.path.join(self.out_dir, name)

    def count(self, n: int) -> int:
        """``n`` capped by --limit."""
        return n if self.limit is None else max(1, min(n, self.limit))
