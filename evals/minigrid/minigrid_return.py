"""How well does a MiniGrid/BabyAI PPO policy do? Success rate, return and length on seeded levels.

Env ``i`` of ``episodes`` plays exactly one episode from seed ``seed + LEVEL_OFFSET + i``: every
level counts once whatever its length (taking the first N episodes to finish from fewer envs
would favour short ones), and the offset keeps the levels away from every seed a documented
command trains or collects on: PPO's envs (``env.seed + i``, plus 7,919 per resumed iteration and
1,000,003 per DDP rank), ``shardlab collect --seed S`` (``S + 10,007·k + i``) and
``scripts/dt_doorkey_data.py`` (1,000,000 on). Levels are the independent unit of every interval.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.envs.minigrid import Episode, MiniGridEnv, MiniGridEnvConfig
from shardlab.envs.minigrid_config import env_config
from shardlab.envs.rollout import rollout
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.models.minigrid_policy import preprocess

LEVEL_OFFSET = 2_000_000_000  # MiniGrid eval levels (this eval's and the DT evals') start at seed + this


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
    version = 2  # 2: intervals over levels; levels from seed 2,000,000,000 (was 1,000,000, where training ran)
    headline = ("success_rate",)

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
        result = Result()
        result.add("success_rate", stats.proportion([e.success for e in episodes], unit="levels"),
                   higher_is_better=True)
        result.add("return", stats.mean([e.ret for e in episodes], "levels"), higher_is_better=True)
        result.add("length", stats.mean([e.length for e in episodes], "levels"))
        result.add("truncated_rate", stats.proportion([e.truncated for e in episodes], unit="levels"),
                   higher_is_better=False)
        result.add("levels/first_seed", ctx.seed + LEVEL_OFFSET, kind="setting")
        return result
