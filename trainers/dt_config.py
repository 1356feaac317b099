"""The schema of ``algo: dt`` (decision-transformer training on a trajectory dataset,
trainers/dt.py) and its checks. Imports no torch: a config to train from has its dataset's
metadata read with numpy alone."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import List

import numpy as np
from omegaconf import DictConfig

from shardlab.configs.checks import ConfigError, need, need_finite, need_one_of, need_seed
from shardlab.models.decision_transformer_config import STATE_ENCODINGS, DTModelConfig
from shardlab.models.sparse_config import KINDS as ACTIVATIONS
from shardlab.models.sparse_config import check_activation
from shardlab.trainers.trainer_config import TrainerConfig, run_schema


@dataclass
class DTDataConfig:
    """The trajectory dataset (trainers/trajectories.py format) and its train/validation split."""

    path: str = "data/doorkey.npz"
    validation_fraction: float = 0.1  # of the episodes, held out for validation
    split_seed: int = 0


@dataclass
class DTOptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio · lr`` (steps are optimizer steps)."""

    lr: float = 6e-4
    weight_decay: float = 1e-4  # on weight matrices and embeddings, not on biases and LayerNorms
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    batch_size: int = 64  # windows per rank and step
    max_grad_norm: float = 1.0  # 0 turns clipping off
    l1_coef: float = 0.0  # model.mlp_activation=l1: weight of the mean |activation| penalty


@dataclass
class DTMonitorConfig:
    """How often to log and validate (optimizer steps)."""

    log_every: int = 50
    validate_every: int = 250
    validation_windows: int = 2048  # fixed windows of the held-out episodes (fewer if there are fewer)
    validation_batch_size: int = 256


@dataclass
class DTSpec:
    """What the dataset decides; filled from data.path when empty and saved in checkpoints."""

    env_id: str = ""
    obs: str = ""
    obs_shape: List[int] = field(default_factory=list)
    num_actions: int = 0
    max_timestep: int = 0  # largest timestep the embedding knows (the env's step limit)
    mission_vocab: List[str] = field(default_factory=list)
    max_mission_tokens: int = 0
    return_min: float = 0.0
    return_max: float = 0.0
    return_mean: float = 0.0
    success_rate: float = 0.0
    # the data's level seeds as [first, last] ranges (evals play other levels); [] = not recorded
    level_seeds: List[List[int]] = field(default_factory=list)


DTTrainConfig = run_schema(
    "DTTrainConfig", "A decision-transformer run on a trajectory dataset.", __name__, name="dt", algo="dt",
    sections={"data": DTDataConfig, "model": DTModelConfig, "optim": DTOptimConfig, "monitor": DTMonitorConfig,
              "spec": DTSpec},
    trainer=lambda: TrainerConfig(total_steps=5000, checkpoint_every=1000, accelerator="cpu"))


