"""A MiniGrid/BabyAI run's ``env`` section and the observation kinds it may ask for. A leaf
module: it imports neither gymnasium, minigrid nor torch (envs/minigrid_registry.py checks an env
id against the registry; envs/minigrid.py steps the envs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import OmegaConf

from shardlab.envs.seeding import RANK_SEED_STRIDE

__all__ = ["OBSERVATIONS", "FAMILIES", "RANK_SEED_STRIDE", "MiniGridEnvConfig", "env_config", "dataset_env_config",
           "spec_env_config"]

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


def env_config(train_config: Any, **overrides: Any) -> MiniGridEnvConfig:
    """A MiniGrid run's ``env`` section as the dataclass its env takes, ``overrides`` (num_envs=, seed=) applied."""
    # the one place a config's env section becomes the dataclass: callers change copies, never the config
    return MiniGridEnvConfig(**{**OmegaConf.to_container(train_config.env), **overrides})


def dataset_env_config(train_config: Any, **overrides: Any) -> MiniGridEnvConfig:
    """The env a decision transformer's dataset came from (the config's ``spec``), ``overrides`` applied."""
    return spec_env_config(train_config.spec, **overrides)


def spec_env_config(spec: Any, **overrides: Any) -> MiniGridEnvConfig:
    """The env a trajectory dataset's ``spec`` names, ``overrides`` (num_envs=, seed=, max_steps=) applied."""
    if not spec.env_id:
        raise ValueError("the checkpoint's spec.env_id is empty: its dataset named no env, so the model "
                         "cannot be played online; re-collect the data with `shardlab collect`")
    return MiniGridEnvConfig(**{"env_id": spec.env_id, "obs": spec.obs or "image", **overrides})
