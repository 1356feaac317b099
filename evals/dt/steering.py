"""Injection-coefficient scan of a return-to-go steering vector.

The vector is the mean difference of one residual-stream activation between two conditions on the
same contexts: condition B (high target return) minus condition A (low target return). Contexts
are the windows of episodes the model itself plays at A; in MiniGrid the reward comes only at the
end, so a condition is simply "every RTG token equals the target". The scan adds coeff · vector at
the hook point (every token) while the model plays at A: coeff 0 is the clean A run and coeff 1
should move the agent towards B's behaviour if the hook point carries the RTG information. Shown
per coefficient: online return, success and length, and on the recorded contexts the action
distribution's KL divergence from the clean run and its total-variation distance to B's. Random
vectors of the same norm at coeff 1 are the control (``random_control/…``, episodes pooled).

Every run plays the same seeded levels (ones the training data did not record), and the recorded
contexts come from the clean run's episodes, one level each: every interval is over levels (rates
and means per level; window statistics and the vector's norm clustered by the level they came
from; ``steering_effect`` by a bootstrap over levels of its paired runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from shardlab.evals.dt.rollout import (PlayedEpisode, episode_windows, evaluation_seed, play,
                                       recorded_windows, summarise)
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic
from shardlab.models.decision_transformer import DecisionTransformer
from shardlab.models.hooks import Edit, add, hooked
from shardlab.trainers.dt_data import WindowBatch


def condition_batches(model: DecisionTransformer, windows: list[tuple[PlayedEpisode, list[int]]],
                      rtg: float) -> list[WindowBatch]:
    """The recorded windows with every RTG token set to ``rtg``."""
    return [episode_windows(model, episode, steps, rtg=rtg) for episode, steps in windows]


@torch.no_grad()
def activation_differences(model: DecisionTransformer, hook: str, batches_a: list[WindowBatch],
                           batches_b: list[WindowBatch]) -> tuple[np.ndarray, np.ndarray]:
    """Per batch (one level's windows): the sum over its real tokens of activation(B) − activation(A)
    at ``hook``, (batches, d), and how many real tokens it has, (batches,)."""
    sums, counts = [], []
    for batch_a, batch_b in zip(batches_a, batches_b):
        acts = []
        for batch in (batch_a, batch_b):
            with hooked(model, cache=[hook]) as store:
                model(**batch.inputs())
            acts.append(store[hook])
        difference = acts[1] - acts[0]  # (B, L, d)
        real = _real_tokens(model, batch_a, difference.shape[1])
        sums.append((difference * real.unsqueeze(-1)).sum((0, 1)).double().cpu().numpy())
        counts.append(float(real.sum()))
    return np.stack(sums), np.array(counts)


def mean_difference(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The mean over all real tokens of the per-level summed differences (activation_differences): (d,)."""
    return sums.sum(0) / max(counts.sum(), 1.0)


def _real_tokens(model: DecisionTransformer, batch: WindowBatch, length: int) -> torch.Tensor:
    """(B, L) float mask of the sequence's real (unpadded) tokens."""
    steps = batch.step_mask.repeat_interleave(model.tokens_per_step, dim=1)
    if length > steps.shape[1]:  # mission tokens come first
        steps = torch.cat([batch.missions != 0, steps], dim=1)
    return steps.float()


@torch.no_grad()
def last_step_probabilities(model: DecisionTransformer, batches: list[WindowBatch],
                            edits: Optional[dict[str, Edit]] = None) -> torch.Tensor:
    """Action probabilities at the newest step of every window: (N, actions)."""
    out = []
    with hooked(model, edits or {}):
        for batch in batches:
            out.append(model(**batch.inputs())[:, -1].float().softmax(-1))
    return torch.cat(out)


def kl(p: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """KL(p ‖ q) of every row."""
    return (p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(-1).double().cpu().numpy()


def total_variation(p: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """Total-variation distance of every row."""
    return (0.5 * (p - q).abs().sum(-1)).double().cpu().numpy()


def steering_effect(edited: np.ndarray, clean: np.ndarray, reference: np.ndarray) -> stats.Estimate:
    """(mean edited − mean clean)/(mean reference − mean clean) return, paired per level, with a
    bootstrap over levels; undefined when the clean and reference runs have the same mean return."""
    n = len(clean)
    if abs(reference.mean() - clean.mean()) <= 1e-9:
        return stats.undefined("conditions A and B give the same mean return", n, "levels")

    def ratio(idx: np.ndarray) -> float:
        gap = reference[idx].mean() - clean[idx].mean()
        return float("nan") if abs(gap) <= 1e-9 else float((edited[idx].mean() - clean[idx].mean()) / gap)

    return stats.bootstrap(ratio, n, "levels")


@register("dt_steering")
class DTSteering(Eval):
    """Return, success and action-distribution shift as coeff · (act(RTG high) − act(RTG low)) is added."""

    kinds = ("dt",)
    layer_fields = ("hook",)
    version = 2  # 2: intervals over levels (window statistics clustered by level), levels outside the training data
    headline = ("steering_effect", "random_control/steering_effect")

    @dataclass
    class Config:
        """Conditions default to the data's lowest (A) and highest (B) episode return."""

        hook: str = "blocks.0.hook_resid_post"
        condition_a: Optional[float] = None  # low target return; null = data's minimum return
        condition_b: Optional[float] = None  # high target return; null = data's maximum return
        coefficients: List[float] = field(default_factory=lambda: [-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])
        episodes: int = 50  # online episodes per coefficient (the same seeded levels each time)
        windows: int = 1024  # recorded contexts for the vector and the action shift
        random_vectors: int = 3  # controls: random directions of the same norm at coefficient 1
        greedy: bool = True
        max_steps: Optional[int] = None  # episode step limit; null keeps the env's own

        def __post_init__(self) -> None:
            if not self.coefficients:
                raise ValueError("dt_steering.coefficients is empty; give at least one, e.g. [-1, 0, 1]")
            if min(self.episodes, self.windows) < 1 or self.random_vectors < 0:
                raise ValueError(f"dt_steering needs episodes >= 1, windows >= 1 and random_vectors >= 0; got "
                                 f"{self.episodes}, {self.windows}, {self.random_vectors}")
            if self.max_steps is not None and self.max_steps < 1:
                raise ValueError(f"dt_steering.max_steps must be >= 1 or null, got {self.max_steps}")

    def run(self, ctx: EvalContext) -> Result:
        """Build the vector at the hook, then scan the coefficients online and on recorded contexts."""
        model, spec, cfg = ctx.model, ctx.train_config.spec, self.config
        if not model.use_rtg:
            raise ValueError("dt_steering contrasts return-to-go conditions but this checkpoint is behavioural "
                             "cloning (model.use_rtg=false); drop dt_steering from the suite for it")
        low = spec.return_min if cfg.condition_a is None else cfg.condition_a
        high = spec.return_max if cfg.condition_b is None else cfg.condition_b
        n = ctx.count(cfg.episodes)
        played = dict(seed=evaluation_seed(spec, ctx.seed, n, "dt_steering"), greedy=cfg.greedy,
                      progress=ctx.progress, max_steps=cfg.max_steps)
        clean = play(model, spec, [low] * n, record=True, desc="dt_steering A", **played)
        reference_b = play(model, spec, [high] * n, desc="dt_steering B", **played)
        windows = recorded_windows(model, clean, ctx.count(cfg.windows), ctx.seed)
        levels = np.concatenate([[episode.seed] * len(steps) for episode, steps in windows])  # each window's level
        batches_a, batches_b = condition_batches(model, windows, low), condition_batches(model, windows, high)
        sums, counts = activation_differences(model, cfg.hook, batches_a, batches_b)  # one row per level
        vector = torch.from_numpy(mean_difference(sums, counts)).float().to(next(model.parameters()).device)
        probs_a, probs_b = last_step_probabilities(model, batches_a), last_step_probabilities(model, batches_b)

        result = Result()
        result.add("vector_norm", stats.bootstrap(
            lambda idx: float(np.linalg.norm(mean_difference(sums[idx], counts[idx]))), len(counts), "levels"))
        for name, episodes in (("condition_a", clean), ("condition_b", reference_b)):
            for metric, estimate in summarise(episodes).items():
                result.add(f"{name}/{metric}", estimate)
        result.add("condition_b/action_kl", stats.cluster_mean(kl(probs_b, probs_a), levels, "levels"))
        rows, edited = [], {}
        for coeff in cfg.coefficients:
            edits = {cfg.hook: add(vector, coeff)}
            episodes = clean if coeff == 0 else play(model, spec, [low] * n, edits=edits,
                                                     desc=f"dt_steering {coeff:+.2f}", **played)
            probs = last_step_probabilities(model, batches_a, edits)
            summary = summarise(episodes)
            label = f"coeff={coeff:+.2f}"
            for metric, estimate in summary.items():
                result.add(f"{label}/{metric}", estimate)
            shift = (stats.cluster_mean(kl(probs, probs_a), levels, "levels"),
                     stats.cluster_mean(total_variation(probs, probs_b), levels, "levels"))
            result.add(f"{label}/action_kl", shift[0])
            result.add(f"{label}/action_tv_to_b", shift[1], higher_is_better=False)
            rows.append((coeff, summary, *shift))
            edited[coeff] = _returns(episodes)
        # the fraction of the A→B change in return that adding the vector (or a random one) once reproduces
        clean_returns, b_returns = _returns(clean), _returns(reference_b)
        result.add("steering_effect", steering_effect(edited[1.0], clean_returns, b_returns) if 1.0 in edited
                   else stats.undefined("coefficient 1 is not among the coefficients", n, "levels"),
                   higher_is_better=True)
        control = self._control(ctx, result, vector, low, n, played, batches_a, levels, probs_a, probs_b)
        if control is not None:
            result.add("random_control/steering_effect", steering_effect(control[1], clean_returns, b_returns))
        result.artifacts.append(self._plot(ctx, rows, clean, reference_b, control and control[0], low, high))
        return result

    def _control(self, ctx: EvalContext, result: Result, vector: torch.Tensor, low: float, n: int, played: dict,
                 batches_a: list[WindowBatch], levels: np.ndarray, probs_a: torch.Tensor, probs_b: torch.Tensor
                 ) -> Optional[tuple[list[PlayedEpisode], np.ndarray]]:
        """Random directions of the vector's norm, each added with coefficient 1 on the same levels:
        rows over the pooled episodes (clustered by level); (episodes, mean return per level), or
        None without random vectors."""
        if self.config.random_vectors == 0:
            return None
        generator = torch.Generator().manual_seed(ctx.seed)
        episodes, kls, tvs, returns = [], [], [], []
        for index in range(self.config.random_vectors):
            random = torch.randn(vector.shape, generator=generator).to(vector.device)
            edits = {self.config.hook: add(random / random.norm() * vector.norm(), 1.0)}
            run = play(ctx.model, ctx.train_config.spec, [low] * n, edits=edits,
                       desc=f"dt_steering random {index + 1}", **played)
            episodes += run
            returns.append(_returns(run))
            probs = last_step_probabilities(ctx.model, batches_a, edits)
            kls.append(kl(probs, probs_a))
            tvs.append(total_variation(probs, probs_b))
        for metric, estimate in summarise(episodes).items():
            result.add(f"random_control/{metric}", estimate)
        result.add("random_control/action_kl", stats.cluster_mean(np.mean(kls, 0), levels, "levels"))
        result.add("random_control/action_tv_to_b", stats.cluster_mean(np.mean(tvs, 0), levels, "levels"),
                   higher_is_better=False)
        return episodes, np.mean(returns, 0)

    def _plot(self, ctx: EvalContext, rows: list, clean: list, reference_b: list,
              control: Optional[list[PlayedEpisode]], low: float, high: float) -> str:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        coeffs = [r[0] for r in rows]
        achieved = [r[1]["mean_return"] for r in rows]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.errorbar(coeffs, [a.value for a in achieved], yerr=stats.error_bars(achieved), marker="o", capsize=3,
                      label=f"playing at A (RTG {low:.2f}) + coeff·vector")
        left.axhline(summarise(clean)["mean_return"].value, color="tab:blue", ls=":", label="A, unedited")
        left.axhline(summarise(reference_b)["mean_return"].value, color="tab:red", ls="--",
                     label=f"B (RTG {high:.2f}), unedited")
        left.plot(coeffs, [r[1]["success_rate"].value for r in rows], "s-", color="tab:orange", alpha=0.6,
                  label="success rate")
        if control:
            random_return = summarise(control)["mean_return"]
            left.errorbar([1.0], [random_return.value], yerr=stats.error_bars([random_return]), marker="x", color="0.3",
                          ls="none", capsize=3, label="random vector, same norm")
        left.set_xlabel("coefficient")
        left.set_ylabel("mean return / success rate (95% CI over levels)")
        left.legend(fontsize=8)
        right.plot(coeffs, [r[2].value for r in rows], "o-", label="KL(edited ‖ A)")
        right.plot(coeffs, [r[3].value for r in rows], "s-", label="TV(edited, B)")
        right.set_xlabel("coefficient")
        right.set_ylabel("action-distribution shift")
        right.legend(fontsize=8)
        fig.suptitle(f"RTG steering vector at {self.config.hook} (B − A)", fontsize=10)
        return write_png_atomic(fig, ctx.artifact("steering_scan.png"), dpi=120, pyplot=True)


def _returns(episodes: list[PlayedEpisode]) -> np.ndarray:
    """Each episode's return, in level order."""
    return np.array([e.ret for e in episodes], dtype=float)
