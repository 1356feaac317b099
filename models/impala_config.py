"""The maze policy's model section (IMPALA, models/impala.py) and the ReLU sites its sparse
activations may replace, without torch."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Sequence

from shardlab.configs.checks import need
from shardlab.models.sparse_config import ActivationConfig, validate_sparse_options

# where ImpalaPolicy(activation=...) may replace a ReLU: the hook points that read its output
RELU_SITES = tuple(f"embedder.block{b}.res{r}.relu{i}_out" for b in (1, 2, 3) for r in (1, 2) for i in (1, 2)) \
    + ("embedder.relu3_out", "embedder.relufc_out")


def sparse_sites(patterns: Sequence[str]) -> list[str]:
    """The RELU_SITES matching any fnmatch pattern (``*``, ``*relufc_out``, ``embedder.block3.*``)."""
    return [site for site in RELU_SITES if any(fnmatch.fnmatchcase(site, p) for p in patterns)]


@dataclass
class ModelConfig(ActivationConfig):
    """Policy network: IMPALA with channel widths 16·scale, 32·scale, 32·scale; ``sparse_layers``
    are patterns over RELU_SITES."""

    kind: str = "impala"
    scale: int = 1
    channels_last: bool = True  # faster convolutions on CPUs and on GPUs with tensor cores


def validate_sparse(model: Any) -> None:
    """Checks of the sparse-activation keys of ModelConfig."""
    validate_sparse_options(model)
    need(model.activation == "relu" or bool(sparse_sites(model.sparse_layers)),
         f"model.sparse_layers {list(model.sparse_layers)} match no ReLU of the policy; use hook-point "
         "names or patterns such as '*', '*relu2_out', 'embedder.relufc_out'")
