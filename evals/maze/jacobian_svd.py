"""Which input pixels and which channels control one decision of a maze policy: for each maze
separately, the Jacobian of the policy's folded move log-probabilities (and of its value) with
respect to the input and to chosen layers, its singular values and top singular vectors; then
averages over mazes.

For one input x the five folded move log-probabilities log P(move | x) (left, down, up, right,
noop; each the logsumexp of its actions' log-probabilities, ``envs.maze.MOVE_GROUPS``) form a
5-vector; its Jacobian J (5 × D) with respect to an activation a (D values, or the input image)
has the SVD J = U Σ Vᵀ. The rows of Vᵀ (reshaped to C×H×W) are the directions of activation
space that move the policy most, ordered by σ; the matching columns of U say which moves they
trade against each other. The probabilities sum to one, so Σₘ P(m)·∇log P(m) = 0 and J has rank
at most 4 (σ₅ = 0). σ₁²/Σσ² says how much one direction dominates, the effective rank
exp(entropy of σ²/Σσ²) how many matter (1 to 4). The value's Jacobian is one row, ∇V: its one
singular value is ‖∇V‖, and |cos(∇V, v₁)| says whether value and policy read the same direction.

Every row is a mean over mazes of a per-maze number, with a t interval over mazes (one input per
maze, so mazes are the independent units; a maze whose Jacobian is zero has no energy share or
cosine and is left out of those rows). The layers' ``channel_share/cK`` rows name the channels
whose mean share is largest on these same mazes, so those means lean high (their note says so).

The cross-maze analysis (one saliency row per maze, SVD across mazes) is
``evals.maze.saliency_pca``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Optional, Sequence

import numpy as np
import torch
from torch import nn

from shardlab.envs.maze import MOVE_GROUPS
from shardlab.envs.maze_views import observation_channels
from shardlab.evals.maze.common import new_panels
from shardlab.evals.maze.inputs import maze_inputs, short_name
from shardlab.evals.maze.saliency_pca import INPUT, GradientConfig, effective_rank, output_gradients
from shardlab.evals.maze.vector_field import FOLDED_ACTIONS
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic

MOVES = len(MOVE_GROUPS)  # rows 0-4 of a Jacobian: the folded moves; row 5: the value


def move_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(N, 5) folded move log-probabilities: logsumexp of each move's action log-probabilities."""
    log_probs = torch.log_softmax(logits, -1)
    return torch.stack([log_probs[..., list(group)].logsumexp(-1) for group in MOVE_GROUPS], -1)


