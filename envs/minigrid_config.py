"""A MiniGrid/BabyAI run's ``env`` section and the observation kinds it may ask for. A leaf
module: it imports neither gymnasium, minigrid nor torch (envs/minigrid_registry.py checks an env
id against the registry; envs/minigrid.py steps the envs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from shardlab.envs.seeding import RANK_SEED_STRIDE

__all__ = ["OBSERVATIONS", "FAMILIES", "RANK_SEED_STRIDE", "MiniGridEnvConfig"]

OBSERVATIONS = ("image", "onehot", "full")
FAMILIES = ("MiniGrid-", "BabyAI-")


@dataclass
class MiniGridEnvConfig:
    """A registered MiniGrid/BabyAI env id, how many copies to step together, and what they observe."""

    env_id: str = "MiniGrid-DoorKey-5x5-v0"
    num_envs: int = 16
    obs: str = "image"  # image: partial 7×7×3 indices; onehot: partial 7×7×20; full: whole grid indices
    seed: int = 0  # env i of rank r starts from seed + i + RANK_SEED_STRIDE·r
    max_steps: Optional[int] = None  # episode time limit; null keeps the env's own
