"""Sparse activations: k-winners-take-all with boosting, plain top-k, and an L1-penalised ReLU.

Pick one by name with :func:`make_activation` (``relu``, ``gelu``, ``kwta``, ``topk``, ``l1``), so
any network (IMPALA policy, classifier, decision-transformer MLPs) can make a layer sparse from its
config. Layout follows the input's rank: a 4-D input is a conv activation ``(N, C, H, W)``; any
other rank keeps its units on the last dimension (``(N, D)``, or ``(B, T, D)`` in a transformer).

k-WTA follows numenta's nupic.torch formulation ("How can we be so dense", Ahmad & Scheinkman 2019):
units are ranked by ``x · exp((target_density − duty_cycle) · boost_strength)`` so rarely-winning
units get a chance, the ``k = round(n · percent_on)`` winners pass their *unboosted* value, the rest
are zeroed; in eval mode ``int(k · k_inference_factor)`` win. The duty cycle (how often each unit is non-zero; per channel for conv inputs) is an
exponential moving average over ``duty_cycle_period`` samples, updated only in training mode.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.nn import functional as F

from shardlab.models.sparse_config import KINDS, OPTIONS, SPARSE_KINDS, check_activation, check_fraction, check_kwinners

__all__ = ["KINDS", "OPTIONS", "SPARSE_KINDS", "TopK", "KWinners", "L1ReLU", "make_activation", "l1_penalty",
           "winners_count"]


def _units_last(x: torch.Tensor) -> torch.Tensor:
    """(..., D) → (M, D) view; a conv input (N, C, H, W) → (N, C·H·W) for global selection."""
    return x.reshape(x.shape[0], -1) if x.dim() == 4 else x.reshape(-1, x.shape[-1])


def _keep_top(scores: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """``values`` where ``scores`` is among the k largest of its row (last dim), 0 elsewhere."""
    if k >= scores.shape[-1]:
        return values
    winners = scores.topk(k, dim=-1, sorted=False).indices
    mask = torch.zeros_like(values, dtype=torch.bool).scatter_(-1, winners, True)
    return values * mask  # winners keep their gradient, losers get none


def winners_count(units: int, percent_on: float, factor: float = 1.0) -> int:
    """How many of ``units`` win: nupic.torch's ``int(round(units · percent_on) · factor)`` (at least 1).

    The factor scales the rounded training-time k and the product is truncated, as in nupic.torch's
    KWinners (``k = int(round(n * percent_on))``, ``k_inference = int(k * k_inference_factor)``):
    50 units at 10% with factor 1.5 give 7 winners, not round(7.5) = 8.
    """
    return max(1, int(round(units * percent_on) * factor))


def _winners(x: torch.Tensor, scores: torch.Tensor, percent_on: float, local: bool,
             factor: float = 1.0) -> torch.Tensor:
    """Apply top-k selection in the layout of ``x`` (see module docstring)."""
    if x.dim() == 4 and local:
        # per location: compete over channels at each (h, w)
        k = winners_count(x.shape[1], percent_on, factor)
        out = _keep_top(scores.movedim(1, -1), x.movedim(1, -1), k)
        return out.movedim(-1, 1)
    flat = _units_last(x)
    k = winners_count(flat.shape[-1], percent_on, factor)
    return _keep_top(_units_last(scores), flat, k).reshape(x.shape)


class TopK(nn.Module):
    """Keep the ``round(n · percent_on)`` largest units, zero the rest (no boosting, no state)."""

    def __init__(self, percent_on: float = 0.1, local: bool = False):
        super().__init__()
        check_fraction("percent_on", percent_on)
        self.percent_on, self.local = percent_on, local

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _winners(x, x, self.percent_on, self.local)

    def extra_repr(self) -> str:
        return f"percent_on={self.percent_on}, local={self.local}"


class KWinners(nn.Module):
    """k-winners-take-all with boosting by duty cycle (numenta's KWinners / KWinners2d in one).

    ``units`` is the number of features (1-D) or channels (conv); if omitted the duty-cycle buffer
    is sized on the first forward pass (or by a loaded state_dict). Conv inputs compete globally
    over C·H·W unless ``local=True`` (per location, over channels); duty cycles are per channel.
    In eval mode ``int(k · k_inference_factor)`` units win (numenta's nupic.torch uses 1.5; see
    :func:`winners_count`): a few more winners at test time let units that a noisy input pushed
    just below the cut through.
    """

    def __init__(self, units: Optional[int] = None, percent_on: float = 0.1, boost_strength: float = 1.0,
                 duty_cycle_period: int = 1000, local: bool = False, k_inference_factor: float = 1.0):
        super().__init__()
        check_kwinners(units, percent_on, boost_strength, duty_cycle_period, k_inference_factor)
        self.percent_on, self.boost_strength = percent_on, boost_strength
        self.duty_cycle_period, self.local = duty_cycle_period, local
        self.k_inference_factor = k_inference_factor
        self.register_buffer("duty_cycle", torch.zeros(units or 0))
        self.register_buffer("learning_iterations", torch.zeros((), dtype=torch.long))

    def boost_factors(self) -> torch.Tensor:
        """exp((target_density − duty_cycle) · boost_strength), one factor per unit/channel."""
        return torch.exp((self.percent_on - self.duty_cycle) * self.boost_strength)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = x.shape[1] if x.dim() == 4 else x.shape[-1]
        if self.duty_cycle.numel() == 0:
            self.duty_cycle = torch.zeros(units, device=x.device)
        elif self.duty_cycle.numel() != units:
            raise ValueError(f"KWinners was built for {self.duty_cycle.numel()} units but got input with "
                             f"{units}; pass units= matching the layer width")
        scores = x
        if self.boost_strength > 0:
            shape = (1, units, 1, 1) if x.dim() == 4 else (units,)
            scores = x.detach() * self.boost_factors().view(shape)
        factor = 1.0 if self.training else self.k_inference_factor
        out = _winners(x, scores, self.percent_on, self.local, factor)
        if self.training:
            self._update_duty_cycle(out.detach())
        return out

    @torch.no_grad()
    def _update_duty_cycle(self, out: torch.Tensor) -> None:
        # numenta's running average: the period grows with the samples seen, up to duty_cycle_period
        if out.dim() == 4:
            samples = out.shape[0]
            active = (out > 0).sum(dim=(0, 2, 3)).float() / (out.shape[2] * out.shape[3])
        else:
            flat = out.reshape(-1, out.shape[-1])
            samples = flat.shape[0]
            active = (flat > 0).sum(dim=0).float()
        self.learning_iterations += samples
        period = float(min(self.duty_cycle_period, int(self.learning_iterations)))
        self.duty_cycle.mul_(period - samples).add_(active).div_(period)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a lazily-sized duty cycle takes the loaded size, so a fresh module loads any checkpoint
        loaded = state_dict.get(prefix + "duty_cycle")
        if loaded is not None and self.duty_cycle.numel() == 0:
            self.duty_cycle = torch.zeros_like(loaded, device=self.duty_cycle.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"units={self.duty_cycle.numel() or None}, percent_on={self.percent_on}, "
                f"boost_strength={self.boost_strength}, duty_cycle_period={self.duty_cycle_period}, "
                f"local={self.local}, k_inference_factor={self.k_inference_factor}")


class L1ReLU(nn.ReLU):
    """ReLU that records the mean |activation| it outputs, for the trainer to add ``λ · L1``.

    The penalty is on the ReLU's output (the activity we want sparse): penalising the input would
    also pull negative pre-activations, which are already silent, towards zero.
    """

    penalty: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(x)
        self.penalty = out.abs().mean()
        return out

    def __getstate__(self) -> dict:
        # the recorded penalty holds an autograd graph, which cannot be deep-copied or pickled
        state = super().__getstate__()
        state.pop("penalty", None)
        return state


def make_activation(kind: str = "relu", **options: Any) -> nn.Module:
    """Build an activation by name: relu, gelu, kwta (options: units, percent_on, boost_strength,
    duty_cycle_period, local), topk (percent_on, local) or l1 (ReLU recording its L1 penalty);
    options another kind uses are ignored, unknown ones raise ValueError."""
    used = check_activation(kind, **options)  # the options this kind takes, checked
    builders = {"relu": nn.ReLU, "gelu": nn.GELU, "l1": L1ReLU, "topk": TopK, "kwta": KWinners}
    return builders[kind](**used)


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of the mean |activation| recorded by every L1ReLU in ``model`` on its last forward (0 if none)."""
    penalties = [m.penalty for m in model.modules() if isinstance(m, L1ReLU) and m.penalty is not None]
    if not penalties:
        return torch.zeros(())
    return torch.stack(penalties).sum()
