"""Causal scrubbing of maze policies: does an activation depend only on the features a hypothesis
names (cheese location, mouse location, maze layout)?

A hypothesis is a list of scrubs, each an activation (layer, optionally some channels and cells)
and the input features it is claimed to depend on. For each original input, every scrub's
activation is replaced by the same activation computed on another input that agrees on those
features and on nothing else by design (a different maze of the same size with the cheese moved to
the same square, the mouse moved to the same square, or the same maze with the cheese and mouse
elsewhere — built with ``envs.maze_state`` edits); the rest of the network runs on the original
input. Source activations come from plain forward passes of the resampled inputs (scrubs at
different layers do not feed each other). The random baseline resamples the same activations from
inputs that differ in the named features.

The default hypotheses are channel-level, at ``layer``: a scrub's ``channels`` may be ``cheese``
(the cheese channels: ``channels: auto`` chooses the ``top_channels`` channels — unset, a tenth
of the layer, at least one — the cheese raises most on this checkpoint by
``maze.common.cheese_channel_scores``, on ``channel_mazes`` seeded mazes sharing no layout with
the scrubbed inputs' mazes; ``published`` the published scale-4 list; or a list) or ``other``
(the rest of the layer). Scrubbing a whole layer
that every path runs through only measures how the behaviour depends on the features, not a
mechanism, so it is reported as a control: ``control/whole_layer/all_features`` resamples from the
input itself (loss recovered 1 by construction) and ``control/whole_layer/cheese_location`` is
the behaviour's dependence on the cheese square alone.

Losses, per input, against the original policy π(·|x):

* ``kl`` — KL(π(·|x) ‖ π_scrubbed(·|x)) over the 15 actions; the original's loss is 0. Every
  per-input change is ≥ 0 here, so cancellation cannot happen and
  |E[L] − E[L_scrubbed]| = E[|L − L_scrubbed|];
* ``nll`` — −log P_scrubbed(m*|x), P the folded move probabilities (left, down, up, right, noop)
  and m* the original policy's most likely folded move (not the raw 15-way argmax, which favours
  up and down, whose probability sits on one action each); the original's loss is −log P(m*|x).
  A scrub can lower it on some inputs and raise it on others, so the mean can hide changes:
  compare |E[L] − E[L_scrubbed]| with E[|L − L_scrubbed|] and the worst increase.

Loss recovered = (E[L_scrubbed] − E[L_random]) / (E[L_original] − E[L_random]): 1 when the
hypothesis explains the behaviour, 0 when scrubbing is as bad as resampling at random. Inputs
whose |L_original − L_random| is not above ``min_loss_gap`` say nothing about it; they are
excluded from every row of that loss and counted (``LOSS/inputs_used``,
``LOSS/inputs_skipped_small_gap``), and loss recovered is undefined when the mean gap over the
rest is not above it either. Each input is one of ``resamples`` draws on one maze, so every
estimate's 95% interval is a bootstrap over mazes (whole mazes resampled; ``n`` counts mazes);
``worst_increase``, the largest per-input increase seen, is a property of the sample (no interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.envs import maze_state
from shardlab.evals.maze.common import (DEFAULT_LAYER, add_cheese_channel_rows, check_channel_spec, new_panels,
                                        policy_input, resolve_cheese_channels, selection_states, train_env)
from shardlab.evals.maze.inputs import (action_kl, cached_activations, check_layers, check_mouse_placement,
                                        interp_mazes, move_logits, random_square, short_name)
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register, require_layers
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic
from shardlab.models.hooks import Edit, compose, hooked, patch

FEATURES = ("cheese_location", "mouse_location", "maze_layout")
LOSSES = ("kl", "nll")
CHANNEL_GROUPS = ("cheese", "other")  # a scrub's channels by name: the cheese channels or the rest
UNIT = "mazes"


@dataclass
class Scrub:
    """One scrubbed activation: a layer (all channels and cells unless named) and the input
    features it is hypothesised to depend on. ``channels`` is a list, ``cheese`` (the eval's
    cheese channels at this layer) or ``other`` (the layer's remaining channels)."""

    layer: str
    features: list[str]
    channels: Any = None
    cells: Optional[list[list[int]]] = None  # [[row, col], ...]


def default_hypotheses(layer: str) -> dict[str, list[Scrub]]:
    """Channel-level hypotheses at ``layer``: the cheese channels depend only on the cheese (and the
    layout), the other channels only on the layout and the mouse, and both together."""
    cheese = Scrub(layer, ["cheese_location"], channels="cheese")
    other = Scrub(layer, ["maze_layout", "mouse_location"], channels="other")
    return {"cheese_channels": [cheese],
            "cheese_channels_and_layout": [Scrub(layer, ["cheese_location", "maze_layout"], channels="cheese")],
            "other_channels": [other],
            "cheese_and_other_channels": [cheese, other]}


def control_hypotheses(layer: str) -> dict[str, list[Scrub]]:
    """Whole-layer scrubs, reported as controls: every path runs through ``layer``, so resampling
    it all from an input agreeing on every feature (the input itself) recovers 1 by construction,
    and resampling it from an input with the same cheese square measures the behaviour, not a mechanism."""
    return {"control/whole_layer/all_features": [Scrub(layer, list(FEATURES))],
            "control/whole_layer/cheese_location": [Scrub(layer, ["cheese_location"])]}


def resolve_channels(scrub: Scrub, cheese: Sequence[int], channel_count: int) -> Scrub:
    """``scrub`` with ``cheese``/``other`` replaced by channel lists (``cheese`` the cheese channels
    at its layer, which has ``channel_count`` channels)."""
    if scrub.channels == "cheese":
        channels: Optional[list[int]] = list(cheese)
    elif scrub.channels == "other":
        channels = [c for c in range(channel_count) if c not in set(cheese)]
    else:
        return scrub
    return Scrub(scrub.layer, list(scrub.features), channels, scrub.cells)


# -- resampling inputs -------------------------------------------------------------------------------
class MazePool:
    """The original inputs, with each one's maze size, walls, cheese and mouse read once."""

    def __init__(self, states: Sequence[bytes]):
        self.states = list(states)
        self.inner = [maze_state.inner_grid(state) for state in self.states]
        self.walls = [inner == maze_state.WALL for inner in self.inner]
        self.cheese = [maze_state.cheese_square(state) for state in self.states]
        self.mouse = [maze_state.mouse_square(state) for state in self.states]

    def resample(self, index: int, agree: set[str], differ: set[str], rng: np.random.Generator
                 ) -> Optional[bytes]:
        """A state that matches input ``index`` in the ``agree`` features and differs from it in
        the ``differ`` features; other features are drawn at random. A different maze is another
        pool maze of the same size (so squares line up in the observation). None if none fits."""
        walls, cheese, mouse = self.walls[index], self.cheese[index], self.mouse[index]
        need = [square for feature, square in (("cheese_location", cheese), ("mouse_location", mouse))
                if feature in agree]
        if "maze_layout" in agree:
            base = index
        else:
            candidates = [other for other, other_walls in enumerate(self.walls)
                          if other != index and other_walls.shape == walls.shape
                          and not ("maze_layout" in differ and np.array_equal(other_walls, walls))
                          and not any(other_walls[y, x] for x, y in need)]
            if not candidates:
                return None
            base = candidates[int(rng.integers(len(candidates)))]
        inner = self.inner[base]
        new_cheese = cheese if "cheese_location" in agree else None
        new_mouse = mouse if "mouse_location" in agree else None
        if new_cheese is None:
            new_cheese = random_square(inner, rng, [new_mouse, cheese if "cheese_location" in differ else None])
        if new_mouse is None:
            new_mouse = random_square(inner, rng, [new_cheese, mouse if "mouse_location" in differ else None])
        if new_cheese is None or new_mouse is None or new_cheese == new_mouse:
            return None
        return maze_state.with_mouse_at(maze_state.with_cheese_at(self.states[base], new_cheese), new_mouse)


# -- scrubbed forward passes and losses --------------------------------------------------------------
def scrubbed_logits(model: nn.Module, x: torch.Tensor, scrubs: Sequence[tuple[Scrub, torch.Tensor]]) -> torch.Tensor:
    """Logits on ``x`` with each scrub's activation taken from its source input's forward pass."""
    edits: dict[str, list[Edit]] = {}
    for scrub, source_x in scrubs:
        _, acts = cached_activations(model, source_x, [scrub.layer])
        cells = [tuple(cell) for cell in scrub.cells] if scrub.cells is not None else None
        edits.setdefault(scrub.layer, []).append(patch(acts[scrub.layer], scrub.channels, cells))
    with torch.inference_mode(), hooked(model, edits={k: compose(*v) for k, v in edits.items()}):
        out = model(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def folded_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(N, 5) log folded move probabilities (left, down, up, right, noop), float64."""
    return move_logits(torch.log_softmax(logits.double(), -1))


def per_input_loss(original_logits: torch.Tensor, logits: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-input loss of ``logits`` against the original policy (``kl`` or ``nll``, see the module doc)."""
    if loss == "kl":
        return action_kl(original_logits, logits)
    if loss == "nll":
        greedy = folded_log_probs(original_logits).argmax(-1)
        return -folded_log_probs(logits).gather(-1, greedy[:, None]).squeeze(-1)
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")


def loss_recovered(original: Any, scrubbed: Any, random: Any) -> float:
    """(E[scrubbed] − E[random]) / (E[original] − E[random]); NaN when random equals original."""
    original, scrubbed, random = (np.asarray(x, dtype=float) for x in (original, scrubbed, random))
    gap = original.mean() - random.mean()
    return float((scrubbed.mean() - random.mean()) / gap) if gap != 0 else math.nan


def _recovered_from_means(means: np.ndarray) -> np.ndarray:
    """:func:`loss_recovered` of rows of (E[original], E[scrubbed], E[random]) means."""
    original, scrubbed, random = means.T
    gap = original - random
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap != 0, (scrubbed - random) / np.where(gap != 0, gap, 1.0), math.nan)


def per_input_losses(original_logits: torch.Tensor, scrubbed: torch.Tensor, random: torch.Tensor
                     ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{LOSS: (L_original, L_scrubbed, L_random)} per input, float64, for both losses."""
    def values(logits: torch.Tensor, loss: str) -> np.ndarray:
        return per_input_loss(original_logits, logits, loss).detach().cpu().numpy().astype(float)

    return {loss: (values(original_logits, loss), values(scrubbed, loss), values(random, loss)) for loss in LOSSES}


def loss_estimates(original: np.ndarray, scrubbed: np.ndarray, random: np.ndarray, mazes: np.ndarray,
                   min_gap: float = 0.0) -> dict[str, stats.Estimate]:
    """Loss recovered, the mean original, scrubbed and random losses, |E[L] − E[L_s]| and
    E[|L − L_s|] over the given inputs, each with a bootstrap interval over ``mazes`` (each input's
    maze); loss recovered is undefined when |E[L] − E[L_random]| is not above ``min_gap``."""
    if original.size == 0:
        reason = f"no input has |L_original − L_random| above min_loss_gap={min_gap:g}"
        return {key: stats.undefined(reason, 0, UNIT) for key in
                ("loss_recovered", "original", "scrubbed", "random", "abs_mean_change", "mean_abs_change")}
    change = scrubbed - original
    gap = float(original.mean() - random.mean())
    if abs(gap) > min_gap:
        recovered = stats.cluster_bootstrap_means(np.stack([original, scrubbed, random], 1), mazes, UNIT,
                                                  _recovered_from_means)
    else:
        recovered = stats.undefined(f"E[L_original] − E[L_random] is {gap:.3g}, not above min_loss_gap={min_gap:g}: "
                                    "too small to normalise by", len(np.unique(mazes)), UNIT)
    return {"loss_recovered": recovered,
            "original": stats.cluster_mean(original, mazes, UNIT),
            "scrubbed": stats.cluster_mean(scrubbed, mazes, UNIT),
            "random": stats.cluster_mean(random, mazes, UNIT),
            "abs_mean_change": stats.cluster_bootstrap_means(change[:, None], mazes, UNIT,
                                                             lambda means: np.abs(means[:, 0])),
            "mean_abs_change": stats.cluster_mean(np.abs(change), mazes, UNIT)}


def add_loss_rows(result: Result, prefix: str, losses: tuple[np.ndarray, np.ndarray, np.ndarray],
                  mazes: np.ndarray, min_gap: float) -> tuple[stats.Estimate, np.ndarray]:
    """One loss's rows under ``prefix``: the inputs used and skipped for a small gap (counts),
    :func:`loss_estimates` over the used ones and ``worst_increase`` (data); returns loss
    recovered and the used inputs' L_scrubbed − L_original."""
    original, scrubbed, random = losses
    keep = np.abs(original - random) > min_gap
    result.add(f"{prefix}/inputs_used", int(keep.sum()), kind="count")
    result.add(f"{prefix}/inputs_skipped_small_gap", int((~keep).sum()), kind="count")
    estimates = loss_estimates(original[keep], scrubbed[keep], random[keep], mazes[keep], min_gap)
    for key, estimate in estimates.items():
        better = {"loss_recovered": True, "scrubbed": False}.get(key)
        result.add(f"{prefix}/{key}", estimate, higher_is_better=better)
    change = scrubbed[keep] - original[keep]
    if change.size:
        result.add(f"{prefix}/worst_increase", float(change.max()), kind="data")
    return estimates["loss_recovered"], change


@register("causal_scrubbing")
class CausalScrubbing(Eval):
    """Loss recovered by channel-level hypotheses about which input features activations depend on
    (whole-layer scrubs only as controls)."""

    kinds = ("ppo",)
    layer_fields = ("layer",)
    version = 2  # 2: a tenth of the layer by default, selection mazes apart from the inputs, intervals over mazes

    @dataclass
    class Config:
        """Inputs, the cheese channels and hypotheses (name → scrubs); an empty ``hypotheses`` runs
        the channel-level defaults at ``layer`` (:func:`default_hypotheses`)."""

        inputs: int = 64
        resamples: int = 2  # source draws per input
        mouse: str = "random"  # where the original inputs put the mouse: start, decision or random
        layer: str = DEFAULT_LAYER  # of the default hypotheses and the whole-layer controls
        channels: Any = "auto"  # the cheese channels: auto (chosen on the checkpoint), published or [c, ...]
        top_channels: Optional[int] = None  # how many channels auto chooses (None: max(1, ⌊10% of the layer⌋))
        channel_mazes: int = 64  # seeded mazes auto scores the channels on (less any sharing an input's layout)
        min_loss_gap: float = 0.0  # inputs with |L_original − L_random| not above this are excluded and counted
        controls: bool = True  # also scrub the whole layer (control/whole_layer/...)
        hypotheses: dict[str, list[Scrub]] = field(default_factory=dict)

        def __post_init__(self) -> None:
            check_mouse_placement(self.mouse)
            check_channel_spec(self.channels, "causal_scrubbing.channels")
            top = 1 if self.top_channels is None else self.top_channels
            if self.resamples < 1 or self.inputs < 2 or top < 1 or self.channel_mazes < 1:
                raise ValueError("causal_scrubbing needs inputs >= 2 and resamples, top_channels, channel_mazes >= 1")
            if self.min_loss_gap < 0:
                raise ValueError(f"causal_scrubbing.min_loss_gap must be >= 0, got {self.min_loss_gap}")
            for name, scrubs in self.hypotheses.items():
                if not scrubs:
                    raise ValueError(f"causal_scrubbing hypothesis {name!r} has no scrubs")
                if name.startswith("control/"):
                    raise ValueError(f"causal_scrubbing hypothesis {name!r}: names starting control/ are the controls'")
                for scrub in scrubs:
                    unknown = [f for f in scrub.features if f not in FEATURES]
                    if unknown or not scrub.features:
                        raise ValueError(f"causal_scrubbing hypothesis {name!r}: features must be some of "
                                         f"{', '.join(FEATURES)}; got {list(scrub.features)}")
                    if scrub.cells is not None and any(len(cell) != 2 for cell in scrub.cells):
                        raise ValueError(f"causal_scrubbing hypothesis {name!r}: cells are [row, col] pairs")
                    if scrub.channels is not None and scrub.channels not in CHANNEL_GROUPS:
                        check_channel_spec(scrub.channels, f"causal_scrubbing hypothesis {name!r} channels "
                                                           "(cheese, other or a list)")

    def check_model(self, policy, train_config) -> None:
        """Refuse before anything runs when the network lacks a named layer or channel."""
        from shardlab.evals.maze.common import require_channels

        cfg = self.config
        super().check_model(policy, train_config)
        for name, scrubs in cfg.hypotheses.items():
            require_layers(policy, {f"causal_scrubbing hypothesis {name!r} layer": [s.layer for s in scrubs]})
            for scrub in scrubs:
                if isinstance(scrub.channels, (list, tuple)):
                    require_channels(policy, train_config, f"causal_scrubbing hypothesis {name!r} channels",
                                     list(scrub.channels), scrub.layer)
        require_channels(policy, train_config, "causal_scrubbing.channels", cfg.channels, cfg.layer)

    def hypotheses(self, ctx: EvalContext, result: Result, measured: Sequence[bytes] = ()
                   ) -> dict[str, list[Scrub]]:
        """The configured (or default) hypotheses and the controls, ``cheese``/``other`` resolved to
        channel lists (``auto`` chosen on mazes sharing no layout with ``measured``, the scrubbed
        inputs' mazes); the cheese channels are recorded as rows."""
        cfg, env, policy = self.config, train_env(ctx.train_config), ctx.policy
        hypotheses = dict(cfg.hypotheses or default_hypotheses(cfg.layer))
        if cfg.controls:
            hypotheses.update(control_hypotheses(cfg.layer))
        check_layers(policy, [scrub.layer for scrubs in hypotheses.values() for scrub in scrubs])
        named = {scrub.layer for scrubs in hypotheses.values() for scrub in scrubs if scrub.channels in CHANNEL_GROUPS}
        if named:
            states, excluded = selection_states(env, cfg.channels, ctx.count(cfg.channel_mazes), ctx.seed + 1, measured)
        resolved = {}
        for layer in sorted(named, key=lambda name: name != cfg.layer):  # cfg.layer first
            resolved[layer] = resolve_cheese_channels(policy, cfg.channels, layer, env.obs, states, cfg.top_channels,
                                                      excluded)
            add_cheese_channel_rows(result, resolved[layer], "" if layer == cfg.layer else f"{short_name(layer)}/")
        return {name: [resolve_channels(scrub, resolved[scrub.layer].channels, resolved[scrub.layer].layer_channels)
                       if scrub.layer in resolved else scrub for scrub in scrubs]
                for name, scrubs in hypotheses.items()}

    def run(self, ctx: EvalContext) -> Result:
        """Scrub each hypothesis (and control) and its random baseline over the same inputs."""
        cfg, env, policy = self.config, train_env(ctx.train_config), ctx.policy
        result, summary = Result(), {}
        mazes = interp_mazes(env, max(2, ctx.count(cfg.inputs)), ctx.seed, cfg.mouse)
        pool = MazePool([m.state for m in mazes])
        hypotheses = self.hypotheses(ctx, result, pool.states)
        for hypothesis_index, (name, scrubs) in enumerate(tqdm(hypotheses.items(), desc="causal_scrubbing",
                                                               disable=not ctx.progress, **progress_kwargs())):
            rng = np.random.default_rng(np.random.SeedSequence([ctx.seed, 3, hypothesis_index]))
            inputs, agreeing, differing = [], [[] for _ in scrubs], [[] for _ in scrubs]
            for _ in range(cfg.resamples):
                for index in range(len(pool.states)):
                    drawn = [(pool.resample(index, set(s.features), set(), rng),
                              pool.resample(index, set(), set(s.features), rng)) for s in scrubs]
                    if any(a is None or d is None for a, d in drawn):
                        continue
                    inputs.append(index)
                    for k, (agree, differ) in enumerate(drawn):
                        agreeing[k].append(agree)
                        differing[k].append(differ)
            result.add(f"{name}/inputs_resampled", len(inputs), kind="count")
            result.add(f"{name}/inputs_without_source", cfg.resamples * len(pool.states) - len(inputs), kind="count")
            if not inputs:
                for loss in LOSSES:
                    result.add(f"{name}/{loss}/loss_recovered", stats.undefined(
                        "no input had sources agreeing and differing in the named features", 0, UNIT))
                continue
            x = policy_input(policy, [pool.states[index] for index in inputs], env.obs)
            original_logits, _ = cached_activations(policy, x, [])
            scrubbed = scrubbed_logits(policy, x, [(scrub, policy_input(policy, sources, env.obs))
                                                   for scrub, sources in zip(scrubs, agreeing)])
            random = scrubbed_logits(policy, x, [(scrub, policy_input(policy, sources, env.obs))
                                                 for scrub, sources in zip(scrubs, differing)])
            for loss, losses in per_input_losses(original_logits, scrubbed, random).items():
                summary[(name, loss)] = add_loss_rows(result, f"{name}/{loss}", losses, np.asarray(inputs),
                                                      cfg.min_loss_gap)
        if summary:
            result.artifacts.append(self._plot(ctx, summary, hypotheses))
        return result

    @staticmethod
    def _plot(ctx: EvalContext, summary: dict, hypotheses: dict[str, list[Scrub]]) -> str:
        """Loss recovered per hypothesis (95% intervals over mazes) and the per-input loss changes
        (where cancellation shows)."""
        fig, axes = new_panels(1 + len(LOSSES), size_inches=4.5)
        names = list(dict.fromkeys(name for name, _ in summary))
        labels = [name.replace("control/whole_layer/", "control: whole layer, ") for name in names]
        width = 0.8 / len(LOSSES)
        missing = stats.undefined("not run")
        for k, loss in enumerate(LOSSES):
            estimates = [summary.get((name, loss), (missing, None))[0] for name in names]
            values = np.array([e.value for e in estimates])
            ends = np.array([[e.value if e.ci_low is None else e.ci_low, e.value if e.ci_high is None else e.ci_high]
                             for e in estimates]).T
            # a percentile interval need not contain its point: clip the bar ends at zero length
            errors = np.nan_to_num(np.stack([np.maximum(values - ends[0], 0), np.maximum(ends[1] - values, 0)]))
            axes[0].bar(np.arange(len(names)) + k * width, values, width, yerr=errors, capsize=2, label=loss)
        axes[0].axhline(1.0, color="0.5", lw=0.8, ls="--")
        axes[0].set_xticks(np.arange(len(names)) + width / 2, labels, rotation=30, ha="right", fontsize=8)
        axes[0].set_title("loss recovered (95% interval over mazes)")
        axes[0].legend(fontsize=8)
        for ax, loss in zip(axes[1:], LOSSES):
            changes = [summary[(name, loss)][1] for name in names if (name, loss) in summary]
            ax.boxplot(changes, showfliers=True)
            ax.axhline(0.0, color="0.5", lw=0.8)
            ax.set_xticks(np.arange(1, len(changes) + 1), labels[:len(changes)], rotation=30, ha="right", fontsize=8)
            ax.set_title(f"per-input L_scrubbed − L ({loss})")
        layers = sorted({short_name(s.layer) for scrubs in hypotheses.values() for s in scrubs})
        fig.suptitle("causal scrubbing at " + ", ".join(layers), fontsize=9)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("causal_scrubbing.png"))
