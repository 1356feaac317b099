"""The actor-critic layout the maze and MiniGrid policies share: an ``embedder`` trunk whose
hidden vector two linear heads read, ``fc_policy`` (action logits) and ``fc_value`` (value)."""

from __future__ import annotations

import torch
from torch import nn


class ActorCritic(nn.Module):
    """Base of the actor-critic policies: observation batch → (action logits, value).

    A subclass sets ``embedder``, ``fc_policy`` and ``fc_value``, then calls ``_init_weights``.
    The base adds no modules or parameters, so the state_dict keys are the subclass's own.
    """

    embedder: nn.Module
    fc_policy: nn.Linear
    fc_value: nn.Linear

    def _init_weights(self) -> None:
        # orthogonal init as in the published maze training code; the small policy gain keeps the
        # initial policy close to uniform
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(module.weight, gain=nn.init.calculate_gain("relu"))
                nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.fc_policy.weight, gain=0.01)
        nn.init.orthogonal_(self.fc_value.weight, gain=1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits (N, A) and values (N,) of an observation batch."""
        return self.heads(self.embedder(obs))

    def heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy logits and value from the embedder's output."""
        return self.fc_policy(hidden), self.fc_value(hidden).squeeze(-1)
