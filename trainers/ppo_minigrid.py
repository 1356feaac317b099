"""PPO on MiniGrid/BabyAI (``algo: ppo_minigrid``): the maze PPO trainer with a MiniGrid env and a
small CNN or MLP actor-critic. Only the env and the network (both built through the kind,
trainers/kinds.py), observation preprocessing and the episode metrics (success rate instead of
cheese/corner rates) differ from :class:`trainers.ppo.PPOModule`. The schema and its checks are in
trainers/ppo_minigrid_config.py."""

from __future__ import annotations

import torch

from shardlab.models.minigrid_policy import preprocess
from shardlab.trainers.ppo import PPOModule


class PPOMiniGridModule(PPOModule):
    """PPO with torchrl's GAE and ClipPPOLoss on a MiniGrid actor-critic."""

    kind = "ppo_minigrid"
    resume_fixed_keys = ("model", "env.env_id", "env.obs", "env.num_envs", "ppo.num_steps",
                         "ppo.minibatch_size", "ppo.epochs")
    episode_rates = {"success_rate": "success", "truncated_rate": "truncated"}

    def observation_shape(self) -> tuple[int, ...]:
        """Shape of one uint8 observation from the env."""
        return self.policy.obs_shape

    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 index or one-hot grids → float, layout unchanged."""
        return preprocess(obs)

    def postfix(self) -> dict[str, str]:
        """Return and success rate of the iteration's finished episodes."""
        row = self.iteration_metrics()
        if "episode/return" not in row:
            return {}
        return {"return": f"{row['episode/return']:.2f}", "success": f"{row['episode/success_rate']:.0%}"}
