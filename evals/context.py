"""What every eval receives: the policy and config rebuilt from the checkpoint, and run options."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import DictConfig

from models.impala import ImpalaPolicy


@dataclass
class EvalContext:
    """The checkpoint's policy and training config, the output folder, seed and --limit."""

    policy: ImpalaPolicy
    train_config: DictConfig
    out_dir: str
    seed: int = 0
    limit: Optional[int] = None
    device: torch.device = torch.device("cpu")
    progress: bool = True

    def artifact(self, name: str) -> str:
        """A path for an output file of this eval run (folders created)."""
        os.makedirs(self.out_dir, exist_ok=True)
        return os.path.join(self.out_dir, name)

    def count(self, n: int) -> int:
        """``n`` capped by --limit."""
        return n if self.limit is None else max(1, min(n, self.limit))
