"""Activation patching on clean/corrupted maze pairs: which layers and channels carry the cheese.

A pair is one seeded maze (the mouse at its decision square, or at the start) with the cheese at
its own square (clean) and moved to another open square of the same maze (corrupted) whose first
move from the mouse differs from the clean cheese's. The metric is the logit difference
``LD = F[towards clean cheese] − F[towards corrupted cheese]``, where F are the folded move
logits (logsumexp of each move's procgen action logits, so LD is the log-ratio of the two moves'
probabilities). The corrupted run is repeated with one layer's activation (or one channel of it)
replaced by the clean run's, and the normalised recovery

    (mean LD_patched − mean LD_corrupted) / (mean LD_clean − mean LD_corrupted)

is 1 when the patch restores the clean behaviour and 0 when it changes nothing (a ratio of means
over pairs, so pairs with a tiny clean − corrupted gap do not blow up). Pairs whose
|LD_clean − LD_corrupted| is below ``min_logit_gap`` are skipped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from envs import maze_state
from evals.context import EvalContext
from evals.maze_inputs import (cached_activations, check_layers, hook_points, interp_mazes, move_logits,
                               open_squares, short_name)
from evals.maze_interp_common import first_move, new_panels, policy_input, save_figure, train_env
from evals.registry import register
from evals.results import Result, write_json_atomic
from models.hooks import Channels, hooked, patch

DEFAULT_CHANNEL_LAYERS = tuple(f"embedder.block{b}.{point}" for b in (1, 2, 3)
                               for point in ("maxpool_out", "res1.resadd_out", "res2.resadd_out"))


def logit_difference(logits: torch.Tensor, towards_clean: torch.Tensor, towards_corrupted: torch.Tensor
                     ) -> torch.Tensor:
    """Per-pair folded-move logit difference F[towards_clean] − F[towards_corrupted] (float64)."""
    moves = move_logits(logits.double())
    rows = torch.arange(len(moves))
    return moves[rows, towards_clean] - moves[rows, towards_corrupted]


def patched_logits(model: nn.Module, target: torch.Tensor, layer: str, source: torch.Tensor,
                   channels: Channels = None) -> torch.Tensor:
    """Logits of ``model`` on ``target`` with ``layer`` (or its ``channels``) replaced by ``source``."""
    with torch.inference_mode(), hooked(model, edits={layer: patch(source, channels)}):
        out = model(target)
    return out[0] if isinstance(out, (tuple, list)) else out


def recovery(patched: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor) -> float:
    """(mean patched − mean corrupted) / (mean clean − mean corrupted) over pairs."""
    gap = float(clean.mean() - corrupted.mean())
    return float(patched.mean() - corrupted.mean()) / gap if gap != 0 else math.nan


@dataclass
class Pairs:
    """Clean and corrupted inputs with the two moves each pair compares."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    towards_clean: torch.Tensor  # (N,) folded move index
    towards_corrupted: torch.Tensor
    without_corruption: int  # mazes where no square gives a different first move


