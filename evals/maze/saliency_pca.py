"""Saliency PCA: which input pixels and which channels move a maze policy's decision *across a
set of mazes*. One gradient row per maze, stacked and decomposed by SVD (a PCA without centring).

For each maze n the target is the logit of its chosen action (default ``greedy``: the most likely
folded move, whose logit is the logsumexp of its procgen actions — a raw argmax would favour up
and down, one action each, over left and right, three each; or a fixed action index; or a named
folded move ``left``/``down``/``up``/``right``/``noop``). Its gradient g_n with respect to
an activation a_n (or the input image) is one row of the (N, D) matrix G (a saliency map per
maze). The SVD G = U Σ Vᵀ gives the directions of activation space (rows of Vᵀ, reshaped to
C×H×W) along which the saliency maps of different mazes vary most; σ₁²/Σσ² says how much one
direction dominates, and the effective rank exp(entropy of σ²/Σσ²) how many directions matter.

This is a statement about the population of mazes, not about one decision: the per-input
Jacobian and its singular vectors are ``evals.maze.jacobian_svd``.

The rows estimate properties of that population from a sample of mazes, so each has a bootstrap
interval over mazes (the mazes resampled, the SVD redone): ``sigmaK`` is the K-th singular value
of G/√N — the root-mean-square of the mazes' gradients along direction K, which does not grow with
the number of mazes (σ of G itself does, as √N) — ``top1_energy`` σ₁²/Σσ², ``effective_rank``,
and ``channel_share/...`` each channel's share of Σ‖g_n‖². The layers' top channels are chosen
on these same mazes, so their shares lean high (their note says so).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Callable, ClassVar, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from shardlab.envs.maze_views import observation_channels
from shardlab.evals.maze.common import new_panels
from shardlab.evals.maze.inputs import check_mouse_placement, maze_inputs, move_logits, short_name
from shardlab.evals.maze.vector_field import FOLDED_ACTIONS
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic
from shardlab.models.hooks import hooked

INPUT = "input"
DEFAULT_LAYERS = ("embedder.block1.res2.resadd_out", "embedder.block2.res1.resadd_out",
                  "embedder.block3.res2.resadd_out")


def target_logits(logits: torch.Tensor, action: Union[str, int], chosen: torch.Tensor) -> torch.Tensor:
    """(N,) logit of each input's target: the ``chosen`` folded move's logit for ``greedy``, the
    ``chosen`` procgen action's for an index, the named folded move's for a move name."""
    if action == "greedy":
        return move_logits(logits).gather(-1, chosen[:, None]).squeeze(-1)
    if isinstance(action, str) and action in FOLDED_ACTIONS:
        return move_logits(logits)[:, FOLDED_ACTIONS.index(action)]
    return logits.gather(-1, chosen[:, None]).squeeze(-1)


def chosen_actions(logits: torch.Tensor, action: Union[str, int]) -> torch.Tensor:
    """(N,) per input: the most likely folded move (index into FOLDED_ACTIONS) for ``greedy``, else
    the fixed procgen index (unused for move names)."""
    if action == "greedy":
        return move_logits(logits).argmax(-1)
    index = int(action) if not (isinstance(action, str) and action in FOLDED_ACTIONS) else 0
    return torch.full((len(logits),), index, dtype=torch.long, device=logits.device)


def output_gradients(model: nn.Module, x: torch.Tensor, names: Sequence[str],
                     outputs: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-input gradients of each column of ``outputs(logits, value)`` (N, K) w.r.t. the input
    (``"input"``) and each named activation: {name: (N, K, ...)}, float, detached. Inputs must not
    interact (no batch norm in train mode), so the gradient of a sum over the batch holds every
    input's own row."""
    layers = [name for name in names if name != INPUT]
    store: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def edit(activation: torch.Tensor) -> torch.Tensor:
            store[name] = activation  # the live tensor of the graph, not a detached copy
            return activation
        return edit

    # autograd even when called under inference mode (the clone makes x a normal tensor)
    with torch.inference_mode(False), torch.enable_grad(), hooked(model, edits={name: keep(name) for name in layers}):
        x = x.clone().requires_grad_(INPUT in names)
        out = model(x)
        logits, value = (out[0], out[1]) if isinstance(out, (tuple, list)) else (out, None)
        columns = outputs(logits, value)
        wrt = [x] * (INPUT in names) + [store[name] for name in layers]
        rows = [torch.autograd.grad(columns[:, k].sum(), wrt, retain_graph=k < columns.shape[1] - 1)
                for k in range(columns.shape[1])]
    named = ([INPUT] if INPUT in names else []) + layers
    return {name: torch.stack([row[i] for row in rows], 1).detach() for i, name in enumerate(named)}


