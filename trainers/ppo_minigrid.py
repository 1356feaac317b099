"""PPO on MiniGrid/BabyAI (``algo: ppo_minigrid``): the maze PPO trainer with a MiniGrid env and a
small CNN or MLP actor-critic. Only the env, the network, observation preprocessing and the episode
metrics (success rate instead of cheese/corner rates) differ from :class:`trainers.ppo.PPOModule`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf

from envs.minigrid import Episode, MiniGridEnv, MiniGridEnvConfig, check_config, num_actions, observation_shape
from models.minigrid_policy import MiniGridPolicy, preprocess
from trainers.config import PPOConfig, TrainerConfig, need, validate_ppo_section
from trainers.ppo import PPOModule

MODEL_KINDS = ("cnn", "mlp")


@dataclass
class MiniGridModelConfig:
    """Actor-critic network: 3×3 convs then fully connected layers (cnn), or fully connected only (mlp)."""

    kind: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [16, 32])  # cnn: conv widths
    hidden: list[int] = field(default_factory=lambda: [128])  # fully connected widths; the last feeds both heads
    activation: str = "relu"  # a models.sparse kind: relu, gelu, kwta, topk, l1
    l1_coef: float = 0.0  # activation=l1: weight of the summed mean |activation| in the loss


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
    from models.sparse import KINDS  # deferred like trainers.config's sparse checks

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
    need(model.activation in KINDS, f"model.activation must be one of {', '.join(KINDS)}, got {model.activation!r}")
    need(model.l1_coef >= 0, f"model.l1_coef must be >= 0, got {model.l1_coef}")
    need(model.l1_coef == 0 or model.activation == "l1",
         f"model.l1_coef={model.l1_coef} only acts with model.activation=l1 (got {model.activation!r})")
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
                              channels=list(model.channels), hidden=list(model.hidden),
                              activation=model.activation)

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
