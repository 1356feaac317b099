"""How well does a MiniGrid/BabyAI PPO policy do? Success rate, return and length on seeded levels.

Env ``i`` of ``episodes`` plays exactly one episode from seed ``seed + LEVEL_OFFSET + i``: every
level counts once whatever its length (taking the first N episodes to finish from fewer envs
would favour short ones), and the offset keeps the levels away from the training envs' first
seeds (``env.seed + i``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from shardlab.envs.minigrid import Episode, MiniGridEnv, MiniGridEnvConfig
from shardlab.envs.minigrid_config import env_config
from shardlab.evals.suite.base import Eval
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.registry import register
from shardlab.evals.suite.results import Result
from shardlab.models.minigrid_policy import preprocess
from shardlab.trainers.bars import progress_kwargs
from shardlab.trainers.rollout import rollout

LEVEL_OFFSET = 1_000_000


def play_levels(policy: torch.nn.Module, env_cfg: MiniGridEnvConfig, episodes: int, seed: int, greedy: bool,
                progress: bool = False) -> list[Episode]:
    """One episode per seeded level (seeds ``seed + LEVEL_OFFSET + i``), sampled or greedy actions."""
    cfg = dataclasses.replace(env_cfg, num_envs=episodes, seed=seed + LEVEL_OFFSET)
    env = MiniGridEnv(cfg)
    generator = torch.Generator().manual_seed(seed)
    device = next(policy.parameters()).device

    def act(obs: torch.Tensor) -> torch.Tensor:
        logits, _ = policy(preprocess(obs).to(device))
        if greedy:
            return logits.argmax(-1).cpu()
        return torch.multinomial(logits.float().softmax(-1).cpu(), 1, generator=generator).squeeze(-1)

    try:
        with torch.inference_mode(), tqdm(total=episodes, desc="minigrid levels", disable=not progress,
                                          **progress_kwargs()) as bar:
            return rollout(env, act, on_episode=lambda *_: bar.update(1))  # one episode per level
    finally:
        env.close()


@register("minigrid_return")
class MiniGridReturn(Eval):
    """Success rate, mean return and length of a PPO policy on seeded MiniGrid/BabyAI levels."""

    kinds = ("ppo_minigrid",)

    @dataclass
    class Config:
        """Levels and action choice."""

        episodes: int = 200  # seeded levels, one episode each
        greedy: bool = False  # false samples actions (seeded), as in training; true takes the argmax

    def __init__(self, config: "MiniGridReturn.Config"):
        if config.episodes < 1:
            raise ValueError(f"minigrid_return.episodes must be >= 1, got {config.episodes}")
        self.config = config

    def run(self, ctx: EvalContext) -> Result:
        """Play the levels and summarise."""
        env_cfg = env_config(ctx.train_config)
        episodes = play_levels(ctx.model, env_cfg, ctx.count(self.config.episodes), ctx.seed, self.config.greedy,
                               ctx.progress)
        n = len(episodes)
        success = np.array([e.success for e in episodes], float)
        returns = np.array([e.ret for e in episodes], float)
        lengths = np.array([e.length for e in episodes], float)
        stderr = lambda values: float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else None  # noqa: E731
        result = Result()
        result.add("success_rate", float(success.mean()), stderr=stderr(success), n=n, higher_is_better=True)
        result.add("return", float(returns.mean()), stderr=stderr(returns), n=n, higher_is_better=True)
        result.add("length", float(lengths.mean()), stderr=stderr(lengths), n=n)
        result.add("truncated_rate", float(np.mean([e.truncated for e in episodes])), n=n, higher_is_better=False)
        return result