def make_pairs(policy: nn.Module, states: Sequence[bytes], obs: str, seed: int) -> Pairs:
    """Clean states and their cheese-moved corruptions (another open square whose first move from
    the mouse differs), as policy inputs."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    clean, corrupted, to_clean, to_corrupted, skipped = [], [], [], [], 0
    for state in states:
        inner = maze_state.inner_grid(state)
        mouse, cheese = maze_state.mouse_square(state), maze_state.cheese_square(state)
        move = first_move(inner, mouse, cheese)
        others = [(s, first_move(inner, mouse, s)) for s in open_squares(inner) if s not in (mouse, cheese)]
        others = [(s, m) for s, m in others if m != move]
        if not others:
            skipped += 1
            continue
        square, other_move = others[int(rng.integers(len(others)))]
        clean.append(state)
        corrupted.append(maze_state.with_cheese_at(state, square))
        to_clean.append(move)
        to_corrupted.append(other_move)
    return Pairs(policy_input(policy, clean, obs), policy_input(policy, corrupted, obs),
                 torch.tensor(to_clean), torch.tensor(to_corrupted), skipped)


@register("activation_patching")
class ActivationPatching:
    """Normalised logit-difference recovery when one layer or one channel of the corrupted run is
    patched with the clean run's activation."""

    kinds = ("ppo_maze",)

    @dataclass
    class Config:
        """Pairs, layers (None: every HookPoint) and the channel-by-channel layers."""

        pairs: int = 64
        mouse: str = "decision"  # decision (mazes with a decision square) or start
        layers: Optional[list[str]] = None
        channel_layers: list[str] = field(default_factory=lambda: list(DEFAULT_CHANNEL_LAYERS))
        min_logit_gap: float = 0.05
        top_channels: int = 5  # channels per channel layer reported as metrics (all go to patching.json)

        def __post_init__(self) -> None:
            if self.mouse not in ("decision", "start"):
                raise ValueError(f"activation_patching.mouse must be decision or start, got {self.mouse!r}")
            if self.min_logit_gap < 0:
                raise ValueError(f"activation_patching.min_logit_gap must be >= 0, got {self.min_logit_gap}")

    def __init__(self, config: "ActivationPatching.Config"):
        self.config = config

    def run(self, ctx: EvalContext) -> Result:
        """Build pairs, then patch every layer and every channel of the channel layers."""
        cfg, env, policy = self.config, train_env(ctx.train_config), ctx.policy
        layers = list(cfg.layers) if cfg.layers is not None else hook_points(policy)
        check_layers(policy, [*layers, *cfg.channel_layers])
        mazes = interp_mazes(env, ctx.count(cfg.pairs), ctx.seed, cfg.mouse)
        pairs = make_pairs(policy, [m.state for m in mazes], env.obs, ctx.seed)
        result = Result()
        result.add("mazes_without_corruption", pairs.without_corruption, n=len(mazes))
        wanted = list(dict.fromkeys([*layers, *cfg.channel_layers]))
        clean_logits, clean_acts = cached_activations(policy, pairs.clean, wanted)
        corrupted_logits, _ = cached_activations(policy, pairs.corrupted, [])
        moves = (pairs.towards_clean, pairs.towards_corrupted)
        clean_ld, corrupted_ld = logit_difference(clean_logits, *moves), logit_difference(corrupted_logits, *moves)
        keep = (clean_ld - corrupted_ld).abs() > cfg.min_logit_gap
        used = int(keep.sum())
        result.add("pairs_used", used, n=len(keep))
        result.add("pairs_skipped_small_gap", len(keep) - used, n=len(keep))
        if used == 0:
            return result
        x = pairs.corrupted[keep]
        moves = (pairs.towards_clean[keep], pairs.towards_corrupted[keep])
        clean_ld, corrupted_ld = clean_ld[keep], corrupted_ld[keep]
        result.add("clean_logit_diff", clean_ld.mean(), n=used)
        result.add("corrupted_logit_diff", corrupted_ld.mean(), n=used)

        def recovered(layer: str, channels: Channels = None) -> float:
            logits = patched_logits(policy, x, layer, clean_acts[layer][keep], channels)
            return recovery(logit_difference(logits, *moves), clean_ld, corrupted_ld)

        bar = tqdm(total=len(layers) + sum(clean_acts[layer].shape[1] for layer in cfg.channel_layers),
                   desc="activation_patching", disable=not ctx.progress)
        per_layer = {}
        for layer in layers:
            per_layer[layer] = recovered(layer)
            bar.update(1)
        for layer, value in per_layer.items():
            result.add(f"layer/{short_name(layer)}", value, n=used)
        per_channel = {}
        for layer in cfg.channel_layers:
            per_channel[layer] = []
            for channel in range(clean_acts[layer].shape[1]):
                per_channel[layer].append(recovered(layer, [channel]))
                bar.update(1)
        bar.close()
        for layer, values in per_channel.items():
            order = np.argsort(values)[::-1]
            result.add(f"channel/{short_name(layer)}/max", values[order[0]], n=used)
            for channel in order[:cfg.top_channels]:
                result.add(f"channel/{short_name(layer)}/c{channel}", values[channel], n=used)
        write_json_atomic(ctx.artifact("patching.json"), {"pairs_used": used, "layers": per_layer,
                                                          "channels": per_channel})
        result.artifacts += [ctx.artifact("patching.json"), self._plot(ctx, per_layer, per_channel, used)]
        return result

    @staticmethod
    def _plot(ctx: EvalContext, per_layer: dict[str, float], per_channel: dict[str, list[float]], used: int) -> str:
        """Per-layer bars and a channel-layers × channels heatmap of the recovery."""
        fig, (bars, heat) = new_panels(2, size_inches=6.0)
        names = [short_name(layer) for layer in per_layer]
        bars.bar(np.arange(len(names)), list(per_layer.values()), color="C0")
        bars.axhline(1.0, color="0.5", lw=0.8, ls="--")
        bars.set_xticks(np.arange(len(names)), names, rotation=75, ha="right", fontsize=6)
        bars.set_ylabel("logit-difference recovery")
        bars.set_title(f"whole-layer patching ({used} pairs)")
        width = max((len(v) for v in per_channel.values()), default=1)
        grid = np.full((len(per_channel), width), np.nan)
        for row, values in enumerate(per_channel.values()):
            grid[row, :len(values)] = values
        limit = max(float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0, 1e-6)
        image = heat.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        heat.set_yticks(np.arange(len(per_channel)), [short_name(layer) for layer in per_channel], fontsize=7)
        heat.set_xlabel("channel")
        heat.set_title("single-channel patching")
        fig.colorbar(image, ax=heat, shrink=0.8, label="recovery")
        fig.tight_layout()
        return save_figure(fig, ctx.artifact("activation_patching.png"))
