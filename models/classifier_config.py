"""The image classifier's model section (models/classifier.py) and the names of its
activations, without torch."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Sequence

from shardlab.models.sparse_config import ActivationConfig

ARCHS = ("mlp", "cnn")


def layer_names(arch: str, channels: Sequence[int], hidden: Sequence[int]) -> list[str]:
    """The activation names (``act1`` …) a classifier with these sizes has, in forward order."""
    count = len(hidden) + (len(channels) if arch == "cnn" else 0)
    return [f"act{i}" for i in range(1, count + 1)]


def sparse_names(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The ``names`` matching any fnmatch pattern."""
    return [name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


@dataclass
class ClassifierConfig(ActivationConfig):
    """MLP or CNN (models/classifier.py) and which of its activations are sparse (``sparse_layers``
    are patterns over act1, act2, ...)."""

    arch: str = "mlp"  # mlp or cnn
    channels: list[int] = field(default_factory=lambda: [32, 64])  # cnn: conv widths (3×3, then 2×2 maxpool)
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # widths of the fully connected layers
    norm: bool = False  # batch norm before every activation
    weight_density: float = 1.0  # < 1: hidden fc layers keep this fraction of each unit's inputs
