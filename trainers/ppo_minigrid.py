"""PPO on MiniGrid/BabyAI (``algo: ppo_minigrid``): the maze PPO trainer with a MiniGrid env and a
small CNN or MLP actor-critic. Only the env, the network, observation preprocessing and the episode
metrics (success rate instead of cheese/corner rates) differ from :class:`trainers.ppo.PPOModule`.
The schema and its checks are in trainers/ppo_minigrid_config.py."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from shardlab.envs.minigrid import MiniGridEnv, num_actions, observation_shape
from shardlab.envs.minigrid_config import env_config
from shardlab.models.minigrid_policy import MiniGridPolicy, preprocess
from shardlab.models.sparse_config import activation_options
from shardlab.trainers.ppo import PPOModule


def build_minigrid_policy(cfg: DictConfig) -> MiniGridPolicy:
    """The actor-critic a config describes (input shape and action count from the env)."""
    env_cfg, model = env_config(cfg), cfg.model
    return MiniGridPolicy(observation_shape(env_cfg), num_actions(env_cfg), kind=model.kind,
                          channels=list(model.channels), hidden=list(model.hidden), activation=model.activation,
                          activation_options=activation_options(model), scale=model.scale,
                          sparse_layers=list(model.sparse_layers))


class PPOMiniGridModule(PPOModule):
    """PPO with torchrl's GAE and ClipPPOLoss on a MiniGrid actor-critic."""

    kind = "ppo_minigrid"
    resume_fixed_keys = ("model", "env.env_id", "env.obs", "env.num_envs", "ppo.num_steps",
                         "ppo.minibatch_size", "ppo.epochs")
    episode_rates = {"success_rate": "success", "truncated_rate": "truncated"}

    @staticmethod
    def build_model(cfg: DictConfig) -> MiniGridPolicy:
        """The actor-critic a config describes (input shape and action count from the env)."""
        return build_minigrid_policy(cfg)

    def make_env(self, seed_offset: int) -> MiniGridEnv:
        """This rank's batched MiniGrid env with its seed shifted by ``seed_offset``."""
        env_cfg = env_config(self.cfg)
        env_cfg.seed = env_cfg.seed + seed_offset
        return MiniGridEnv(env_cfg, rank=self.global_rank)

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