def validate_dt(cfg: DictConfig) -> None:
    """Checks of a decision-transformer config (the dataset itself is checked when training starts)."""
    model, optim, monitor = cfg.model, cfg.optim, cfg.monitor
    need(model.kind == "decision_transformer", f"model.kind must be 'decision_transformer', got {model.kind!r}")
    need(model.n_layers >= 1 and model.n_heads >= 1 and model.context >= 1 and model.mlp_ratio >= 1,
         "model.n_layers, model.n_heads, model.context and model.mlp_ratio must be >= 1")
    need(model.d_model >= 1 and model.d_model % model.n_heads == 0,
         f"model.d_model ({model.d_model}) must be a positive multiple of model.n_heads ({model.n_heads})")
    need(0 <= model.dropout < 1, f"model.dropout must be in [0, 1), got {model.dropout}")
    need_one_of(model.state_encoding, STATE_ENCODINGS, "model.state_encoding")
    need_one_of(model.mlp_activation, ACTIVATIONS, "model.mlp_activation")
    need_finite(model, "model", ["dropout", "rtg_scale"])
    need(model.rtg_scale > 0, f"model.rtg_scale must be > 0, got {model.rtg_scale}")
    need(bool(cfg.data.path), "data.path must name a trajectory dataset (.npz from `shardlab collect`)")
    need(0 <= cfg.data.validation_fraction < 1,
         f"data.validation_fraction must be in [0, 1), got {cfg.data.validation_fraction}")
    need_seed(cfg.data.split_seed, "data.split_seed")
    need_finite(optim, "optim", ["lr", "weight_decay", "min_lr_ratio", "max_grad_norm", "l1_coef"])
    need(optim.lr > 0, f"optim.lr must be > 0, got {optim.lr}")
    need(len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas),
         f"optim.betas must be two numbers in [0, 1), got {list(optim.betas)}")
    for key in ("weight_decay", "warmup_steps", "max_grad_norm", "l1_coef"):
        need(optim[key] >= 0, f"optim.{key} must be >= 0, got {optim[key]}")
    need(0 <= optim.min_lr_ratio <= 1, f"optim.min_lr_ratio must be in [0, 1], got {optim.min_lr_ratio}")
    need(optim.batch_size >= 1, f"optim.batch_size must be >= 1, got {optim.batch_size}")
    need(optim.l1_coef == 0 or model.mlp_activation == "l1",
         f"optim.l1_coef={optim.l1_coef} only acts with model.mlp_activation=l1 (got {model.mlp_activation!r})")
    need(monitor.log_every >= 1 and monitor.validate_every >= 1 and monitor.validation_windows >= 1
         and monitor.validation_batch_size >= 1, "monitor.* counts must be >= 1")
    validate_spec(cfg)
    if not cfg.spec.obs_shape:  # a config to train from: its dataset must be there (a checkpoint's need not)
        _check_dataset(cfg)
    try:  # a wrong option name should stop the run before anything is written
        check_activation(model.mlp_activation, **dict(model.mlp_activation_options))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.mlp_activation_options: {exc}") from None


def validate_spec(cfg: DictConfig) -> None:
    """Checks of the ``spec`` section: empty entries are filled from the data, set ones must fit a network."""
    spec = cfg.spec
    need(all(n >= 1 for n in spec.obs_shape),
         f"spec.obs_shape must list positive sizes (or be [] to read it from data.path), got {list(spec.obs_shape)}")
    for key in ("num_actions", "max_timestep", "max_mission_tokens"):
        need(spec[key] >= 0, f"spec.{key} must be >= 0 (0: read it from data.path), got {spec[key]}")
    need_finite(spec, "spec", ["return_min", "return_max", "return_mean", "success_rate"])
    need(all(len(r) == 2 and 0 <= r[0] <= r[1] for r in spec.level_seeds),
         f"spec.level_seeds must list [first, last] seed ranges with 0 <= first <= last, got {list(spec.level_seeds)}")


def _check_dataset(cfg: DictConfig) -> None:
    """Cheap checks of data.path before a run directory is made: it exists, is a trajectory file,
    and its observations suit model.state_encoding (only the small metadata array is read)."""
    path = cfg.data.path
    need(os.path.isfile(path), f"data.path {path} not found; make one with `python scripts/dt_doorkey_data.py "
                               f"--out {path}` or `shardlab collect`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            need("metadata" in npz.files and "observations" in npz.files,
                 f"data.path {path} is not a trajectory dataset (no metadata/observations arrays)")
            metadata = json.loads(str(npz["metadata"]))
    except ConfigError:
        raise
    except Exception as exc:  # zip, zlib and JSON errors of a damaged file
        raise ConfigError(f"data.path {path} is truncated or corrupt ({type(exc).__name__}); re-collect it") from None
    shape = metadata.get("obs_shape") if isinstance(metadata, dict) else None
    need(cfg.model.state_encoding != "onehot" or not shape or shape[-1] == 3,
         f"model.state_encoding=onehot needs MiniGrid's (H, W, 3) index encoding but {path} holds observations "
         f"of shape {tuple(shape or ())}; use model.state_encoding=linear")
