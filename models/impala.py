"""IMPALA CNN policy with the published maze policy's module names.

The state_dict keys match procgen-tools / train-procgen-pytorch (``embedder.block1.conv.weight``,
``embedder.block2.res1.conv1.weight``, ``embedder.fc.weight``, ``fc_policy.weight``,
``fc_value.weight``), so a published checkpoint loads with :func:`models.weights.load_policy_weights`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from shardlab.models.actor_critic import ActorCritic
from shardlab.models.hooks import HookPoint
from shardlab.models.impala_config import RELU_SITES, sparse_sites
from shardlab.models.sparse import make_activation
from shardlab.models.sparse_config import activation_options

NUM_ACTIONS = 15


class SiteActivations:
    """Builds the activation module for a ReLU site, or None where the plain F.relu stays."""

    def __init__(self, kind: str = "relu", sites: Sequence[str] = ("*",), options: Optional[dict] = None):
        self.kind, self.sites, self.options = kind, set(sparse_sites(sites)), dict(options or {})

    def __call__(self, site: str, units: int) -> Optional[nn.Module]:
        if self.kind == "relu" or site not in self.sites:
            return None  # no module: the dense policy keeps its published keys and outputs
        options = {**self.options, "units": units} if self.kind == "kwta" else self.options
        return make_activation(self.kind, **options)


def _apply(act: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    return F.relu(x) if act is None else act(x)


class ResidualBlock(nn.Module):
    """relu → conv → relu → conv, added to the input (hook points named as in published analyses)."""

    def __init__(self, channels: int, activations: Optional[SiteActivations] = None, name: str = ""):
        super().__init__()
        activations = activations or SiteActivations()
        self.act1 = activations(f"{name}.relu1_out", channels)  # None unless made sparse
        self.relu1_out = HookPoint()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.act2 = activations(f"{name}.relu2_out", channels)
        self.relu2_out = HookPoint()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.resadd_out = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1_out(_apply(self.act1, x)))
        out = self.conv2(self.relu2_out(_apply(self.act2, out)))
        return self.resadd_out(out + x)


class ImpalaBlock(nn.Module):
    """conv → maxpool(3, stride 2) → two residual blocks; halves the spatial size (rounding up)."""

    def __init__(self, in_channels: int, out_channels: int, activations: Optional[SiteActivations] = None,
                 name: str = ""):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.maxpool_out = HookPoint()
        self.res1 = ResidualBlock(out_channels, activations, f"{name}.res1")
        self.res2 = ResidualBlock(out_channels, activations, f"{name}.res2")

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """conv → maxpool, the block's first half (its ``maxpool_out`` hook point included)."""
        return self.maxpool_out(F.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res2(self.res1(self.pool(x)))


def pooled_size(size: int) -> int:
    """Spatial size after one maxpool(3, stride 2, pad 1)."""
    return (size - 1) // 2 + 1


class ImpalaEmbedder(nn.Module):
    """Three IMPALA blocks, then relu → flatten → fc(256) → relu."""

    def __init__(self, in_channels: int = 3, scale: int = 1, image_size: int = 64, hidden: int = 256,
                 activations: Optional[SiteActivations] = None):
        super().__init__()
        activations = activations or SiteActivations()
        widths = (16 * scale, 32 * scale, 32 * scale)
        self.block1 = ImpalaBlock(in_channels, widths[0], activations, "embedder.block1")
        self.block2 = ImpalaBlock(widths[0], widths[1], activations, "embedder.block2")
        self.block3 = ImpalaBlock(widths[1], widths[2], activations, "embedder.block3")
        side = pooled_size(pooled_size(pooled_size(image_size)))
        self.act3 = activations("embedder.relu3_out", widths[2])
        self.relu3_out = HookPoint()
        self.fc = nn.Linear(widths[2] * side * side, hidden)
        self.actfc = activations("embedder.relufc_out", hidden)
        self.relufc_out = HookPoint()

    @property
    def blocks(self) -> tuple[ImpalaBlock, ImpalaBlock, ImpalaBlock]:
        """The three IMPALA blocks in forward order."""
        return self.block1, self.block2, self.block3

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """relu → flatten → fc → relu on the last block's output."""
        x = self.relu3_out(_apply(self.act3, x))
        # flatten in NCHW order whatever the memory format, so weights stay compatible
        x = torch.flatten(x.contiguous(), 1)
        return self.relufc_out(_apply(self.actfc, self.fc(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block3(self.block2(self.block1(x))))


class ImpalaPolicy(ActorCritic):
    """Actor-critic IMPALA network: image batch in [0, 1] (N, C, H, W) → (action logits, value).

    ``activation`` (models.sparse kinds: kwta, topk, l1, gelu) replaces the ReLUs at the hook points
    matching ``sparse_layers`` (fnmatch patterns over models.impala_config.RELU_SITES; default all 14), built with
    ``activation_options`` (percent_on, boost_strength, duty_cycle_period, local). The default
    ``relu`` is the published network: same modules, state_dict keys and outputs.
    """

    activation_sites = RELU_SITES  # the hook points after each ReLU (or the activation replacing it)

    def __init__(self, in_channels: int = 3, scale: int = 1, image_size: int = 64,
                 num_actions: int = NUM_ACTIONS, activation: str = "relu",
                 sparse_layers: Sequence[str] = ("*",), activation_options: Optional[dict] = None):
        super().__init__()
        self.in_channels, self.scale, self.image_size = in_channels, scale, image_size
        activations = SiteActivations(activation, sparse_layers, activation_options)
        self.embedder = ImpalaEmbedder(in_channels, scale, image_size, activations=activations)
        self.fc_policy = nn.Linear(256, num_actions)
        self.fc_value = nn.Linear(256, 1)
        self._init_weights()


def preprocess(obs: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 NHWC observations → float NCHW in [0, 1] (channels-last memory if asked)."""
    x = obs.permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def build_policy(cfg: Any, observation_shape: Sequence[int]) -> ImpalaPolicy:
    """The policy network a maze PPO config's ``model`` section describes, for the env's
    ``observation_shape`` (H, W, C; the kind's ``env_shapes``)."""
    model = cfg.model
    sparse = activation_options(model)
    policy = ImpalaPolicy(in_channels=3, scale=model.scale, image_size=observation_shape[0],
                          activation=model.activation, sparse_layers=list(model.sparse_layers),
                          activation_options=sparse)
    if model.channels_last:
        policy = policy.to(memory_format=torch.channels_last)
    return policy
