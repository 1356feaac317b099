"""PPO on MiniGrid/BabyAI (``algo: ppo_minigrid``): the maze PPO trainer with a MiniGrid env and a
small CNN or MLP actor-critic. Only the env, the network, observation preprocessing and the episode
metrics (success rate instead of cheese/corner rates) differ from :class:`trainers.ppo.PPOModule`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf

from shardlab.envs.minigrid import Episode, MiniGridEnv, MiniGridEnvConfig, check_config, num_actions, observation_shape
from shardlab.models.minigrid_policy import MiniGridPolicy, preprocess
from shardlab.trainers.config import (ActivationConfig, PPOConfig, TrainerConfig, activation_options, need,
                             need_mixed_precision, validate_ppo_section, validate_sparse_options)
from shardlab.trainers.ppo import PPOModule

@dataclass
class MiniGridModelConfig(ActivationConfig):
    """Actor-critic network: 3×3 convs then fully connected layers (cnn), fully connected only
    (mlp), or the maze policy's IMPALA embedder (impala, square grids; ``sparse_layers`` are
    patterns over models.impala.RELU_SITES)."""

    kind: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [16, 32])  # cnn: conv widths
    hidden: list[int] = field(default_factory=lambda: [128])  # cnn/mlp: fully connected widths (last: heads)
    scale: int = 1  # impala: channel widths 16·scale, 32·scale, 32·scale


@dataclass
class MiniGridPPOConfig:
    """A PPO run on a MiniGrid or BabyAI env."""

    name: str = "minigrid_ppo"
    algo: str = "ppo_minigrid"
    env: MiniGridEnvConfig = field(default_factory=MiniGridEnvConfig)
    model: MiniGridModelConfig = field(default_factory=MiniGridModelConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def validate_ppo_minigrid(cfg: DictConfig) -> None:
    """Checks of a MiniGrid PPO config."""
    from shardlab.models.impala import sparse_sites  # deferred like trainers.config's sparse checks
    from shardlab.models.minigrid_policy import KINDS as MODEL_KINDS

    try:
        check_config(MiniGridEnvConfig(**OmegaConf.to_container(cfg.env)))
    except ValueError as exc:
        need(False, str(exc))
    model = cfg.model
    need(model.kind in MODEL_KINDS, f"model.kind must be one of {', '.join(MODEL_KINDS)}, got {model.kind!r}")
    need(len(model.hidden) >= 1 and all(w >= 1 for w in model.hidden),
         f"model.hidden must list at least one positive width, got {list(model.hidden)}")
    need(all(w >= 1 for w in model.channels), f"model.channels must be positive, got {list(model.channels)}")
    need(model.kind != "cnn" or len(model.channels) >= 1, "model.kind=cnn needs at least one of model.channels")
    need(model.scale >= 1, f"model.scale must be >= 1, got {model.scale}")
    validate_sparse_options(model)
    need(model.kind == "impala" or list(model.sparse_layers) == ["*"],
         f"model.sparse_layers {list(model.sparse_layers)} only applies to model.kind=impala (the {model.kind} "
         "network makes every activation model.activation); drop it or use model.kind=impala")
    need(model.kind != "impala" or model.activation == "relu" or bool(sparse_sites(model.sparse_layers)),
         f"model.sparse_layers {list(model.sparse_layers)} match no ReLU of the IMPALA embedder; use hook-point "
         "names or patterns such as '*', '*relu2_out', 'embedder.relufc_out'")
    if model.kind == "impala":
        shape = observation_shape(_env_config(cfg))
        need(shape[0] == shape[1], f"model.kind=impala needs a square grid, but env.obs={cfg.env.obs} of "
             f"{cfg.env.env_id} is {shape[0]}×{shape[1]}; use env.obs=image (7×7) or a square env")
    need_mixed_precision(cfg.trainer, cfg.algo)
    validate_ppo_section(cfg.ppo, cfg.env.num_envs)


def _env_config(cfg: DictConfig) -> MiniGridEnvConfig:
    return MiniGridEnvConfig(**OmegaConf.to_container(cfg.env))


class PPOMiniGridModule(PPOModule):
    """PPO with torchrl's GAE and ClipPPOLoss on a MiniGrid actor-critic."""

    kind = "ppo_minigrid"
    resume_fixed_keys = ("model", "env.env_id", "env.obs", "env.num_envs", "ppo.num_steps",
                         "ppo.minibatch_size", "ppo.epochs")

    @staticmethod
    def build_model(cfg: DictConfig) -> MiniGridPolicy:
        """The actor-critic a config describes (input shape and action count from the env)."""
        env_cfg, model = _env_config(cfg), cfg.model
        return MiniGridPolicy(observation_shape(env_cfg), num_actions(env_cfg), kind=model.kind,
                              channels=list(model.channels), hidden=list(model.hidden), activation=model.activation,
                              activation_options=activation_options(model), scale=model.scale,
                              sparse_layers=list(model.sparse_layers))

    def make_env(self, seed_offset: int) -> MiniGridEnv:
        """This rank's batched MiniGrid env with its seed shifted by ``seed_offset``."""
        env_cfg = _env_config(self.cfg)
        env_cfg.seed = env_cfg.seed + seed_offset
        return MiniGridEnv(env_cfg, rank=self.global_rank)

    def observation_shape(self) -> tuple[int, ...]:
        """Shape of one uint8 observation from the env."""
        return self.policy.obs_shape

    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 index or one-hot grids → float, layout unchanged."""
        return preprocess(obs)

    def episode_sums(self, episodes: list[Episode]) -> list[float]:
        """[return sum, length sum, successes, truncations, episodes] of this rank's episodes."""
        return [sum(e.ret for e in episodes), sum(e.length for e in episodes),
                sum(e.success for e in episodes), sum(e.truncated for e in episodes), len(episodes)]

    def episode_metrics(self, sums: list[float]) -> dict[str, float]:
        """Mean return and length, success and truncation rates of the iteration's episodes."""
        count = sums[4]
        if count == 0:
            return {}
        return {"episode/return": sums[0] / count, "episode/length": sums[1] / count,
                "episode/success_rate": sums[2] / count, "episode/truncated_rate": sums[3] / count,
                "episode/count": count}

    def postfix(self) -> dict[str, str]:
        """Return and success rate of the iteration's finished episodes."""
        row = self.iteration_metrics()
        if "episode/return" not in row:
            return {}
        return {"return": f"{row['episode/return']:.2f}", "success": f"{row['episode/success_rate']:.0%}"}
