"""The MiniGrid actor-critic's model section (models/minigrid_policy.py), without torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from shardlab.models.sparse_config import ActivationConfig

KINDS = ("cnn", "mlp", "impala")


@dataclass
class MiniGridModelConfig(ActivationConfig):
    """Actor-critic network: 3×3 convs then fully connected layers (cnn), fully connected only
    (mlp), or the maze policy's IMPALA embedder (impala, square grids; ``sparse_layers`` are
    patterns over models.impala_config.RELU_SITES)."""

    kind: str = "cnn"
    channels: list[int] = field(default_factory=lambda: [16, 32])  # cnn: conv widths
    hidden: list[int] = field(default_factory=lambda: [128])  # cnn/mlp: fully connected widths (last: heads)
    scale: int = 1  # impala: channel widths 16·scale, 32·scale, 32·scale
