"""Which ReLUs of a maze policy matter: replace one ReLU (or all) by the identity and compare the
policy with the original on seeded mazes.

The IMPALA policy applies ``F.relu`` just before the HookPoints ``...relu1_out``, ``...relu2_out``,
``embedder.relu3_out`` and ``embedder.relufc_out``, so a HookPoint holds relu(pre). The
pre-activation is the output of an existing hook site (:func:`pre_relu_site`): the residual
block's input for ``relu1_out`` (the block's ``maxpool_out`` or the previous block's output), the
block's ``conv1`` for ``relu2_out``, ``embedder.block3`` for ``relu3_out`` and ``embedder.fc`` for
``relufc_out``. An ablation caches that value in the same forward pass and writes it into the
HookPoint — no change to the model. Before measuring, every ablated site is checked to hold
exactly relu(pre) on the inputs (a sparse activation there would fail the check).

Per ReLU, on one input per maze: ``agreement``, the fraction of mazes whose most likely move
(left, down, up, right or no-op: the 15 actions folded by the move each makes, see
``evals.maze.vector_field``) is the original's — two procgen actions of one move are the same
decision in the maze; ``agreement/raw_action``, the same for the argmax of the 15 logits; and
``kl``, the mean KL(π_original ‖ π_ablated) in nats over the 15 actions. The agreements are
proportions over mazes (Wilson intervals), the KL a mean over mazes (t interval): each maze gives
one input, so mazes are the independent units.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.evals.maze.common import new_panels
from shardlab.evals.maze.inputs import (action_kl, cached_activations, check_mouse_placement, hook_points,
                                        maze_inputs, move_logits, short_name)
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic
from shardlab.models.hooks import Edit, hooked

_PRE = ((re.compile(r"(.+)\.res1\.relu1_out"), r"\1.maxpool_out"),
        (re.compile(r"(.+)\.res2\.relu1_out"), r"\1.res1.resadd_out"),
        (re.compile(r"(.+)\.relu2_out"), r"\1.conv1"),
        (re.compile(r"(.+)\.relu3_out"), r"\1.block3"),
        (re.compile(r"(.+)\.relufc_out"), r"\1.fc"))


def pre_relu_site(site: str) -> str:
    """The hook site whose output is the input of the ReLU read by HookPoint ``site``."""
    for pattern, replacement in _PRE:
        if pattern.fullmatch(site):
            return pattern.sub(replacement, site)
    raise ValueError(f"{site!r} is not a ReLU site; ReLU sites end in relu1_out, relu2_out, relu3_out "
                     "or relufc_out")


def relu_sites(model: nn.Module) -> list[str]:
    """The model's ReLU HookPoints in forward order."""
    return [name for name in hook_points(model) if re.search(r"\.relu(\d|fc)_out$", name)]


def identity_edits(sites: Sequence[str]) -> dict[str, Edit]:
    """Hook edits that replace the ReLUs at ``sites`` by the identity (pre-activation passed on)."""
    stash: dict[str, torch.Tensor] = {}
    edits: dict[str, Edit] = {}
    for site in sites:
        def remember(x: torch.Tensor, site: str = site) -> torch.Tensor:
            stash[site] = x
            return x

        def identity(x: torch.Tensor, site: str = site) -> torch.Tensor:
            return stash.pop(site)

        edits[pre_relu_site(site)] = remember
        edits[site] = identity
    return edits


def ablated_logits(model: nn.Module, x: torch.Tensor, sites: Sequence[str]) -> torch.Tensor:
    """Logits with the ReLUs at ``sites`` replaced by the identity."""
    with torch.inference_mode(), hooked(model, edits=identity_edits(sites)):
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def check_relu_sites(model: nn.Module, x: torch.Tensor, sites: Sequence[str]) -> None:
    """ValueError naming any site whose HookPoint does not hold exactly relu(pre-activation)."""
    pre = {site: pre_relu_site(site) for site in sites}
    _, acts = cached_activations(model, x, list(dict.fromkeys([*sites, *pre.values()])))
    wrong = [site for site in sites if not torch.equal(F.relu(acts[pre[site]]), acts[site])]
    if wrong:
        raise ValueError(f"relu_ablation: {', '.join(wrong)} do not hold relu({pre[wrong[0]]}) "
                         "(a non-ReLU activation?); list the ReLU sites to ablate in relus")


