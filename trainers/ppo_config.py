"""The schema of ``algo: ppo`` (PPO on the procgen maze with an IMPALA policy, trainers/ppo.py)
and its checks; the ``ppo`` section is shared with ``algo: ppo_minigrid``. Imports neither torch
nor procgen."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from shardlab.configs.checks import need, need_finite, need_one_of, need_seed
from shardlab.envs.maze_config import (DISTRIBUTION_MODES, MAX_INT32, OBSERVATIONS, RANK_SEED_STRIDE, WORLD_DIM,
                                       MazeEnvConfig, backend_problem)
from shardlab.models.impala_config import ModelConfig, validate_sparse
from shardlab.trainers.trainer_config import need_mixed_precision, run_schema


@dataclass
class PPOConfig:
    """PPO hyperparameters, named as in the published training code."""

    lr: float = 5e-4
    lr_schedule: str = "linear"  # linear decay to 0 over the run, or constant
    adam_eps: float = 1e-5
    num_steps: int = 256  # rollout length per env
    epochs: int = 3
    minibatch_size: int = 2048  # per rank; must divide num_envs × num_steps
    gamma: float = 0.999
    gae_lambda: float = 0.95
    clip_eps: float = 0.2  # policy ratio clip, also the value clip when clip_value
    clip_value: bool = True
    value_coef: float = 0.5  # weight of 0.5·(V − R)², as in the published code
    entropy_coef: float = 0.01
    max_grad_norm: float = 0.5
    normalize_advantage: bool = True
    normalize_reward: bool = True  # divide rewards by the running std of discounted returns
    reward_clip: float = 10.0


TrainConfig = run_schema("TrainConfig", "A PPO maze run.", __name__, name="maze_ppo", algo="ppo",
                         sections={"env": MazeEnvConfig, "model": ModelConfig, "ppo": PPOConfig})


def validate_ppo(cfg: DictConfig) -> None:
    """Checks of a maze PPO config."""
    env, ppo = cfg.env, cfg.ppo
    need(cfg.model.kind == "impala", f"model.kind must be 'impala', got {cfg.model.kind!r}")
    need(cfg.model.scale >= 1, f"model.scale must be >= 1, got {cfg.model.scale}")
    validate_sparse(cfg.model)
    need(env.num_envs >= 1, f"env.num_envs must be >= 1, got {env.num_envs}")
    need_one_of(env.distribution_mode, DISTRIBUTION_MODES, "env.distribution_mode")
    need(env.rand_region is None or env.rand_region >= 0,
         f"env.rand_region must be >= 0 (0 = the top-right corner) or null, got {env.rand_region}")
    world = WORLD_DIM.get(env.distribution_mode)
    need(env.rand_region is None or world is None or env.rand_region <= world,
         f"env.rand_region {env.rand_region} is larger than the {world}×{world} {env.distribution_mode}-mode "
         f"world; use at most {world} (or null for the cheese anywhere)")
    need_one_of(env.obs, OBSERVATIONS, "env.obs")
    need(env.max_maze_size is None or (env.max_maze_size >= 3 and env.max_maze_size % 2 == 1),
         f"env.max_maze_size must be odd and >= 3 (or null), got {env.max_maze_size}")
    need(env.max_maze_size is None or world is None or env.max_maze_size <= world,
         f"env.max_maze_size {env.max_maze_size} is larger than the {world}×{world} {env.distribution_mode}-mode "
         f"world; use at most {world} (or null for any size)")
    need(env.min_maze_size is None or (env.min_maze_size >= 3 and env.min_maze_size % 2 == 1
                                       and env.min_maze_size <= (env.max_maze_size or world or env.min_maze_size)),
         f"env.min_maze_size must be odd, >= 3 and <= env.max_maze_size (or null), got {env.min_maze_size}")
    need(env.num_levels >= 0 and env.start_level >= 0, "env.num_levels and env.start_level must be >= 0")
    need(env.num_levels <= MAX_INT32 and env.start_level <= MAX_INT32,
         f"env.num_levels and env.start_level must be <= {MAX_INT32} (procgen's levels are 32-bit)")
    problem = backend_problem(env.backend, env.num_levels)
    need(problem is None, problem or "")
    ranks = cfg.trainer.devices * cfg.trainer.num_nodes  # rank r's envs are seeded env.seed + r·stride
    need_seed(env.seed, "env.seed", MAX_INT32 - RANK_SEED_STRIDE * (ranks - 1))
    need_finite(env, "env", ["cheese_reward"])
    need_mixed_precision(cfg.trainer, cfg.algo)
    validate_ppo_section(ppo, env.num_envs)


def validate_ppo_section(ppo: DictConfig, num_envs: int) -> None:
    """Checks of a ``ppo`` section (PPOConfig) for ``num_envs`` envs per rank."""
    need_finite(ppo, "ppo", ["lr", "adam_eps", "gamma", "gae_lambda", "clip_eps", "value_coef", "entropy_coef"])
    need(ppo.lr > 0, f"ppo.lr must be > 0, got {ppo.lr}")
    need(ppo.lr_schedule in ("linear", "constant"),
         f"ppo.lr_schedule must be linear or constant, got {ppo.lr_schedule!r}")
    need(ppo.num_steps >= 1 and ppo.epochs >= 1, "ppo.num_steps and ppo.epochs must be >= 1")
    batch = num_envs * ppo.num_steps
    need(ppo.minibatch_size >= 1, f"ppo.minibatch_size must be >= 1, got {ppo.minibatch_size}")
    need(batch % ppo.minibatch_size == 0,
         f"ppo.minibatch_size {ppo.minibatch_size} must divide env.num_envs × ppo.num_steps = {batch}")
    need(0 < ppo.gamma <= 1 and 0 <= ppo.gae_lambda <= 1, "ppo.gamma must be in (0, 1] and ppo.gae_lambda in [0, 1]")
    for key in ("clip_eps", "value_coef", "entropy_coef", "max_grad_norm", "reward_clip", "adam_eps"):
        need(ppo[key] >= 0, f"ppo.{key} must be >= 0, got {ppo[key]}")