def gradients(model: nn.Module, x: torch.Tensor, names: Sequence[str], action: Union[str, int] = "greedy"
              ) -> dict[str, torch.Tensor]:
    """Per-input gradients of the target logit w.r.t. the input (``"input"``) and each named
    activation, as {name: (N, ...)} tensors (float, detached)."""
    def target(logits: torch.Tensor, value: Optional[torch.Tensor]) -> torch.Tensor:
        return target_logits(logits, action, chosen_actions(logits.detach(), action))[:, None]
    return {name: grad[:, 0] for name, grad in output_gradients(model, x, names, target).items()}


def spectrum(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending) and right singular vectors (rows, reshaped like one input's
    gradient) of the (N, D) matrix of per-input gradients."""
    matrix = grad.reshape(len(grad), -1).double()
    _, singular, vh = torch.linalg.svd(matrix, full_matrices=False)
    return singular, vh.reshape(-1, *grad.shape[1:])


def effective_rank(singular: torch.Tensor) -> float:
    """exp(entropy of σ²/Σσ²): 1 when one direction holds all the energy."""
    energy = singular ** 2
    if float(energy.sum()) == 0:
        return math.nan
    p = energy / energy.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class CrossMazeSpectrum:
    """The cross-maze SVD of per-maze gradients, recomputable for any resample of the mazes from
    the (N, N) Gram matrix of the gradients: the eigenvalues of G_S G_Sᵀ for the rows S are the
    squared singular values of G_S, so a bootstrap redoes an N×N eigendecomposition, not an SVD
    of an N×D matrix."""

    def __init__(self, grad: torch.Tensor):
        matrix = grad.reshape(len(grad), -1).double()
        self.n, self.dim = matrix.shape
        self.gram = (matrix @ matrix.T).cpu().numpy()
        # (N, C) each maze's gradient energy per channel (the input's or a layer's), for the shares
        self.channel_energy = ((grad.double() ** 2).sum(dim=[d for d in range(2, grad.dim())]).cpu().numpy()
                               if grad.dim() > 2 else None)
    def eigenvalues(self, rows: np.ndarray) -> np.ndarray:
        """σ² of G_rows/√len(rows), descending (clipped at 0 against rounding)."""
        values = np.linalg.eigvalsh(self.gram[np.ix_(rows, rows)] / len(rows))[::-1]
        return np.clip(values, 0.0, None)

    def _statistics(self, rows: np.ndarray) -> np.ndarray:
        """Every singular value of G_rows/√len(rows), then σ₁²/Σσ² (Σσ² is the trace, exact where the
        small eigenvalues are rounding; undefined for all-zero gradients) and the effective rank."""
        eigenvalues = self.eigenvalues(rows)
        total = np.diag(self.gram)[rows].sum() / len(rows)
        singular = np.sqrt(eigenvalues)
        return np.concatenate([singular, [_ratio(eigenvalues[0], total), effective_rank(torch.from_numpy(singular))]])

    @functools.cached_property
    def _estimates(self) -> list[stats.Estimate]:
        # one eigendecomposition per resample serves every statistic of the spectrum
        return stats.bootstrap_each(self._statistics, self.n, "mazes")

    def sigma(self, k: int) -> stats.Estimate:
        """The k-th (0-based) singular value of G/√N over mazes."""
        return self._estimates[k]

    def top1_energy(self) -> stats.Estimate:
        """σ₁²/Σσ² (undefined for all-zero gradients)."""
        return self._estimates[self.n]

    def effective_rank(self) -> stats.Estimate:
        """exp(entropy of σ²/Σσ²)."""
        return self._estimates[self.n + 1]

    def channel_share(self, channel: int) -> stats.Estimate:
        """The channel's share of the gradient energy summed over mazes."""
        energy = self.channel_energy
        return stats.bootstrap(lambda rows: _ratio(energy[rows, channel].sum(), energy[rows].sum()), self.n, "mazes")


def _ratio(part: float, whole: float) -> float:
    return float(part / whole) if whole > 0 else math.nan


@dataclass
class GradientConfig:
    """What a gradient eval differentiates: seeded mazes, the mouse's square in them, the layers
    (the input always), and how many singular values it reports."""

    eval_name: ClassVar[str] = "gradient eval"  # the eval named in error messages

    mazes: int = 32
    mouse: str = "decision"  # start, decision (mazes with a decision square) or random
    layers: list[str] = field(default_factory=lambda: list(DEFAULT_LAYERS))
    top_k: int = 3  # singular values reported per target

    def __post_init__(self) -> None:
        check_mouse_placement(self.mouse)
        if self.mazes < 1 or self.top_k < 1 or not self.layers:
            raise ValueError(f"{self.eval_name} needs mazes >= 1, top_k >= 1 and at least one of layers; got "
                             f"mazes={self.mazes}, top_k={self.top_k}, layers={list(self.layers)}")


