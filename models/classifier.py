"""A small MLP or CNN image classifier whose activations can be made sparse layer by layer.

Layers are numbered in order and every activation is a module named ``act{i}`` (hookable by that
name with models.hooks): an MLP is ``fc1 → act1 → fc2 → act2 → … → head``; a CNN is
``conv1 → act1 → pool1 → conv2 → act2 → pool2 → … → fc{n} → act{n} → … → head`` (3×3 convs with
padding 1, 2×2 max-pooling). With ``norm=True`` a batch norm ``norm{i}`` precedes each activation,
as in numenta's sparse networks: centred pre-activations give every unit a fair chance to win. ``sparse_layers`` (fnmatch patterns over the ``act{i}`` names) picks
which activations become ``activation`` (models.sparse kinds); the others stay ReLU.
``weight_density`` < 1 gives every hidden fully connected layer sparse weights as in numenta's
sparse nets: each unit keeps a fixed random ``round(density · fan_in)`` of its inputs (a
``torch.nn.utils.prune`` mask, saved in the state_dict as ``fc{i}.weight_mask``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from shardlab.models.classifier_config import ARCHS, layer_names, sparse_names
from shardlab.models.sparse import make_activation
from shardlab.models.sparse_config import activation_options


def fan_in_mask(units: int, features: int, density: float) -> torch.Tensor:
    """A (units, features) 0/1 mask keeping a random ``max(1, round(density · features))`` inputs
    per unit (drawn from torch's global generator, so the run's seed fixes it)."""
    keep = max(1, round(density * features))
    chosen = torch.rand(units, features).argsort(dim=1)[:, :keep]
    return torch.zeros(units, features).scatter_(1, chosen, 1.0)


class Classifier(nn.Module):
    """Images (N, C, H, W) in [0, 1] → class logits (N, num_classes)."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, arch: str = "mlp",
                 channels: Sequence[int] = (32, 64), hidden: Sequence[int] = (256, 256),
                 activation: str = "relu", sparse_layers: Sequence[str] = ("*",),
                 activation_options: Optional[dict] = None, norm: bool = False, weight_density: float = 1.0):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown classifier arch {arch!r}; choose mlp or cnn")
        if not 0 < weight_density <= 1:
            raise ValueError(f"weight_density must be in (0, 1], got {weight_density}")
        self.arch = arch
        self.activation_sites = layer_names(arch, channels, hidden)
        sparse = set(sparse_names(self.activation_sites, sparse_layers))
        options = dict(activation_options or {})

        def act(index: int, units: int) -> nn.Module:
            if f"act{index}" not in sparse:
                return nn.ReLU()
            return make_activation(activation, **({**options, "units": units} if activation == "kwta" else options))

        index = 0
        in_channels, height, width = in_shape
        if arch == "cnn":
            for out_channels in channels:
                index += 1
                self.add_module(f"conv{index}", nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
                if norm:
                    self.add_module(f"norm{index}", nn.BatchNorm2d(out_channels))
                self.add_module(f"act{index}", act(index, out_channels))
                self.add_module(f"pool{index}", nn.MaxPool2d(2, ceil_mode=True))
                in_channels, height, width = out_channels, -(-height // 2), -(-width // 2)
        features = in_channels * height * width
        for units in hidden:
            index += 1
            fc = nn.Linear(features, units)
            if weight_density < 1:
                prune.custom_from_mask(fc, "weight", fan_in_mask(units, features, weight_density))
            self.add_module(f"fc{index}", fc)
            if norm:
                self.add_module(f"norm{index}", nn.BatchNorm1d(units))
            self.add_module(f"act{index}", act(index, units))
            features = units
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():  # registered in forward order
            if isinstance(module, nn.Linear) and x.dim() > 2:
                x = torch.flatten(x, 1)  # maps → features before the first linear layer
            x = module(x)
        return x


def build_classifier(cfg: Any) -> Classifier:
    """The network a classify config describes (data.shape and data.num_classes must be filled)."""
    model = cfg.model
    if cfg.data.shape is None or cfg.data.num_classes is None:
        raise ValueError("data.shape and data.num_classes are unset; they are filled from the data when a run starts")
    return Classifier(list(cfg.data.shape), cfg.data.num_classes, model.arch, list(model.channels),
                      list(model.hidden), model.activation, list(model.sparse_layers), activation_options(model),
                      model.norm, model.weight_density)
