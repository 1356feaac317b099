"""Activation patching on clean/corrupted maze pairs: do the cheese channels, at the cheese's cells,
carry where the cheese is?

A pair is one seeded maze (the mouse at its decision square, or at the start) with the cheese at
its own square (clean) and moved to another open square of the same maze (corrupted) whose first
move from the mouse differs from the clean cheese's. The metric is the logit difference
``LD = F[towards clean cheese] − F[towards corrupted cheese]``, where F are the folded move
logits (logsumexp of each move's procgen action logits, so LD is the log-ratio of the two moves'
probabilities). The corrupted run is repeated with some activations replaced by the clean run's,
and the normalised recovery

    (mean LD_patched − mean LD_corrupted) / (mean LD_clean − mean LD_corrupted)

is 1 when the patch restores the clean behaviour and 0 when it changes nothing (a ratio of means
over pairs, so pairs with a tiny clean − corrupted gap do not blow up). Pairs whose
|LD_clean − LD_corrupted| is not above ``min_logit_gap`` are excluded and counted
(``pairs_used``, ``pairs_skipped_small_gap``); a recovery whose mean gap over the used pairs is
not above it either is undefined. Each recovery has a 95% percentile bootstrap interval over maze
pairs (one pair per maze: pairs resampled, the ratio recomputed).

The hypothesis is channel-level: at ``layer`` the cheese channels (``channels: auto``, the
default: the ``top_channels`` channels — unset, a tenth of the layer, at least one — the cheese
raises most on this checkpoint, by ``maze.common.cheese_channel_scores`` on ``channel_mazes``
seeded mazes that share no layout with the pairs' mazes; ``published``: the published scale-4
list; or a list) carry the cheese at the cheese's cells (the activation cells of the clean and
the corrupted cheese squares, and the cells within ``radius`` of them, Chebyshev distance).
Their number and share of the layer are ``cheese_channels/count`` and ``/fraction``. Metrics:

* ``recovery/cheese_channels/cheese_cells`` — the hypothesis;
* ``recovery/cheese_channels/all_cells`` and ``recovery/all_channels/cheese_cells`` — one of the
  two restrictions lifted;
* ``channel/LAYER/cK`` (and ``/max``) — each channel of ``channel_layers`` alone, at the cheese's
  cells; the reported channels are ranked on the same pairs (``/max`` re-chooses the best channel
  in every bootstrap resample), so they are exploratory;
* ``control/whole_layer/LAYER`` — every value of the layer patched. For a layer every path runs
  through (a ``resadd_out``, ``maxpool_out``, ``relu3_out``, ``relufc_out``) this hands the clean
  run over whole, so the recovery is 1 by construction: a check of the patching, never a finding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.envs import maze_state
from shardlab.evals.maze.common import (DEFAULT_LAYER, CheeseChannels, add_cheese_channel_rows, cell_of,
                                        check_channel_spec, first_move, new_panels, policy_input,
                                        resolve_cheese_channels, selection_states, train_env)
from shardlab.evals.maze.inputs import (cached_activations, check_layers, interp_mazes, move_logits, open_squares,
                                        short_name)
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result, write_json_atomic
from shardlab.figures import write_png_atomic
from shardlab.models.hooks import Channels, Edit, hooked, patch

Square = tuple[int, int]
UNIT = "maze pairs"
HYPOTHESIS = ("cheese_channels/cheese_cells", "cheese_channels/all_cells", "all_channels/cheese_cells")


def logit_difference(logits: torch.Tensor, towards_clean: torch.Tensor, towards_corrupted: torch.Tensor
                     ) -> torch.Tensor:
    """Per-pair folded-move logit difference F[towards_clean] − F[towards_corrupted] (float64)."""
    moves = move_logits(logits.double())
    rows = torch.arange(len(moves))
    return moves[rows, towards_clean] - moves[rows, towards_corrupted]


def patch_mask(shape: Sequence[int], channels: Optional[Sequence[int]], cells: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) bool: ``channels`` (all when None) at each input's ``cells`` ((N, H, W) bool)."""
    chosen = torch.zeros(shape[1], dtype=torch.bool)
    chosen[slice(None) if channels is None else list(channels)] = True
    return chosen[None, :, None, None] & cells[:, None].bool()