@register("saliency_pca")
class SaliencyPCA(Eval):
    """Top singular values and vectors of the stacked per-maze gradients of the chosen action's
    logit (a cross-maze PCA of saliency maps), for the input and chosen layers."""

    kinds = ("ppo",)
    layer_fields = ("layers",)
    version = 2  # 2: sigmaK of G/√N (was of G); bootstrap intervals over mazes

    @dataclass
    class Config(GradientConfig):
        """Mazes, layers and the target action (greedy, an index 0–14, or left/down/up/right/noop)."""

        eval_name: ClassVar[str] = "saliency_pca"
        action: str = "greedy"

        def __post_init__(self) -> None:
            super().__post_init__()
            ok = self.action == "greedy" or self.action in FOLDED_ACTIONS or (
                self.action.isdigit() and 0 <= int(self.action) < 15)
            if not ok:
                raise ValueError(f"saliency_pca.action must be greedy, 0-14 or one of "
                                 f"{', '.join(FOLDED_ACTIONS)}; got {self.action!r}")

    def run(self, ctx: EvalContext) -> Result:
        """Gradients for a batch of mazes, their SVD and per-channel shares, with bootstrap
        intervals over mazes."""
        cfg, policy = self.config, ctx.policy
        env, _, x = maze_inputs(ctx, cfg.mazes, cfg.mouse, cfg.layers)
        action: Union[str, int] = int(cfg.action) if cfg.action.isdigit() else cfg.action
        grads = gradients(policy, x, [INPUT, *cfg.layers], action)
        result = Result()
        tops = {}
        for name, grad in grads.items():
            tops[name] = spectrum(grad)[1][0]
            label, part = short_name(name), CrossMazeSpectrum(grad)
            for k in range(min(cfg.top_k, part.n, part.dim)):
                result.add(f"{label}/sigma{k + 1}", part.sigma(k))
            result.add(f"{label}/top1_energy", part.top1_energy())
            result.add(f"{label}/effective_rank", part.effective_rank())
            if part.channel_energy is None:
                continue  # a flat layer has no channels
            if name == INPUT:
                for channel, channel_name in enumerate(observation_channels(env.obs)):
                    result.add(f"input/channel_share/{channel_name}", part.channel_share(channel))
            else:
                totals = part.channel_energy.sum(0)
                for channel in np.argsort(-totals, kind="stable")[:cfg.top_k].tolist():
                    share = part.channel_share(channel)
                    note = f"one of the {cfg.top_k} largest shares on these mazes: leans high"
                    result.add(f"{label}/channel_share/c{channel}", replace(share, note=share.note or note))
        result.artifacts.append(self._plot(ctx, grads, tops, env.obs))
        return result

    @staticmethod
    def _plot(ctx: EvalContext, grads: dict[str, torch.Tensor], tops: dict[str, torch.Tensor], obs: str) -> str:
        """Input: mean |gradient| and the top singular vector per input channel. Layers: gradient
        energy per channel, and the mean |gradient| summed over channels per cell."""
        grad_in, top_in = grads[INPUT].double(), tops[INPUT]
        channel_names = observation_channels(obs)
        spatial = [name for name in grads if name != INPUT and grads[name].dim() == 4]
        rows, cols = 2 + len(spatial), len(channel_names)  # one row per input map, one per layer
        fig, axes = new_panels(rows * cols, size_inches=3.2, rows=rows)
        for row, (title, maps) in enumerate((("mean |∂logit/∂input|", grad_in.abs().mean(0)),
                                             ("top singular vector", top_in))):
            for channel, name in enumerate(channel_names):
                ax = axes[row * cols + channel]
                image = maps[channel].cpu().numpy()
                limit = float(np.abs(image).max()) or 1.0
                cmap, vmin = ("magma", 0.0) if row == 0 else ("RdBu_r", -limit)
                shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=limit, interpolation="nearest")
                ax.set_title(f"{title}: {name}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                fig.colorbar(shown, ax=ax, shrink=0.7)
        for row, name in enumerate(spatial, start=2):
            grad = grads[name].double()
            energy = (grad ** 2).sum(dim=(0, 2, 3))
            ax = axes[row * cols]
            ax.bar(np.arange(len(energy)), (energy / energy.sum()).cpu().numpy() if energy.sum() > 0 else energy)
            ax.set_title(f"{short_name(name)}: gradient energy per channel", fontsize=8)
            ax.set_xlabel("channel", fontsize=7)
            ax = axes[row * cols + 1]
            shown = ax.imshow(grad.abs().mean(0).sum(0).cpu().numpy(), cmap="magma", interpolation="nearest")
            ax.set_title(f"{short_name(name)}: mean |gradient| per cell", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(shown, ax=ax, shrink=0.7)
            for ax in axes[row * cols + 2:(row + 1) * cols]:
                ax.set_visible(False)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("saliency_pca.png"))
