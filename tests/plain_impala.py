"""The ImpalaPolicy forward pass written again in plain torch functional ops, reading the model's
weights: the reference the hook and interpretability tests compare against. It knows nothing of
models.hooks; ``override`` edits a named point, ``identity_relus`` drops named ReLUs."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from torch.nn import functional as F

Override = dict[str, Callable[[torch.Tensor], torch.Tensor]]


def plain_forward(model: nn.Module, x: torch.Tensor, override: Optional[Override] = None,
                  identity_relus: frozenset[str] = frozenset()
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, value, {name: activation}) for every HookPoint and the conv/fc outputs."""
    weights = dict(model.named_parameters())
    acts: dict[str, torch.Tensor] = {}
    override = override or {}

    def point(name: str, value: torch.Tensor) -> torch.Tensor:
        if name in override:
            value = override[name](value)
        acts[name] = value
        return value

    def relu(name: str, value: torch.Tensor) -> torch.Tensor:
        return point(name, value if name in identity_relus else F.relu(value))

    def conv(name: str, value: torch.Tensor) -> torch.Tensor:
        return point(name, F.conv2d(value, weights[f"{name}.weight"], weights[f"{name}.bias"], padding=1))

    def linear(name: str, value: torch.Tensor) -> torch.Tensor:
        return point(name, F.linear(value, weights[f"{name}.weight"], weights[f"{name}.bias"]))

    h = x
    for block in (1, 2, 3):
        prefix = f"embedder.block{block}"
        h = point(f"{prefix}.maxpool_out", F.max_pool2d(conv(f"{prefix}.conv", h), 3, stride=2, padding=1))
        for res in (1, 2):
            name = f"{prefix}.res{res}"
            out = conv(f"{name}.conv1", relu(f"{name}.relu1_out", h))
            out = conv(f"{name}.conv2", relu(f"{name}.relu2_out", out))
            h = point(f"{name}.resadd_out", out + h)
        acts[prefix] = h
    h = relu("embedder.relu3_out", h)
    h = relu("embedder.relufc_out", linear("embedder.fc", torch.flatten(h, 1)))
    logits = linear("fc_policy", h)
    value = linear("fc_value", h).squeeze(-1)
    return logits, value, acts


def peaked_policy(seed: int = 0, image_size: int = 15, gain: float = 100.0) -> nn.Module:
    """A seeded random-init ImpalaPolicy in eval mode whose policy head is scaled by ``gain``, so its
    action distribution is far from uniform and edits visibly move logits and probabilities."""
    from shardlab.models.impala import ImpalaPolicy

    torch.manual_seed(seed)
    policy = ImpalaPolicy(scale=1, image_size=image_size).eval()
    with torch.no_grad():
        policy.fc_policy.weight.mul_(gain)
    return policy