def jacobians(model: nn.Module, x: torch.Tensor, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-input Jacobians of (5 folded move log-probs, value) w.r.t. the input (``"input"``) and
    each named activation: {name: (N, 6, ...)} (detached)."""
    def moves_and_value(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return torch.cat([move_log_probs(logits), value.reshape(len(logits), 1)], 1)  # (N, 6)
    return output_gradients(model, x, names, moves_and_value)


@dataclass
class Decomposition:
    """Per-maze SVD of the move Jacobians of one target (input or layer), and the value gradient."""

    singular: torch.Tensor  # (N, 5) singular values, descending
    left: torch.Tensor  # (N, 5, 5) left singular vectors (columns), over the moves
    right: torch.Tensor  # (N, 5, ...) right singular vectors (rows), shaped like the target
    value_grad: torch.Tensor  # (N, ...) ∇V

    @property
    def top1_energy(self) -> torch.Tensor:
        """(N,) σ₁²/Σσ² per maze (NaN for a zero Jacobian)."""
        energy = self.singular ** 2
        return energy[:, 0] / energy.sum(1)

    @property
    def effective_rank(self) -> torch.Tensor:
        """(N,) exp(entropy of σ²/Σσ²) per maze."""
        return torch.tensor([effective_rank(row) for row in self.singular], dtype=torch.float64)

    @property
    def channel_share(self) -> torch.Tensor:
        """(N, C) share of ‖v₁‖² = 1 in each channel of a (C, H, W) target."""
        return (self.right[:, 0] ** 2).sum((2, 3))

    @property
    def value_norm(self) -> torch.Tensor:
        """(N,) ‖∇V‖, the value Jacobian's one singular value."""
        return self.value_grad.reshape(len(self.value_grad), -1).norm(dim=1)

    @property
    def value_top1_cosine(self) -> torch.Tensor:
        """(N,) |cos(∇V, v₁)|: 1 when the value moves along the policy's top direction."""
        flat = self.value_grad.reshape(len(self.value_grad), -1)
        dot = (flat * self.right[:, 0].reshape(len(flat), -1)).sum(1).abs()
        return dot / self.value_norm


def decompose(jacobian: torch.Tensor) -> Decomposition:
    """SVD of each maze's (5, D) move Jacobian (rows 0-4 of ``jacobian``, (N, 6, ...)), signs fixed
    so that each left vector's largest entry is positive (v_k raises that move's log-probability)."""
    n, shape = len(jacobian), jacobian.shape[2:]
    moves = jacobian[:, :MOVES].reshape(n, MOVES, -1).double()
    left, singular, right = torch.linalg.svd(moves, full_matrices=False)
    biggest = left.abs().argmax(1, keepdim=True)  # (N, 1, 5): the move each vector moves most
    sign = torch.sign(left.gather(1, biggest))
    sign[sign == 0] = 1
    left, right = left * sign, right * sign.transpose(1, 2)
    return Decomposition(singular, left, right.reshape(n, MOVES, *shape),
                         jacobian[:, MOVES].double())


@register("jacobian_svd")
class JacobianSVD(Eval):
    """Per maze: singular values and top singular vectors of the Jacobian of the folded move
    log-probabilities (and the value gradient) w.r.t. the input and chosen layers; means over mazes."""

    kinds = ("ppo",)
    layer_fields = ("layers",)
    version = 2  # 2: t intervals over mazes

    @dataclass
    class Config(GradientConfig):
        """Mazes (mouse placement), layers, how many singular values to report (and singular vectors
        to draw, at most 5) and mazes to draw."""

        eval_name: ClassVar[str] = "jacobian_svd"
        examples: int = 2  # mazes whose singular vectors the PNG shows

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 1 <= self.top_k <= MOVES:
                raise ValueError(f"jacobian_svd.top_k must be 1 to {MOVES} (the moves), got {self.top_k}")
            if self.examples < 0:
                raise ValueError(f"jacobian_svd.examples must be >= 0, got {self.examples}")

    def run(self, ctx: EvalContext) -> Result:
        """Per-maze Jacobians and SVDs; means over mazes with t intervals; example PNG."""
        cfg, policy = self.config, ctx.policy
        env, _, x = maze_inputs(ctx, cfg.mazes, cfg.mouse, cfg.layers)
        parts = {name: decompose(jac) for name, jac in jacobians(policy, x, [INPUT, *cfg.layers]).items()}
        result = Result()
        for name, part in parts.items():
            label = short_name(name)
            for k in range(cfg.top_k):
                _add_mean(result, f"{label}/sigma{k + 1}", part.singular[:, k])
            _add_mean(result, f"{label}/top1_energy", part.top1_energy)
            _add_mean(result, f"{label}/effective_rank", part.effective_rank)
            _add_mean(result, f"{label}/value/sigma1", part.value_norm)
            _add_mean(result, f"{label}/value/top1_cosine", part.value_top1_cosine)
            if part.right.dim() != 5:
                continue  # a flat layer has no channels
            share = part.channel_share
            if name == INPUT:
                for channel, channel_name in enumerate(observation_channels(env.obs)):
                    _add_mean(result, f"input/channel_share/{channel_name}", share[:, channel])
            else:
                for channel in torch.argsort(share.mean(0), descending=True)[:cfg.top_k].tolist():
                    _add_mean(result, f"{label}/channel_share/c{channel}", share[:, channel],
                              note=f"one of the {cfg.top_k} largest mean shares on these mazes: leans high")
        if cfg.examples:
            result.artifacts.append(self._plot(ctx, x[:cfg.examples], parts))
        return result

    def _plot(self, ctx: EvalContext, x: torch.Tensor, parts: dict[str, Decomposition]) -> str:
        """One row per (example maze, target): the observation (input rows), the singular values,
        and the top singular vectors: the input's as an image (channels as RGB, 0 = grey), a
        layer's as the per-cell norm over channels."""
        k, names = self.config.top_k, list(parts)
        rows, cols = len(x) * len(names), 2 + k
        fig, axes = new_panels(rows * cols, size_inches=2.6, rows=rows)
        for example in range(len(x)):
            for offset, name in enumerate(names):
                part, row = parts[name], (example * len(names) + offset) * cols
                panels = axes[row:row + cols]
                if name == INPUT:
                    panels[0].imshow(x[example].permute(1, 2, 0).float().cpu().numpy().clip(0, 1),
                                     interpolation="nearest")
                    panels[0].set_title(f"maze {example}", fontsize=8)
                else:
                    panels[0].set_visible(False)
                singular = part.singular[example].cpu().numpy()
                panels[1].bar(np.arange(1, MOVES + 1), singular, color="C0", label="moves σ")
                panels[1].bar([MOVES + 1.5], [float(part.value_norm[example])], color="C1", label="‖∇V‖")
                panels[1].set_title(f"{short_name(name)}: singular values", fontsize=8)
                panels[1].legend(fontsize=6)
                for index in range(k):
                    self._vector(panels[2 + index], part, example, index, image=name == INPUT)
                for ax in (panels[0], *panels[2:]):
                    ax.set_xticks([])
                    ax.set_yticks([])
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("jacobian_svd.png"))

    @staticmethod
    def _vector(ax, part: Decomposition, example: int, index: int, image: bool) -> None:
        vector = part.right[example, index].cpu().numpy()
        move = FOLDED_ACTIONS[int(part.left[example, :, index].abs().argmax())]
        ax.set_title(f"v{index + 1} (σ={float(part.singular[example, index]):.3g}, ↑{move})", fontsize=8)
        if vector.ndim == 1:
            ax.plot(vector, lw=0.6)
        elif image and vector.shape[0] == 3:
            limit = float(np.abs(vector).max()) or 1.0
            ax.imshow((0.5 + 0.5 * vector / limit).transpose(1, 2, 0), interpolation="nearest")
        else:
            ax.imshow(np.sqrt((vector ** 2).sum(0)), cmap="magma", interpolation="nearest")


def _add_mean(result: Result, name: str, values: torch.Tensor, note: Optional[str] = None) -> None:
    """Mean over mazes with its t interval (NaN values, from zero Jacobians, left out)."""
    array = values.double().cpu().numpy()
    defined = array[~np.isnan(array)]
    if defined.size == 0:
        result.add(name, stats.undefined("every maze's Jacobian is zero here", len(array), "mazes"))
        return
    estimate = stats.mean(defined, unit="mazes")
    result.add(name, replace(estimate, note=estimate.note or note))
