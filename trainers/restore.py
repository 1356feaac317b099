"""Rebuild a trained network from a shardlab checkpoint alone (its resolved config rides along)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

from omegaconf import DictConfig
from torch import nn

from shardlab.models.weights import WeightsError, load_policy_weights, read_weights_file, state_dict_of
from shardlab.trainers.checkpointing import CheckpointError, read_checkpoint, saved_config
from shardlab.trainers.config import ConfigError, build_config, load_config
from shardlab.trainers.kinds import get_kind, stored_kind


@dataclass
class Trained:
    """A checkpoint's network (eval mode), its kind, resolved config and training progress."""

    kind: str  # the training kind: the config's algo (trainers/kinds.py), never model.kind
    config: DictConfig
    model: nn.Module
    steps: int  # in the kind's progress unit (env steps for PPO)
    path: str  # the checkpoint or weights file, ``oracle:NAME`` or ``<network>``
    sha256: Optional[str] = None  # of the file it was loaded from, from the same read (None: no file)


ORACLE_PREFIX = "oracle:"


def load_oracle(spec: str, config: str | os.PathLike | DictConfig) -> Trained:
    """A scripted maze policy (``envs.maze_oracles``) as a Trained, with the training config of
    ``config`` (a recipe path or a resolved config) saying which mazes it plays."""
    from shardlab.envs.maze_oracles import make_oracle

    config = _config_of(config)
    if config.algo != "ppo":
        raise ConfigError(f"scripted policies play procgen mazes; recipe {config.name!r} has algo {config.algo!r}")
    if config.env.obs != "grid":
        raise ConfigError("scripted policies read the grid observation; use a recipe with env.obs: grid "
                          "(or override env.obs=grid)")
    return Trained("ppo", config, make_oracle(spec).eval(), 0, ORACLE_PREFIX + spec)


def _config_of(config: str | os.PathLike | DictConfig) -> DictConfig:
    return config if isinstance(config, DictConfig) else load_config(config)


def wrap_policy(model: nn.Module, config: str | os.PathLike | DictConfig, steps: int = 0) -> Trained:
    """A network object with the training config (recipe path or resolved config) its evals read."""
    config = _config_of(config)
    return Trained(get_kind(config.algo, str(config.get("name", "recipe"))).algo, config, model.eval(), steps,
                   "<network>")


def build_network(config: DictConfig, weights: Mapping, source: str) -> nn.Module:
    """The kind's network built from ``config`` with ``weights`` (a state_dict) loaded;
    CheckpointError naming ``source`` and the keys when they do not fit."""
    model = get_kind(config.algo, source).build_network(config)
    try:
        load_policy_weights(model, weights, source=source)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
    return model


def load_weights(path: str | os.PathLike, config: str | os.PathLike | DictConfig) -> Trained:
    """A published weights file (bare state_dict or ``{'model_state_dict': ...}``, e.g. procgen-tools'
    maze policies) loaded into the network the training config builds, from one read of the file;
    CheckpointError naming the keys when the file does not fit."""
    config, path = _config_of(config), os.fspath(path)
    kind = get_kind(config.algo, str(config.get("name", "recipe")))
    try:
        weights, sha256 = read_weights_file(path, kind.model_attr + ".")
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
    return Trained(kind.algo, config, build_network(config, weights, path).eval(), 0, path, sha256)


def load_trained(path: str | os.PathLike) -> Trained:
    """Load a checkpoint's network from one read of the file; CheckpointError (one line) if it is
    missing, corrupt or does not fit."""
    path = os.fspath(path)
    state, sha256 = read_checkpoint(path)
    config = build_config(saved_config(state, path), source=path)
    kind = get_kind(config.algo, path)
    model = build_network(config, network_weights(state, config.algo, path), path)
    block = state["shardlab"]
    # checkpoints written before the kind was spelled as its algo stored "ppo_maze"
    return Trained(stored_kind(block.get("kind", kind.algo)), config, model.eval(),
                   int(block.get(kind.progress_key, 0)), path, sha256)


def network_weights(checkpoint: dict, algo: str, path: str) -> dict:
    """The network's state_dict inside a loaded shardlab checkpoint of kind ``algo`` (its module
    attribute's keys)."""
    try:
        return state_dict_of(checkpoint, path, prefix=get_kind(algo, path).model_attr + ".")
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None