def masked_patch(source: torch.Tensor, mask: torch.Tensor) -> Edit:
    """Values where ``mask`` is True copied from ``source`` (same shape): per-input cells."""
    def edit(x: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.to(x.device), source.to(x.dtype), x)
    return edit


def patched_logits(model: nn.Module, target: torch.Tensor, layer: str, source: torch.Tensor,
                   channels: Channels = None, cells: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Logits of ``model`` on ``target`` with ``layer`` (its ``channels``; at each input's ``cells``,
    an (N, H, W) bool mask, when given) replaced by ``source``."""
    if cells is None:
        edit = patch(source, channels)
    else:
        listed = None if channels is None else [int(c) for c in np.atleast_1d(channels)]
        edit = masked_patch(source, patch_mask(source.shape, listed, cells))
    with torch.inference_mode(), hooked(model, edits={layer: edit}):
        out = model(target)
    return out[0] if isinstance(out, (tuple, list)) else out


def _array(values: Any) -> np.ndarray:
    """float64 numpy values of a tensor (on any device) or array."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return np.asarray(values, dtype=float)


def recovery(patched: Any, clean: Any, corrupted: Any) -> float:
    """(mean patched − mean corrupted) / (mean clean − mean corrupted) over pairs (NaN for a zero gap)."""
    patched, clean, corrupted = _array(patched), _array(clean), _array(corrupted)
    gap = clean.mean() - corrupted.mean()
    return float((patched.mean() - corrupted.mean()) / gap) if gap != 0 else math.nan


def _small_gap(clean: np.ndarray, corrupted: np.ndarray, min_gap: float) -> Optional[stats.Estimate]:
    """An undefined estimate when there are no pairs or their mean gap is too small to divide by, else None."""
    if clean.size == 0:
        return stats.undefined(f"no maze pair has |LD_clean − LD_corrupted| above min_logit_gap={min_gap:g}", 0, UNIT)
    gap = float(clean.mean() - corrupted.mean())
    if not abs(gap) > min_gap:
        return stats.undefined(f"mean LD_clean − LD_corrupted over the pairs is {gap:.3g}, not above "
                               f"min_logit_gap={min_gap:g}: too small to normalise by", clean.size, UNIT)
    return None


def recovery_estimate(patched: Any, clean: Any, corrupted: Any, min_gap: float = 0.0) -> stats.Estimate:
    """:func:`recovery` with a percentile bootstrap interval over maze pairs: a ratio of means, so
    whole pairs are resampled and the ratio recomputed."""
    patched, clean, corrupted = _array(patched), _array(clean), _array(corrupted)
    problem = _small_gap(clean, corrupted, min_gap)
    if problem is not None:
        return problem
    return stats.bootstrap(lambda index: recovery(patched[index], clean[index], corrupted[index]), clean.size, UNIT)


def best_channel_estimate(patched: np.ndarray, clean: Any, corrupted: Any, min_gap: float = 0.0) -> stats.Estimate:
    """The largest recovery among the rows of ``patched`` (channels × pairs), the best channel
    chosen again in every bootstrap resample of the pairs."""
    clean, corrupted = _array(clean), _array(corrupted)
    problem = _small_gap(clean, corrupted, min_gap)
    if problem is not None:
        return problem

    def best(index: np.ndarray) -> float:
        gap = clean[index].mean() - corrupted[index].mean()
        return float(((patched[:, index].mean(1) - corrupted[index].mean()) / gap).max()) if gap != 0 else math.nan

    estimate = stats.bootstrap(best, clean.size, UNIT)
    return replace(estimate, note=estimate.note or f"best of {len(patched)} channels on these pairs: biased upward")


@dataclass
class Pairs:
    """Clean and corrupted inputs with the two moves each pair compares, and where the two cheeses are."""

    clean: torch.Tensor
    corrupted: torch.Tensor
    towards_clean: torch.Tensor  # (N,) folded move index
    towards_corrupted: torch.Tensor
    without_corruption: int  # mazes where no square gives a different first move
    clean_states: list[bytes] = field(default_factory=list)
    corrupted_cheese: list[Square] = field(default_factory=list)  # the corrupted run's cheese square

    def subset(self, keep: torch.Tensor) -> "Pairs":
        """The pairs where the bool mask ``keep`` is True."""
        index = keep.nonzero().flatten().tolist()
        return Pairs(self.clean[keep], self.corrupted[keep], self.towards_clean[keep], self.towards_corrupted[keep],
                     self.without_corruption, [self.clean_states[i] for i in index],
                     [self.corrupted_cheese[i] for i in index])


def make_pairs(policy: nn.Module, states: Sequence[bytes], obs: str, seed: int) -> Pairs:
    """Clean states and their cheese-moved corruptions (another open square whose first move from
    the mouse differs), as policy inputs."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    clean, corrupted, to_clean, to_corrupted, squares, skipped = [], [], [], [], [], 0
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
        squares.append(square)
    return Pairs(policy_input(policy, clean, obs), policy_input(policy, corrupted, obs),
                 torch.tensor(to_clean), torch.tensor(to_corrupted), skipped, clean, squares)


def cheese_cells(pairs: Pairs, obs: str, side: int, radius: int) -> torch.Tensor:
    """(N, side, side) bool: the activation cells of each pair's clean and corrupted cheese squares
    and the cells within ``radius`` of them (Chebyshev distance)."""
    mask = torch.zeros(len(pairs.clean_states), side, side, dtype=torch.bool)
    for index, (state, moved) in enumerate(zip(pairs.clean_states, pairs.corrupted_cheese)):
        for square in (maze_state.cheese_square(state), moved):
            row, col = cell_of(state, square, obs, side)
            mask[index, max(0, row - radius):row + radius + 1, max(0, col - radius):col + radius + 1] = True
    return mask


class Patcher:
    """Recovery of patches of the clean run's activations (at ``layers``) into the corrupted run."""

    def __init__(self, model: nn.Module, pairs: Pairs, obs: str, layers: Sequence[str]):
        self.model, self.pairs, self.obs = model, pairs, obs
        clean_logits, self.clean_acts = cached_activations(model, pairs.clean, list(dict.fromkeys(layers)))
        corrupted_logits, _ = cached_activations(model, pairs.corrupted, [])
        self.moves = (pairs.towards_clean, pairs.towards_corrupted)
        self.clean_ld = logit_difference(clean_logits, *self.moves)
        self.corrupted_ld = logit_difference(corrupted_logits, *self.moves)

    def cells(self, layer: str, radius: int) -> torch.Tensor:
        """The pairs' cheese cells (see :func:`cheese_cells`) at ``layer``; ValueError for a flat layer."""
        activation = self.clean_acts[layer]
        if activation.dim() != 4:
            raise ValueError(f"activation_patching: {layer} has no cells (shape {tuple(activation.shape[1:])}); "
                             "choose a convolutional layer")
        return cheese_cells(self.pairs, self.obs, activation.shape[-1], radius)

    def patched_ld(self, layer: str, channels: Optional[Sequence[int]] = None, radius: Optional[int] = None
                   ) -> torch.Tensor:
        """Per-pair LD with ``layer`` (its ``channels``; at the cheese cells within ``radius``
        unless None: every cell) patched from the clean run."""
        cells = None if radius is None else self.cells(layer, radius)
        logits = patched_logits(self.model, self.pairs.corrupted, layer, self.clean_acts[layer], channels, cells)
        return logit_difference(logits, *self.moves)

    def recovery(self, layer: str, channels: Optional[Sequence[int]] = None, radius: Optional[int] = None) -> float:
        """Recovery of :meth:`patched_ld`."""
        return recovery(self.patched_ld(layer, channels, radius), self.clean_ld, self.corrupted_ld)

    def estimate(self, patched_ld: Any, min_gap: float = 0.0) -> stats.Estimate:
        """Recovery of per-pair ``patched_ld`` with its bootstrap interval over the pairs."""
        return recovery_estimate(patched_ld, self.clean_ld, self.corrupted_ld, min_gap)

    def hypothesis_lds(self, layer: str, channels: Sequence[int], radius: int) -> dict[str, torch.Tensor]:
        """Per-pair LD of the cheese-channel hypothesis and of the two patches that lift one of its restrictions."""
        return dict(zip(HYPOTHESIS, (self.patched_ld(layer, channels, radius), self.patched_ld(layer, channels),
                                     self.patched_ld(layer, None, radius))))

    def hypothesis(self, layer: str, channels: Sequence[int], radius: int) -> dict[str, float]:
        """Recoveries of :meth:`hypothesis_lds`."""
        return {name: recovery(ld, self.clean_ld, self.corrupted_ld)
                for name, ld in self.hypothesis_lds(layer, channels, radius).items()}


@register("activation_patching")
class ActivationPatching(Eval):
    """Logit-difference recovery when the cheese channels at the cheese's cells of the corrupted
    run are patched with the clean run's (whole-layer patches only as controls)."""

    kinds = ("ppo",)
    layer_fields = ("layer", "layers", "channel_layers")
    version = 2  # 2: a tenth of the layer by default, selection mazes apart from the pairs, bootstrap intervals

    @dataclass
    class Config:
        """Pairs, the hypothesis (layer, cheese channels, cells) and the control and sweep layers."""

        pairs: int = 64
        mouse: str = "decision"  # decision (mazes with a decision square) or start
        layer: str = DEFAULT_LAYER  # where the cheese-channel hypothesis is tested
        channels: Any = "auto"  # auto (chosen on the checkpoint), published (128-channel layers) or [c, ...]
        top_channels: Optional[int] = None  # how many channels auto chooses (None: max(1, ⌊10% of the layer⌋))
        channel_mazes: int = 64  # seeded mazes auto scores the channels on (less any sharing a pair's layout)
        radius: int = 0  # cells within this distance of the two cheese cells are patched too
        layers: Optional[list[str]] = None  # whole-layer controls (None: layer)
        channel_layers: Optional[list[str]] = None  # every channel alone at the cheese cells (None: layer)
        min_logit_gap: float = 0.05
        report_channels: int = 5  # top sweep channels per channel layer reported as metrics (all in patching.json)

        def __post_init__(self) -> None:
            if self.mouse not in ("decision", "start"):
                raise ValueError(f"activation_patching.mouse must be decision or start, got {self.mouse!r}")
            if self.min_logit_gap < 0:
                raise ValueError(f"activation_patching.min_logit_gap must be >= 0, got {self.min_logit_gap}")
            check_channel_spec(self.channels, "activation_patching.channels")
            top = 1 if self.top_channels is None else self.top_channels
            if min(self.pairs, top, self.channel_mazes) < 1 or self.radius < 0:
                raise ValueError("activation_patching pairs, top_channels and channel_mazes must be >= 1 "
                                 f"and radius >= 0; got {self.pairs}, {self.top_channels}, {self.channel_mazes}, "
                                 f"{self.radius}")

    def __init__(self, config: "ActivationPatching.Config"):
        if config.report_channels < 0:
            raise ValueError(f"activation_patching.report_channels must be >= 0, got {config.report_channels}")
        self.config = config

    def check_model(self, policy, train_config) -> None:
        """Refuse before anything runs when the network lacks a named layer or channel."""
        from shardlab.evals.maze.common import require_channels

        cfg = self.config
        super().check_model(policy, train_config)
        require_channels(policy, train_config, "activation_patching.channels", cfg.channels, cfg.layer)

    def cheese_channels(self, ctx: EvalContext, measured: Sequence[bytes]) -> CheeseChannels:
        """The cheese channels of ``layer``, chosen (for ``auto``) on mazes sharing no layout with ``measured``."""
        cfg, env = self.config, train_env(ctx.train_config)
        states, excluded = selection_states(env, cfg.channels, ctx.count(cfg.channel_mazes), ctx.seed + 1, measured)
        return resolve_cheese_channels(ctx.policy, cfg.channels, cfg.layer, env.obs, states, cfg.top_channels,
                                       excluded)

    def run(self, ctx: EvalContext) -> Result:
        """Build pairs, choose the cheese channels apart from them, patch the hypothesis, the sweep and the controls."""
        cfg, env, policy = self.config, train_env(ctx.train_config), ctx.policy
        controls = list(cfg.layers) if cfg.layers is not None else [cfg.layer]
        channel_layers = list(cfg.channel_layers) if cfg.channel_layers is not None else [cfg.layer]
        check_layers(policy, [cfg.layer, *controls, *channel_layers])
        mazes = interp_mazes(env, ctx.count(cfg.pairs), ctx.seed, cfg.mouse)
        chosen = self.cheese_channels(ctx, [m.state for m in mazes])
        result = Result()
        add_cheese_channel_rows(result, chosen)
        pairs = make_pairs(policy, [m.state for m in mazes], env.obs, ctx.seed)
        result.add("mazes_without_corruption", pairs.without_corruption, kind="count")
        clean_logits, _ = cached_activations(policy, pairs.clean, [])
        corrupted_logits, _ = cached_activations(policy, pairs.corrupted, [])
        moves = (pairs.towards_clean, pairs.towards_corrupted)
        gap = logit_difference(clean_logits, *moves) - logit_difference(corrupted_logits, *moves)
        keep = (gap.abs() > cfg.min_logit_gap).cpu()
        used = int(keep.sum())
        result.add("pairs_used", used, kind="count")
        result.add("pairs_skipped_small_gap", len(keep) - used, kind="count")
        if used == 0:
            for name in HYPOTHESIS:
                result.add(f"recovery/{name}", recovery_estimate([], [], [], cfg.min_logit_gap), higher_is_better=True)
            return result
        patcher = Patcher(policy, pairs.subset(keep), env.obs, [cfg.layer, *controls, *channel_layers])
        result.add("clean_logit_diff", stats.mean(_array(patcher.clean_ld), UNIT))
        result.add("corrupted_logit_diff", stats.mean(_array(patcher.corrupted_ld), UNIT))
        hypothesis = {name: patcher.estimate(ld, cfg.min_logit_gap)
                      for name, ld in patcher.hypothesis_lds(cfg.layer, chosen.channels, cfg.radius).items()}
        for name, estimate in hypothesis.items():
            result.add(f"recovery/{name}", estimate, higher_is_better=True)
        bar = tqdm(total=len(controls) + sum(patcher.clean_acts[layer].shape[1] for layer in channel_layers),
                   desc="activation_patching", disable=not ctx.progress, **progress_kwargs())
        whole = {}
        for layer in controls:
            whole[layer] = patcher.estimate(patcher.patched_ld(layer), cfg.min_logit_gap)
            result.add(f"control/whole_layer/{short_name(layer)}", whole[layer])
            bar.update(1)
        sweeps = {}
        for layer in channel_layers:
            rows = []
            for channel in range(patcher.clean_acts[layer].shape[1]):
                rows.append(_array(patcher.patched_ld(layer, [channel], cfg.radius)))
                bar.update(1)
            sweeps[layer] = np.stack(rows)
        bar.close()
        per_channel = {layer: [recovery(ld, patcher.clean_ld, patcher.corrupted_ld) for ld in lds]
                       for layer, lds in sweeps.items()}
        self._add_sweep(result, patcher, sweeps, per_channel)
        write_json_atomic(ctx.artifact("patching.json"), {
            "pairs_used": used, "layer": cfg.layer, "cheese_channels": chosen.channels, "radius": cfg.radius,
            "recovery": {name: stats.as_row(estimate) for name, estimate in hypothesis.items()},
            "channels_at_cheese_cells": per_channel,
            "control_whole_layer": {"note": "recovery 1 by construction for a layer every path runs through",
                                    "recovery": {layer: stats.as_row(e) for layer, e in whole.items()}}})
        result.artifacts += [ctx.artifact("patching.json"),
                             self._plot(ctx, hypothesis, whole, per_channel, chosen.channels, used)]
        return result

    def _add_sweep(self, result: Result, patcher: Patcher, sweeps: dict[str, np.ndarray],
                   per_channel: dict[str, list[float]]) -> None:
        """Each channel layer's best single-channel recovery and its top ``report_channels`` channels
        (ranked on the same pairs, so exploratory: the note says so)."""
        cfg = self.config
        for layer, values in per_channel.items():
            name = short_name(layer)
            result.add(f"channel/{name}/max",
                       best_channel_estimate(sweeps[layer], patcher.clean_ld, patcher.corrupted_ld, cfg.min_logit_gap))
            order = np.argsort(np.nan_to_num(values, nan=-np.inf), kind="stable")[::-1]
            for rank, channel in enumerate(order[:cfg.report_channels]):
                estimate = patcher.estimate(sweeps[layer][channel], cfg.min_logit_gap)
                note = estimate.note or f"rank {rank} of {len(values)} channels on these pairs: biased upward"
                result.add(f"channel/{name}/c{channel}", replace(estimate, note=note))

    def _plot(self, ctx: EvalContext, hypothesis: dict[str, stats.Estimate], whole: dict[str, stats.Estimate],
              per_channel: dict[str, list[float]], channels: list[int], used: int) -> str:
        """Bars (95% bootstrap intervals) for the hypothesis patches (controls in grey) and a
        channel-layers × channels heatmap."""
        fig, (bars, heat) = new_panels(2, size_inches=6.0)
        names = list(hypothesis) + [f"control: whole {short_name(layer)}" for layer in whole]
        colours = ["C0"] * len(hypothesis) + ["0.6"] * len(whole)
        estimates = [*hypothesis.values(), *whole.values()]
        values = np.array([e.value for e in estimates])
        low = np.array([e.value if e.ci_low is None else e.ci_low for e in estimates])
        high = np.array([e.value if e.ci_high is None else e.ci_high for e in estimates])
        # a percentile interval need not contain its point: clip the bar ends at zero length
        errors = np.nan_to_num(np.stack([np.maximum(values - low, 0), np.maximum(high - values, 0)]))
        bars.bar(np.arange(len(names)), values, yerr=errors, capsize=3, color=colours)
        bars.axhline(1.0, color="0.5", lw=0.8, ls="--")
        bars.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=7)
        bars.set_ylabel("logit-difference recovery (95% bootstrap interval)")
        bars.set_title(f"cheese channels {channels} of {short_name(self.config.layer)}, radius {self.config.radius} "
                       f"({used} pairs)", fontsize=8)
        width = max((len(v) for v in per_channel.values()), default=1)
        grid = np.full((len(per_channel), width), np.nan)
        for row, values in enumerate(per_channel.values()):
            grid[row, :len(values)] = values
        limit = max(float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0, 1e-6)
        image = heat.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        heat.set_yticks(np.arange(len(per_channel)), [short_name(layer) for layer in per_channel], fontsize=7)
        heat.set_xlabel("channel (patched alone at the cheese cells)")
        heat.set_title("single-channel patching")
        fig.colorbar(image, ax=heat, shrink=0.8, label="recovery")
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("activation_patching.png"))
