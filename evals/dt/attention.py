"""Where does the decision transformer look when it picks an action?

The model plays seeded episodes at a target return. Over windows drawn from every step of them,
the attention of each head *from the state tokens* (where actions are read out) is split by the
kind of token attended to: return-to-go, state, action, mission, and the share that stays on the
current timestep. One recorded trajectory's full attention pattern is drawn per layer and head.
Episodes are played on levels the training data did not record, one level each; the windows of one
episode are correlated, so each share's interval comes from a bootstrap over levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from shardlab.evals.dt.rollout import (PlayedEpisode, episode_windows, evaluation_seed, play, recorded_windows,
                                       summarise)
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic
from shardlab.models.decision_transformer import DecisionTransformer
from shardlab.models.hooks import hooked

KINDS = {"R": "rtg", "s": "state", "a": "action", "m": "mission"}


def pattern_names(model: DecisionTransformer) -> list[str]:
    """The attention-pattern hook of every layer."""
    return [f"blocks.{i}.attn.hook_pattern" for i in range(len(model.blocks))]


@torch.no_grad()
def attention_share_sums(model: DecisionTransformer, windows: list[tuple[PlayedEpisode, list[int]]]
                         ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per episode (level) of ``windows``: the summed share of attention from its real state tokens
    to each token kind, name → (episodes, layers, heads), and its number of real state queries, (episodes,)."""
    names = pattern_names(model)
    sums: dict[str, list[np.ndarray]] = {}
    queries = []
    for episode, steps in windows:
        batch = episode_windows(model, episode, steps)
        with hooked(model, cache=names) as store:
            model(**batch.inputs())
        M = 0 if batch.missions is None else batch.missions.shape[1]
        K = batch.step_mask.shape[1]
        labels = model.token_labels(K, M)
        kinds = np.array([KINDS[label[0]] for label in labels])
        step_of = np.array([int(label[1:]) if label[0] != "m" else -1 for label in labels])
        rows = model.state_positions(K, M)
        real = batch.step_mask  # (B, K): which state queries are real
        patterns = torch.stack([store[name] for name in names], 1)[:, :, :, rows]  # (B, layers, heads, K, L)
        weights = real[:, None, None, :, None].float()
        queries.append(float(real.sum()))
        for kind in KINDS.values():
            keys = torch.from_numpy(kinds == kind)
            share = (patterns[..., keys].sum(-1, keepdim=True) * weights).sum((0, 3, 4)).double().cpu().numpy()
            sums.setdefault(kind, []).append(share)
        current = torch.from_numpy(step_of[None, :] == np.arange(K)[:, None])  # (K, L): same timestep
        share = (patterns * current * weights).sum((0, 3, 4)).double().cpu().numpy()
        sums.setdefault("current_step", []).append(share)
    return {kind: np.stack(values) for kind, values in sums.items()}, np.array(queries)


def pooled_shares(sums: dict[str, np.ndarray], queries: np.ndarray) -> dict[str, np.ndarray]:
    """The share over every real state query of attention_share_sums' per-level sums: name → (layers, heads)."""
    return {kind: value.sum(0) / max(queries.sum(), 1.0) for kind, value in sums.items()}


def attention_shares(model: DecisionTransformer, windows: list[tuple[PlayedEpisode, list[int]]]
                     ) -> dict[str, np.ndarray]:
    """Mean share of attention from real state tokens to each token kind: name → (layers, heads)."""
    return pooled_shares(*attention_share_sums(model, windows))


