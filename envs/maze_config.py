"""The procgen maze's config (the ``env`` section of a maze PPO run) and the constants it is
checked against. A leaf module: it imports neither procgen nor torch, so reading and validating a
config stays light (envs/maze.py builds the env from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import OmegaConf

from shardlab.envs.seeding import RANK_SEED_STRIDE

__all__ = ["BACKENDS", "DISTRIBUTION_MODES", "OBSERVATIONS", "WORLD_DIM", "MODE_OF_WORLD", "MAX_INT32", "RANK_SEED_STRIDE",
           "MazeEnvConfig", "env_config", "backend_problem"]

BACKENDS = ("procgen", "native")
DISTRIBUTION_MODES = ("easy", "hard")
OBSERVATIONS = ("rgb", "grid")
WORLD_DIM = {"easy": 15, "hard": 25}
MODE_OF_WORLD = {world: mode for mode, world in WORLD_DIM.items()}
MAX_INT32 = 2**31 - 1  # procgen's seed and level options are signed 32-bit


@dataclass
class MazeEnvConfig:
    """Procgen maze settings; ``rand_region`` r puts the cheese in the top-right r×r (null: anywhere)."""

    num_envs: int = 64
    distribution_mode: str = "hard"
    start_level: int = 0
    num_levels: int = 0  # 0 = unlimited levels
    rand_region: Optional[int] = 5
    seed: int = 0
    obs: str = "rgb"  # rgb: procgen's 64×64 image; grid: wall/mouse/cheese channels on the world grid
    max_maze_size: Optional[int] = None  # odd; larger procgen mazes are replaced by smaller random ones
    min_maze_size: Optional[int] = None  # odd; smaller procgen mazes are replaced by random ones in [min, max]
    cheese_reward: float = 10.0  # reward for reaching the cheese; negative penalises it (avoid_cheese)
    # procgen: the real game; native: envs/maze_native.py's torch re-implementation, fresh mazes only
    # (num_levels: 0), with the same dynamics, maze distribution and observations (RGB pixel for pixel), faster
    backend: str = "procgen"


def backend_problem(backend: str, num_levels: int) -> Optional[str]:
    """Why ``backend`` cannot run this env (one line naming the fix), or None when it can."""
    if backend not in BACKENDS:
        return f"env.backend must be one of {', '.join(BACKENDS)}, got {backend!r}"
    if backend == "native" and num_levels != 0:
        return (f"env.backend: native draws fresh mazes only (procgen's level seeds cannot be reproduced), but "
                f"env.num_levels is {num_levels}; use env.num_levels: 0 or env.backend: procgen")
    return None


def env_config(train_config: Any, **overrides: Any) -> MazeEnvConfig:
    """A maze run's ``env`` section as the dataclass its env takes, ``overrides`` (num_envs=, seed=) applied."""
    # the one place a config's env section becomes the dataclass: callers change copies, never the config
    return MazeEnvConfig(**{**OmegaConf.to_container(train_config.env), **overrides})
