"""The table of training kinds: one adapter per kind, picked by a config's ``algo``.

A kind is spelled as its ``algo`` everywhere (checkpoints, ``Trained.kind``, ``EvalContext.kind``, the
``kinds`` of evals). Its :class:`Kind` names the config schema and validator, the LightningModule, the
env-config and env builders, the observation preprocessing, the network builder (in models/, beside
its network) and what that builder takes from the env (``env_shapes``: the observation shape, the
action count), so that models/ never imports envs/ or trainers/; the network's activation sites are
declared by the model itself (``activation_sites``). Code that needs one of these asks the kind
(``get_kind(algo).build_network(config)``, ``.build_env(config)``, ``.load("preprocess")``) instead of
branching on its name.

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
    network: str = ""  # "module:function(train_config, **env_shapes) -> nn.Module" in models/: the untrained network
    # None below: the kind learns from a dataset and has no env (a classifier)
    env_config: Optional[str] = None  # "module:function(train_config, **overrides) -> env dataclass"
    make_env: Optional[str] = None  # "module:function(env_dataclass, rank=0) -> batched env"
    # "module:function(env_dataclass) -> dict": what the network builder takes from the env
    # (observation_shape=, num_actions=); None: the config holds all it needs (a dataset's spec or shape)
    env_shapes: Optional[str] = None
    preprocess: Optional[str] = None  # "module:function(uint8 observations) -> network input"; None: as they are
    unit_inputs: bool = True  # network inputs lie in [0, 1]; False: MiniGrid's index grids (0 .. max index)
    # the checkpoint's layout, here rather than only on the LightningModule so that loading a
    # network never imports Lightning: the module attribute holding the network (its state_dict
    # prefix) and the progress counter (checkpoint["shardlab"][key], the x-axis of metric rows)
    model_attr: str = "model"
    progress_key: str = "steps"

    def load(self, field: str) -> Any:
        """Import the object one of the string fields names; ``"network"`` gives
        :meth:`build_network`, ``function(train_config) -> nn.Module``."""
        entry = self._entry(field)
        return self.build_network if field == "network" else _import(entry)

    def _entry(self, field: str) -> str:
        entry = getattr(self, field)
        if not entry:
            raise ConfigError(f"training kind {self.algo!r} has no {field}")
        return entry

    def build_network(self, train_config: Any) -> Any:
        """The untrained network a resolved config describes: the kind's ``network`` builder, given
        the ``env_shapes`` of the config's env when the kind has them."""
        builder = _import(self._entry("network"))
        shapes = self.load("env_shapes")(self.load("env_config")(train_config)) if self.env_shapes else {}
        return builder(train_config, **shapes)

    def build_env(self, train_config: Any, rank: int = 0, **overrides: Any) -> Any:
        """The batched env of a config for DDP rank ``rank``: the kind's ``env_config`` builder
        (``overrides`` such as num_envs= or seed= applied), then its ``make_env``."""
        return self.load("make_env")(self.load("env_config")(train_config, **overrides), rank=rank)

    def activation_sites(self, model: Any) -> list[str]:
        """The activation sites the kind's network declares (its ``activation_sites``)."""
        from shardlab.models.hooks import activation_sites  # torch: only when a network exists

        return activation_sites(model)


def _import(entry: str) -> Any:
    """The object a ``"module:attribute"`` entry names."""
    module_name, attribute = entry.split(":")
    return getattr(importlib.import_module(module_name), attribute)


_MAZE = dict(env_config="shardlab.envs.maze_config:env_config", make_env="shardlab.envs.maze:make",
             env_shapes="shardlab.envs.maze:env_shapes")
_MINIGRID = dict(env_config="shardlab.envs.minigrid_config:env_config", make_env="shardlab.envs.minigrid:make",
                 env_shapes="shardlab.envs.minigrid_registry:env_shapes")

KINDS: dict[str, Kind] = {
    "ppo": Kind("ppo", "shardlab.trainers.ppo_config:TrainConfig", "shardlab.trainers.ppo_config:validate_ppo",
                "shardlab.trainers.ppo:PPOModule", "PPO on the procgen maze with an IMPALA policy",
                network="shardlab.models.impala:build_policy", preprocess="shardlab.models.impala:preprocess",
                model_attr="policy", progress_key="env_steps", **_MAZE),
    "ppo_minigrid": Kind("ppo_minigrid", "shardlab.trainers.ppo_minigrid_config:MiniGridPPOConfig",
                         "shardlab.trainers.ppo_minigrid_config:validate_ppo_minigrid", "shardlab.trainers.ppo_minigrid:PPOMiniGridModule",
                         "PPO on a MiniGrid/BabyAI env with a small CNN or MLP",
                         network="shardlab.models.minigrid_policy:build_minigrid_policy",
                         preprocess="shardlab.models.minigrid_policy:preprocess", unit_inputs=False,
                         model_attr="policy", progress_key="env_steps", **_MINIGRID),
    # the env a decision transformer plays is the one its dataset came from (the config's spec); the
    # network embeds the env's uint8 states itself, so there is no preprocessing
    "dt": Kind("dt", "shardlab.trainers.dt_config:DTTrainConfig", "shardlab.trainers.dt_config:validate_dt", "shardlab.trainers.dt:DTModule",
               "decision transformer on a trajectory dataset (offline RL)",
               network="shardlab.models.decision_transformer:build_decision_transformer",
               env_config="shardlab.envs.minigrid_config:dataset_env_config", make_env="shardlab.envs.minigrid:make",
               unit_inputs=False),
    "classify": Kind("classify", "shardlab.trainers.classify_config:ClassifyConfig",
                     "shardlab.trainers.classify_config:validate_classify",
                     "shardlab.trainers.classify:ClassifyModule", "image classifier (MLP/CNN) with dense or sparse activations",
                     network="shardlab.models.classifier:build_classifier", progress_key="samples"),
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