@register("dt_attention")
class DTAttention(Eval):
    """Attention shares of every head from state tokens, and pattern plots on one trajectory."""

    kinds = ("dt",)
    version = 2  # 2: shares with intervals from a bootstrap over levels, levels outside the training data

    @dataclass
    class Config:
        """Episodes are played at ``target`` (null: the data's highest return)."""

        target: Optional[float] = None
        episodes: int = 16
        windows: int = 512  # windows drawn from the episodes' steps for the shares
        greedy: bool = True
        max_steps: Optional[int] = None  # episode step limit; null keeps the env's own

        def __post_init__(self) -> None:
            if min(self.episodes, self.windows) < 1 or (self.max_steps is not None and self.max_steps < 1):
                raise ValueError(f"dt_attention needs episodes >= 1, windows >= 1 and max_steps >= 1 (or null); got "
                                 f"episodes={self.episodes}, windows={self.windows}, max_steps={self.max_steps}")

    def run(self, ctx: EvalContext) -> Result:
        """Play, measure the shares, plot one trajectory's patterns."""
        model, spec, cfg = ctx.model, ctx.train_config.spec, self.config
        target = spec.return_max if cfg.target is None else cfg.target
        n = ctx.count(cfg.episodes)
        episodes = play(model, spec, [target] * n, evaluation_seed(spec, ctx.seed, n, "dt_attention"), cfg.greedy,
                        record=True, progress=ctx.progress, desc="dt_attention", max_steps=cfg.max_steps)
        result = Result()
        for metric, estimate in summarise(episodes).items():
            result.add(f"episodes/{metric}", estimate)
        windows = recorded_windows(model, episodes, ctx.count(cfg.windows), ctx.seed)
        sums, queries = attention_share_sums(model, windows)  # one row per level
        for kind, values in sums.items():
            if kind == "mission" and not model.max_mission_tokens:
                continue
            for layer, head in np.ndindex(values.shape[1:]):
                share = values[:, layer, head]
                result.add(f"layer{layer}.head{head}/to_{kind}", stats.bootstrap(
                    lambda idx: float(share[idx].sum() / queries[idx].sum()), len(queries), "levels"))
        shares = pooled_shares(sums, queries)
        # the plotted trajectory: the first successful episode (else the first), at its last step
        shown = next((e for e in episodes if e.success), episodes[0])
        result.artifacts.extend(self._plot_patterns(ctx, model, shown))
        result.artifacts.append(self._plot_shares(ctx, shares))
        return result

    def _plot_patterns(self, ctx: EvalContext, model: DecisionTransformer, episode: PlayedEpisode) -> list[str]:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        batch = episode_windows(model, episode, [episode.length - 1])
        names = pattern_names(model)
        with torch.no_grad(), hooked(model, cache=names) as store:
            model(**batch.inputs())
        M = 0 if batch.missions is None else batch.missions.shape[1]
        K = batch.step_mask.shape[1]
        first = int(episode.timesteps[max(0, episode.length - K)])
        labels = model.token_labels(K, M)
        # real tokens only: mission words that exist and the window's real timesteps, with true step numbers
        keep = [i for i, label in enumerate(labels) if (label[0] == "m" and batch.missions[0, int(label[1:])] != 0)
                or (label[0] != "m" and batch.step_mask[0, int(label[1:])])]
        offset = K - int(batch.step_mask[0].sum())
        shown = [label if label[0] == "m" else f"{label[0]}{int(label[1:]) - offset + first}" for label in
                 (labels[i] for i in keep)]
        paths = []
        for layer, name in enumerate(names):
            pattern = store[name][0][:, keep][:, :, keep].numpy()  # (heads, L', L')
            for head in range(pattern.shape[0]):
                size = max(4.0, 0.16 * len(keep))
                fig, ax = plt.subplots(figsize=(size + 1, size))
                image = ax.imshow(pattern[head], cmap="viridis", vmin=0, vmax=1)
                ax.set_xticks(range(len(shown)), shown, rotation=90, fontsize=6)
                ax.set_yticks(range(len(shown)), shown, fontsize=6)
                ax.set_xlabel("key")
                ax.set_ylabel("query")
                ax.set_title(f"layer {layer} head {head}: episode of return {episode.ret:.2f} "
                             f"(target {episode.target:.2f}), last {len(keep)} tokens", fontsize=8)
                fig.colorbar(image, ax=ax, fraction=0.046)
                paths.append(write_png_atomic(fig, ctx.artifact(f"attention_layer{layer}_head{head}.png"), dpi=110,
                                              pyplot=True))
        return paths

    def _plot_shares(self, ctx: EvalContext, shares: dict[str, np.ndarray]) -> str:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        kinds = [k for k in ("rtg", "state", "action", "mission") if k in shares and shares[k].any()]
        layers, heads = shares["state"].shape
        labels = [f"L{layer}H{head}" for layer in range(layers) for head in range(heads)]
        fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(labels) + 2) + 1.8, 4))
        bottom = np.zeros(len(labels))
        for kind in kinds:
            values = shares[kind].reshape(-1)
            ax.bar(labels, values, bottom=bottom, label=kind)
            bottom += values
        ax.plot(labels, shares["current_step"].reshape(-1), "k_", markersize=20, mew=2, label="current timestep")
        ax.set_ylabel("share of attention from state tokens")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return write_png_atomic(fig, ctx.artifact("attention_shares.png"), dpi=120, pyplot=True)
