"""IMPALA CNN policy with the published maze policy's module names.

The state_dict keys match procgen-tools / train-procgen-pytorch (``embedder.block1.conv.weight``,
``embedder.block2.res1.conv1.weight``, ``embedder.fc.weight``, ``fc_policy.weight``,
``fc_value.weight``), so a published checkpoint loads with :func:`models.weights.load_policy_weights`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.hooks import HookPoint

NUM_ACTIONS = 15


class ResidualBlock(nn.Module):
    """relu → conv → relu → conv, added to the input (hook points named as in published analyses)."""

    def __init__(self, channels: int):
        super().__init__()
        self.relu1_out = HookPoint()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.relu2_out = HookPoint()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.resadd_out = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1_out(F.relu(x)))
        out = self.conv2(self.relu2_out(F.relu(out)))
        return self.resadd_out(out + x)


class ImpalaBlock(nn.Module):
    """conv → maxpool(3, stride 2) → two residual blocks; halves the spatial size (rounding up)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.maxpool_out = HookPoint()
        self.res1 = ResidualBlock(out_channels)
        self.res2 = ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool_out(F.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1))
        return self.res2(self.res1(x))


def pooled_size(size: int) -> int:
    """Spatial size after one maxpool(3, stride 2, pad 1)."""
    return (size - 1) // 2 + 1


class ImpalaEmbedder(nn.Module):
    """Three IMPALA blocks, then relu → flatten → fc(256) → relu."""

    def __init__(self, in_channels: int = 3, scale: int = 1, image_size: int = 64, hidden: int = 256):
        super().__init__()
        widths = (16 * scale, 32 * scale, 32 * scale)
        self.block1 = ImpalaBlock(in_channels, widths[0])
        self.block2 = ImpalaBlock(widths[0], widths[1])
        self.block3 = ImpalaBlock(widths[1], widths[2])
        side = pooled_size(pooled_size(pooled_size(image_size)))
        self.relu3_out = HookPoint()
        self.fc = nn.Linear(widths[2] * side * side, hidden)
        self.relufc_out = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu3_out(F.relu(self.block3(self.block2(self.block1(x)))))
        # flatten in NCHW order whatever the memory format, so weights stay compatible
        x = torch.flatten(x.contiguous(), 1)
        return self.relufc_out(F.relu(self.fc(x)))


class ImpalaPolicy(nn.Module):
    """Actor-critic IMPALA network: image batch in [0, 1] (N, C, H, W) → (action logits, value)."""

    def __init__(self, in_channels: int = 3, scale: int = 1, image_size: int = 64,
                 num_actions: int = NUM_ACTIONS):
        super().__init__()
        self.in_channels, self.scale, self.image_size = in_channels, scale, image_size
        self.embedder = ImpalaEmbedder(in_channels, scale, image_size)
        self.fc_policy = nn.Linear(256, num_actions)
        self.fc_value = nn.Linear(256, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # orthogonal init as in the published training code; the small policy gain keeps the
        # initial policy close to uniform
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.orthogonal_(module.weight, gain=nn.init.calculate_gain("relu"))
                nn.init.zeros_(module.bias)
        nn.init.orthogonal_(self.fc_policy.weight, gain=0.01)
        nn.init.orthogonal_(self.fc_value.weight, gain=1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embedder(obs)
        return self.fc_policy(hidden), self.fc_value(hidden).squeeze(-1)

    def heads(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy logits and value from the embedder's 256-d output."""
        return self.fc_policy(hidden), self.fc_value(hidden).squeeze(-1)


def preprocess(obs: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC observations → float NCHW in [0, 1] (channels-last memory if asked)."""
    x = obs.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
