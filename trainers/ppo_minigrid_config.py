"""The schema of ``algo: ppo_minigrid`` (PPO on a MiniGrid/BabyAI env, trainers/ppo_minigrid.py)
and its checks. Loading it imports no torch and no env library; validating asks gymnasium's
registry (envs/minigrid_registry.py: gymnasium and minigrid, still no torch) whether the env id
exists and, for the IMPALA network, how large its grid is."""

from __future__ import annotations

from omegaconf import DictConfig

from shardlab.configs.checks import need, need_one_of
from shardlab.envs.minigrid_config import MiniGridEnvConfig, env_config
from shardlab.models.impala_config import sparse_sites
from shardlab.models.minigrid_policy_config import KINDS as MODEL_KINDS
from shardlab.models.minigrid_policy_config import MiniGridModelConfig
from shardlab.models.sparse_config import validate_sparse_options
from shardlab.trainers.ppo_config import PPOConfig, validate_ppo_section
from shardlab.trainers.trainer_config import need_mixed_precision, run_schema

MiniGridPPOConfig = run_schema("MiniGridPPOConfig", "A PPO run on a MiniGrid or BabyAI env.", __name__,
                               name="minigrid_ppo", algo="ppo_minigrid",
                               sections={"env": MiniGridEnvConfig, "model": MiniGridModelConfig, "ppo": PPOConfig})


def validate_ppo_minigrid(cfg: DictConfig) -> None:
    """Checks of a MiniGrid PPO config."""
    # the env library only here: whether env.env_id is registered is the registry's answer
    from shardlab.envs.minigrid_registry import check_config, observation_shape

    try:
        check_config(env_config(cfg))
    except ValueError as exc:
        need(False, str(exc))
    model = cfg.model
    need_one_of(model.kind, MODEL_KINDS, "model.kind")
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
        shape = observation_shape(env_config(cfg))
        need(shape[0] == shape[1], f"model.kind=impala needs a square grid, but env.obs={cfg.env.obs} of "
             f"{cfg.env.env_id} is {shape[0]}×{shape[1]}; use env.obs=image (7×7) or a square env")
    need_mixed_precision(cfg.trainer, cfg.algo)
    validate_ppo_section(cfg.ppo, cfg.env.num_envs)
