"""Small actor-critic networks for MiniGrid observations (7×7×3 indices, 7×7×20 one-hot, full grids).

Both share the maze policy's layout, so the PPO trainer drives them unchanged: ``embedder`` maps a
float observation batch ``(N, H, W, C)`` to a hidden vector, ``fc_policy`` and ``fc_value`` are the
linear heads. Activations have stable hook names (models/hooks.py):

- CNN: ``embedder.conv1_out``, ``embedder.conv2_out``, ... (after each 3×3 conv's activation,
  ``(N, C, H, W)``), then ``embedder.fc1_out``, ... (after each fully connected layer's activation);
- MLP: ``embedder.fc1_out``, ``embedder.fc2_out``, ...
- IMPALA: the maze policy's embedder (models/impala.py) on the grid, with its hook names
  (``embedder.block2.res1.resadd_out``, ..., ``embedder.relufc_out``, 256 wide); the grid must be
  square (the 7×7 partial view, or a square full grid).

The last ``fc*_out`` (``relufc_out``) is the hidden vector both heads read. ``activation`` names a
models.sparse kind built with ``activation_options`` (percent_on, boost_strength, ...); for the
IMPALA kind ``sparse_layers`` picks which of its 14 ReLUs it replaces.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch
from torch import nn

from shardlab.models.actor_critic import ActorCritic
from shardlab.models.hooks import HookPoint
from shardlab.models.impala import ImpalaEmbedder, SiteActivations
from shardlab.models.impala_config import RELU_SITES
from shardlab.models.minigrid_policy_config import KINDS
from shardlab.models.sparse import make_activation
from shardlab.models.sparse_config import activation_options



def _activation(kind: str, units: int, options: Optional[dict] = None) -> nn.Module:
    """An activation module by models.sparse name (kwta needs the layer's unit count)."""
    options = dict(options or {})
    return make_activation(kind, **({**options, "units": units} if kind == "kwta" else options))


def _add_fully_connected(module: nn.Module, in_features: int, hidden: Sequence[int], activation: str,
                         options: Optional[dict] = None) -> None:
    """Give ``module`` layers fc1, act_fc1, fc1_out (HookPoint), fc2, ... of the given widths."""
    module.num_fcs = len(hidden)
    for i, width in enumerate(hidden, 1):
        setattr(module, f"fc{i}", nn.Linear(in_features, width))
        setattr(module, f"act_fc{i}", _activation(activation, width, options))
        setattr(module, f"fc{i}_out", HookPoint())
        in_features = width


def _run_fully_connected(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for i in range(1, module.num_fcs + 1):
        x = getattr(module, f"fc{i}_out")(getattr(module, f"act_fc{i}")(getattr(module, f"fc{i}")(x)))
    return x


class ConvEmbedder(nn.Module):
    """3×3 same-padding convs (no pooling: the grids are tiny), flatten, fully connected layers."""

    def __init__(self, obs_shape: Sequence[int], channels: Sequence[int] = (16, 32),
                 hidden: Sequence[int] = (128,), activation: str = "relu", options: Optional[dict] = None):
        super().__init__()
        height, width, in_channels = obs_shape
        self.num_convs = len(channels)
        for i, out_channels in enumerate(channels, 1):
            setattr(self, f"conv{i}", nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
            setattr(self, f"act_conv{i}", _activation(activation, out_channels, options))
            setattr(self, f"conv{i}_out", HookPoint())
            in_channels = out_channels
        _add_fully_connected(self, in_channels * height * width, hidden, activation, options)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.permute(0, 3, 1, 2)  # (N, H, W, C) → (N, C, H, W)
        for i in range(1, self.num_convs + 1):
            x = getattr(self, f"conv{i}_out")(getattr(self, f"act_conv{i}")(getattr(self, f"conv{i}")(x)))
        return _run_fully_connected(self, torch.flatten(x, 1))


class MLPEmbedder(nn.Module):
    """Flattened observation through fully connected layers."""

    def __init__(self, obs_shape: Sequence[int], hidden: Sequence[int] = (128, 128), activation: str = "relu",
                 options: Optional[dict] = None):
        super().__init__()
        _add_fully_connected(self, math.prod(obs_shape), hidden, activation, options)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return _run_fully_connected(self, torch.flatten(obs, 1))


class GridImpalaEmbedder(ImpalaEmbedder):
    """The maze policy's IMPALA embedder on a square (N, H, W, C) grid."""

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs.permute(0, 3, 1, 2))


class MiniGridPolicy(ActorCritic):
    """Actor-critic for MiniGrid: float observations (N, H, W, C) → (action logits, value)."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int = 7, kind: str = "cnn",
                 channels: Sequence[int] = (16, 32), hidden: Sequence[int] = (128,), activation: str = "relu",
                 activation_options: Optional[dict] = None, scale: int = 1, sparse_layers: Sequence[str] = ("*",)):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"model.kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not hidden:
            raise ValueError("model.hidden needs at least one layer width")
        self.obs_shape, self.kind = tuple(obs_shape), kind
        if kind == "impala":
            height, width, in_channels = obs_shape
            if height != width:
                raise ValueError(f"model.kind=impala needs a square grid, got {height}×{width}")
            activations = SiteActivations(activation, sparse_layers, activation_options)
            self.embedder = GridImpalaEmbedder(in_channels, scale, height, activations=activations)
            features = 256
        elif kind == "cnn":
            self.embedder = ConvEmbedder(obs_shape, channels, hidden, activation, activation_options)
            features = hidden[-1]
        else:
            self.embedder = MLPEmbedder(obs_shape, hidden, activation, activation_options)
            features = hidden[-1]
        self.fc_policy = nn.Linear(features, num_actions)
        self.fc_value = nn.Linear(features, 1)
        self._init_weights()

    @property
    def activation_sites(self) -> list[str]:
        """The activation hook points: IMPALA's ReLU sites, or the CNN/MLP's ``conv*_out``/``fc*_out``."""
        if self.kind == "impala":
            return list(RELU_SITES)
        return [name for name, module in self.named_modules() if isinstance(module, HookPoint)]

def preprocess(obs: torch.Tensor) -> torch.Tensor:
    """uint8 MiniGrid observations (index or one-hot encodings) → float, same layout (N, H, W, C)."""
    return obs.float()


def build_minigrid_policy(cfg: Any, observation_shape: Sequence[int], num_actions: int) -> MiniGridPolicy:
    """The actor-critic a MiniGrid PPO config's ``model`` section describes, for the env's
    ``observation_shape`` and ``num_actions`` (the kind's ``env_shapes``)."""
    model = cfg.model
    return MiniGridPolicy(observation_shape, num_actions, kind=model.kind,
                          channels=list(model.channels), hidden=list(model.hidden), activation=model.activation,
                          activation_options=activation_options(model), scale=model.scale,
                          sparse_layers=list(model.sparse_layers))
