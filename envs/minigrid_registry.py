"""One MiniGrid or BabyAI env at a time, from the gymnasium registry: the registered ids, the
checks of an ``env`` section (a registered id among them), single wrapped envs and their
observation shapes and action counts. Needs gymnasium and minigrid, not torch, so validating a
MiniGrid config stays torch-free; envs/minigrid.py batches these envs into torch tensors."""

from __future__ import annotations

import difflib
from typing import Any

import gymnasium as gym
import minigrid  # noqa: F401  (importing registers the MiniGrid-* and BabyAI-* ids)
from minigrid.wrappers import FullyObsWrapper, ImgObsWrapper, OneHotPartialObsWrapper

from shardlab.envs.minigrid_config import FAMILIES, OBSERVATIONS, MiniGridEnvConfig


def env_ids() -> list[str]:
    """The registered MiniGrid and BabyAI env ids."""
    return sorted(name for name in gym.registry if name.startswith(FAMILIES))


def check_config(cfg: MiniGridEnvConfig) -> None:
    """Raise ValueError with a one-line message if ``cfg`` cannot make an env."""
    if cfg.env_id not in gym.registry or not cfg.env_id.startswith(FAMILIES):
        close = difflib.get_close_matches(cfg.env_id, env_ids(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. MiniGrid-DoorKey-5x5-v0 or BabyAI-GoToLocal-v0"
        raise ValueError(f"env.env_id {cfg.env_id!r} is not a registered MiniGrid/BabyAI env; {hint}")
    if cfg.obs not in OBSERVATIONS:
        raise ValueError(f"env.obs must be one of {', '.join(OBSERVATIONS)}, got {cfg.obs!r}")
    if cfg.num_envs < 1:
        raise ValueError(f"env.num_envs must be >= 1, got {cfg.num_envs}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"env.max_steps must be >= 1 or null, got {cfg.max_steps}")
    if cfg.seed < 0:
        raise ValueError(f"env.seed must be >= 0 (gymnasium seeds are non-negative), got {cfg.seed}")


def make_single(cfg: MiniGridEnvConfig) -> gym.Env:
    """One wrapped env whose observations are the uint8 arrays ``cfg.obs`` names."""
    kwargs = {} if cfg.max_steps is None else {"max_steps": cfg.max_steps}
    try:  # the passive checker re-validates every step; the wrappers below are all we need
        env = gym.make(cfg.env_id, disable_env_checker=True, **kwargs)
    except TypeError as exc:
        raise ValueError(f"env {cfg.env_id} does not take env.max_steps ({exc}); set env.max_steps=null") from None
    if cfg.obs == "onehot":
        env = OneHotPartialObsWrapper(env)
    elif cfg.obs == "full":
        env = FullyObsWrapper(env)
    return ImgObsWrapper(env)


def observation_shape(cfg: MiniGridEnvConfig) -> tuple[int, ...]:
    """(H, W, C) of one observation."""
    env = make_single(cfg)
    shape = tuple(int(n) for n in env.observation_space.shape)
    env.close()
    return shape


def num_actions(cfg: MiniGridEnvConfig) -> int:
    """Size of the env's discrete action space (7 for MiniGrid and BabyAI)."""
    env = make_single(cfg)
    count = int(env.action_space.n)
    env.close()
    return count


def env_shapes(cfg: MiniGridEnvConfig) -> dict[str, Any]:
    """What a network for this env takes from it (the kind's ``env_shapes``): the observation shape
    and the action count."""
    return {"observation_shape": observation_shape(cfg), "num_actions": num_actions(cfg)}
