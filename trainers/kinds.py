"""The table of training kinds: one adapter per kind, picked by a config's ``algo``.

A kind is spelled as its ``algo`` everywhere (checkpoints, ``Trained.kind``, ``EvalContext.kind``, the
``kinds`` of evals). Its :class:`Kind` names the config schema and validator, the LightningModule, the
env-config and env builders, the observation preprocessing and the network builder; the network's
activation sites are declared by the model itself (``activation_sites``). Code that needs one of these
asks the kind (``get_kind(algo).load("network")``) instead of branching on its name.

Entries name their objects as ``"module:attribute"`` strings so that only the chosen kind's modules
are imported: its schema and validator sit in a torch-free ``trainers/<kind>_config.py`` beside
its trainer, so reading a config never imports torch; a new model family adds one entry here.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any, Optional

from shardlab.configs.checks import ConfigError


@dataclass(frozen=True)
class Kind:
    """One trainable thing: its config schema and checks, LightningModule, env, inputs and network."""

    algo: str  # the config's ``algo`` value
    schema: str  # "module:Dataclass"
    validate: str  # "module:function(cfg)" raising ConfigError
    module: str  # "module:LightningModule" with the ShardlabModule interface (trainers/base.py)
    description: str = ""
    network: str = ""  # "module:function(train_config) -> nn.Module", the untrained network
    # None below: the kind learns from a dataset and has no env (a classifier)
    env_config: Optional[str] = None  # "module:function(train_config, **overrides) -> env dataclass"
    make_env: Optional[str] = None  # "module:function(env_dataclass, rank=0) -> batched env"
    preprocess: Optional[str] = None  # "module:function(uint8 observations) -> network input"; None: as they are
    unit_inputs: bool = True  # network inputs lie in [0, 1]; False: MiniGrid's index grids (0 .. max index)

    def load(self, field: str) -> Any:
        """Import the object one of the string fields names."""
        entry = getattr(self, field)
        if not entry:
            raise ConfigError(f"training kind {self.algo!r} has no {field}")
        module_name, attribute = entry.split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def activation_sites(self, model: Any) -> list[str]:
        """The activation sites the kind's network declares (its ``activation_sites``)."""
        from shardlab.models.hooks import activation_sites  # torch: only when a network exists

        return activation_sites(model)


_MAZE = dict(env_config="shardlab.envs.maze_config:env_config", make_env="shardlab.envs.maze:make")
_MINIGRID = dict(env_config="shardlab.envs.minigrid_config:env_config", make_env="shardlab.envs.minigrid:make")

KINDS: dict[str, Kind] = {
    "ppo": Kind("ppo", "shardlab.trainers.ppo_config:TrainConfig", "shardlab.trainers.ppo_config:validate_ppo",
                "shardlab.trainers.ppo:PPOModule", "PPO on the procgen maze with an IMPALA policy",
                network="shardlab.trainers.ppo:build_policy", preprocess="shardlab.models.impala:preprocess",
                **_MAZE),
    "ppo_minigrid": Kind("ppo_minigrid", "shardlab.trainers.ppo_minigrid_config:MiniGridPPOConfig",
                         "shardlab.trainers.ppo_minigrid_config:validate_ppo_minigrid", "shardlab.trainers.ppo_minigrid:PPOMiniGridModule",
                         "PPO on a MiniGrid/BabyAI env with a small CNN or MLP",
                         network="shardlab.trainers.ppo_minigrid:build_minigrid_policy",
                         preprocess="shardlab.models.minigrid_policy:preprocess", unit_inputs=False, **_MINIGRID),
    # the env a decision transformer plays is the one its dataset came from (the config's spec); the
    # network embeds the env's uint8 states itself, so there is no preprocessing
    "dt": Kind("dt", "shardlab.trainers.dt_config:DTTrainConfig", "shardlab.trainers.dt_config:validate_dt", "shardlab.trainers.dt:DTModule",
               "decision transformer on a trajectory dataset (offline RL)",
               network="shardlab.trainers.dt:build_decision_transformer",
               env_config="shardlab.envs.minigrid_config:dataset_env_config", make_env="shardlab.envs.minigrid:make",
               unit_inputs=False),
    "classify": Kind("classify", "shardlab.trainers.classify_config:ClassifyConfig",
                     "shardlab.trainers.classify_config:validate_classify",
                     "shardlab.trainers.classify:ClassifyModule", "image classifier (MLP/CNN) with dense or sparse activations",
                     network="shardlab.trainers.classify:build_classifier"),
}


# names older checkpoints stored for a kind (checkpoint["shardlab"]["kind"]) → the kind's algo
LEGACY_NAMES = {"ppo_maze": "ppo"}


def stored_kind(name: str) -> str:
    """The kind (config ``algo``) a checkpoint's stored kind name means, older spellings included."""
    return LEGACY_NAMES.get(name, name)


def get_kind(algo: Any, source: str = "config") -> Kind:
    """The Kind for ``algo``; a one-line error listing the known ones otherwise."""
    if not isinstance(algo, str) or algo not in KINDS:  # a list or mapping is not hashable: no `in` test
        close = difflib.get_close_matches(str(algo), KINDS, n=2, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"algo {algo!r} in {source} is not a training kind; {hint}"
                          f"known: {', '.join(sorted(KINDS))}")
    return KINDS[algo]