def agreement(original: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-input (greedy folded move equal, greedy raw action equal) as float tensors."""
    same_move = (move_logits(original).argmax(-1) == move_logits(logits).argmax(-1)).double()
    same_action = (original.argmax(-1) == logits.argmax(-1)).double()
    return same_move, same_action


@dataclass
class Ablation:
    """Per-maze outcomes of one ablation against the original policy."""

    same_move: np.ndarray  # (mazes,) 1 where the most likely folded move is the original's
    same_action: np.ndarray  # (mazes,) 1 where the argmax of the 15 logits is the original's
    kl: np.ndarray  # (mazes,) KL(π_original ‖ π_ablated), nats

    def add_to(self, result: Result, name: str) -> None:
        """The ablation's rows: the move agreement (headline), the raw-action agreement, the KL."""
        result.add(f"{name}/kl", stats.mean(self.kl, unit="mazes"), higher_is_better=False)
        result.add(f"{name}/agreement", stats.proportion(self.same_move, unit="mazes"), higher_is_better=True)
        result.add(f"{name}/agreement/raw_action", stats.proportion(self.same_action, unit="mazes"),
                   higher_is_better=True)


@register("relu_ablation")
class ReluAblation(Eval):
    """Action agreement and KL against the original policy with each ReLU (and all) replaced by
    the identity; the PNG sorts the ReLUs by KL."""

    kinds = ("ppo",)
    layer_fields = ("relus",)
    version = 2  # 2: agreement is the folded move's (was the raw action's, now agreement/raw_action); intervals

    @dataclass
    class Config:
        """Mazes and the ReLU sites (HookPoint names; None: every ReLU of the model)."""

        mazes: int = 128
        mouse: str = "random"  # start, decision (mazes with a decision square) or random
        relus: Optional[list[str]] = None

        def __post_init__(self) -> None:
            check_mouse_placement(self.mouse)
            for site in self.relus or []:
                pre_relu_site(site)
            if self.relus is not None and not self.relus:
                raise ValueError("relu_ablation.relus is empty; name some ReLU sites or leave it null for every ReLU")
            if self.mazes < 1:
                raise ValueError(f"relu_ablation.mazes must be >= 1, got {self.mazes}")

    def run(self, ctx: EvalContext) -> Result:
        """Ablate each ReLU alone, then all together."""
        cfg, policy = self.config, ctx.policy
        sites = list(cfg.relus) if cfg.relus is not None else relu_sites(policy)
        _, _, x = maze_inputs(ctx, cfg.mazes, cfg.mouse, [*sites, *(pre_relu_site(site) for site in sites)])
        check_relu_sites(policy, x, sites)
        original, _ = cached_activations(policy, x, [])
        result, rows = Result(), {}
        runs = [*((short_name(site), [site]) for site in sites), ("all", sites)]
        for name, ablated in tqdm(runs, desc="relu_ablation", disable=not ctx.progress, **progress_kwargs()):
            logits = ablated_logits(policy, x, ablated)
            same_move, same_action = agreement(original, logits)
            rows[name] = Ablation(same_move.cpu().numpy(), same_action.cpu().numpy(),
                                  action_kl(original, logits).cpu().numpy())
        # most important first, so the printed table reads as a ranking
        ranked = sorted((name for name in rows if name != "all"), key=lambda name: -rows[name].kl.mean())
        for name in [*ranked, "all"]:
            rows[name].add_to(result, name)
        result.artifacts.append(self._plot(ctx, ranked, rows))
        return result

    @staticmethod
    def _plot(ctx: EvalContext, ranked: list[str], rows: dict[str, Ablation]) -> str:
        """Horizontal bars of KL per ReLU, most important on top, with move agreement beside."""
        fig, (ax_kl, ax_agree) = new_panels(2, size_inches=5.0)
        positions = np.arange(len(ranked))[::-1]
        ax_kl.barh(positions, [rows[name].kl.mean() for name in ranked], color="C3")
        ax_kl.set_yticks(positions, ranked, fontsize=7)
        ax_kl.set_xlabel("KL(original ‖ ablated), nats")
        ax_kl.set_title(f"ReLU → identity (all ReLUs: KL {rows['all'].kl.mean():.3g})", fontsize=9)
        ax_agree.barh(positions, [rows[name].same_move.mean() for name in ranked], color="C0", label="move")
        ax_agree.barh(positions, [rows[name].same_action.mean() for name in ranked], color="none", edgecolor="k",
                      label="raw action")
        ax_agree.set_yticks(positions, ranked, fontsize=7)
        ax_agree.set_xlim(0, 1.02)
        ax_agree.set_xlabel("agreement with the original")
        ax_agree.legend(fontsize=7)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("relu_ablation.png"))
