"""The table of training kinds: a config's ``algo`` picks its schema, validator and LightningModule.

Entries name their objects as ``"module:attribute"`` strings so that only the chosen kind's modules
are imported: its schema and validator sit in a torch-free ``trainers/<kind>_config.py`` beside
its trainer, so reading a config never imports torch; a new model family adds one line here.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Any

from shardlab.configs.checks import ConfigError


@dataclass(frozen=True)
class Kind:
    """One trainable thing: its config schema, extra validation and LightningModule."""

    algo: str  # the config's ``algo`` value
    schema: str  # "module:Dataclass"
    validate: str  # "module:function(cfg)" raising ConfigError
    module: str  # "module:LightningModule" with the ShardlabModule interface (trainers/base.py)
    description: str = ""

    def load(self, field: str) -> Any:
        """Import the object one of the string fields names."""
        module_name, attribute = getattr(self, field).split(":")
        return getattr(importlib.import_module(module_name), attribute)


KINDS: dict[str, Kind] = {
    "ppo": Kind("ppo", "shardlab.trainers.ppo_config:TrainConfig", "shardlab.trainers.ppo_config:validate_ppo",
                "shardlab.trainers.ppo:PPOModule", "PPO on the procgen maze with an IMPALA policy"),
    "ppo_minigrid": Kind("ppo_minigrid", "shardlab.trainers.ppo_minigrid_config:MiniGridPPOConfig",
                         "shardlab.trainers.ppo_minigrid_config:validate_ppo_minigrid", "shardlab.trainers.ppo_minigrid:PPOMiniGridModule",
                         "PPO on a MiniGrid/BabyAI env with a small CNN or MLP"),
    "dt": Kind("dt", "shardlab.trainers.dt_config:DTTrainConfig", "shardlab.trainers.dt_config:validate_dt", "shardlab.trainers.dt:DTModule",
               "decision transformer on a trajectory dataset (offline RL)"),
    "classify": Kind("classify", "shardlab.trainers.classify_config:ClassifyConfig",
                     "shardlab.trainers.classify_config:validate_classify",
                     "shardlab.trainers.classify:ClassifyModule", "image classifier (MLP/CNN) with dense or sparse activations"),
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
