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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import torch

from shardlab.evals.dt.rollout import PlayedEpisode, episode_windows, play, recorded_windows, summarise
from shardlab.evals.maze.render import save_pyplot_figure
from shardlab.evals.suite.base import Eval
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.registry import register
from shardlab.evals.suite.results import Result
from shardlab.models.decision_transformer import DecisionTransformer
from shardlab.models.hooks import Edit, add, hooked
from shardlab.trainers.dt_data import WindowBatch


def condition_batches(model: DecisionTransformer, windows: list[tuple[PlayedEpisode, list[int]]],
                      rtg: float) -> list[WindowBatch]:
    """The recorded windows with every RTG token set to ``rtg``."""
    return [episode_windows(model, episode, steps, rtg=rtg) for episode, steps in windows]


@torch.no_grad()
def mean_activation_difference(model: DecisionTransformer, hook: str, batches_a: list[WindowBatch],
                               batches_b: list[WindowBatch]) -> torch.Tensor:
    """Mean over windows and real tokens of activation(B) − activation(A) at ``hook``: (d,)."""
    total, count = None, 0
    for batch_a, batch_b in zip(batches_a, batches_b):
        acts = []
        for batch in (batch_a, batch_b):
            with hooked(model, cache=[hook]) as store:
                model(**batch.inputs())
            acts.append(store[hook])
        difference = acts[1] - acts[0]  # (B, L, d)
        real = _real_tokens(model, batch_a, difference.shape[1])
        summed = (difference * real.unsqueeze(-1)).sum((0, 1))
        total = summed if total is None else total + summed
        count += int(real.sum())
    return total / max(count, 1)


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


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean KL(p ‖ q) over rows."""
    return float((p * (p.clamp_min(1e-12).log() - q.clamp_min(1e-12).log())).sum(-1).mean())


def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
    """Mean total-variation distance over rows."""
    return float(0.5 * (p - q).abs().sum(-1).mean())


@register("dt_steering")
class DTSteering(Eval):
    """Return, success and action-distribution shift as coeff · (act(RTG high) − act(RTG low)) is added."""

    kinds = ("dt",)
    layer_fields = ("hook",)

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
        played = dict(seed=ctx.seed, greedy=cfg.greedy, progress=ctx.progress, max_steps=cfg.max_steps)
        clean = play(model, spec, [low] * n, record=True, desc="dt_steering A", **played)
        reference_b = play(model, spec, [high] * n, desc="dt_steering B", **played)
        windows = recorded_windows(model, clean, ctx.count(cfg.windows), ctx.seed)
        batches_a, batches_b = condition_batches(model, windows, low), condition_batches(model, windows, high)
        vector = mean_activation_difference(model, cfg.hook, batches_a, batches_b)
        probs_a, probs_b = last_step_probabilities(model, batches_a), last_step_probabilities(model, batches_b)

        result = Result()
        result.add("vector_norm", float(vector.norm()))
        for name, episodes in (("condition_a", clean), ("condition_b", reference_b)):
            for metric, (value, stderr) in summarise(episodes).items():
                result.add(f"{name}/{metric}", value, stderr=stderr, n=n)
        result.add("condition_b/action_kl", kl(probs_b, probs_a), n=len(probs_a))
        rows = []
        for coeff in cfg.coefficients:
            edits = {cfg.hook: add(vector, coeff)}
            episodes = clean if coeff == 0 else play(model, spec, [low] * n, edits=edits,
                                                     desc=f"dt_steering {coeff:+.2f}", **played)
            probs = last_step_probabilities(model, batches_a, edits)
            summary = summarise(episodes)
            label = f"coeff={coeff:+.2f}"
            for metric, (value, stderr) in summary.items():
                result.add(f"{label}/{metric}", value, stderr=stderr, n=n)
            shift = kl(probs, probs_a), total_variation(probs, probs_b)
            result.add(f"{label}/action_kl", shift[0], n=len(probs))
            result.add(f"{label}/action_tv_to_b", shift[1], n=len(probs), higher_is_better=False)
            rows.append((coeff, summary["mean_return"], summary["success_rate"][0], *shift))
        control = self._control(ctx, result, vector, low, n, played, batches_a, probs_a, probs_b)
        clean_return = summarise(clean)["mean_return"][0]
        gap = summarise(reference_b)["mean_return"][0] - clean_return
        at_one = [r for r in rows if r[0] == 1.0]
        if abs(gap) > 1e-9:
            # the fraction of the A→B change in return that adding the vector (or a random one) once reproduces
            if at_one:
                result.add("steering_effect", (at_one[0][1][0] - clean_return) / gap, higher_is_better=True)
            result.add("random_control/steering_effect", (summarise(control)["mean_return"][0] - clean_return) / gap)
        result.artifacts.append(self._plot(ctx, rows, clean, reference_b, control, low, high))
        return result

    def _control(self, ctx: EvalContext, result: Result, vector: torch.Tensor, low: float, n: int, played: dict,
                 batches_a: list[WindowBatch], probs_a: torch.Tensor, probs_b: torch.Tensor) -> list[PlayedEpisode]:
        """Random directions of the vector's norm, each added with coefficient 1; episodes pooled."""
        generator = torch.Generator().manual_seed(ctx.seed)
        episodes, kls, tvs = [], [], []
        for index in range(self.config.random_vectors):
            random = torch.randn(vector.shape, generator=generator)
            edits = {self.config.hook: add(random / random.norm() * vector.norm(), 1.0)}
            episodes += play(ctx.model, ctx.train_config.spec, [low] * n, edits=edits,
                             desc=f"dt_steering random {index + 1}", **played)
            probs = last_step_probabilities(ctx.model, batches_a, edits)
            kls.append(kl(probs, probs_a))
            tvs.append(total_variation(probs, probs_b))
        for metric, (value, stderr) in summarise(episodes).items():
            result.add(f"random_control/{metric}", value, stderr=stderr, n=len(episodes))
        result.add("random_control/action_kl", sum(kls) / len(kls), n=len(probs_a))
        result.add("random_control/action_tv_to_b", sum(tvs) / len(tvs), n=len(probs_a), higher_is_better=False)
        return episodes

    def _plot(self, ctx: EvalContext, rows: list, clean: list, reference_b: list, control: list, low: float,
              high: float) -> str:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        coeffs = [r[0] for r in rows]
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        left.errorbar(coeffs, [r[1][0] for r in rows], yerr=[r[1][1] or 0.0 for r in rows], marker="o", capsize=3,
                      label=f"playing at A (RTG {low:.2f}) + coeff·vector")
        left.axhline(summarise(clean)["mean_return"][0], color="tab:blue", ls=":", label="A, unedited")
        left.axhline(summarise(reference_b)["mean_return"][0], color="tab:red", ls="--", label=f"B (RTG {high:.2f}), unedited")
        left.plot(coeffs, [r[2] for r in rows], "s-", color="tab:orange", alpha=0.6, label="success rate")
        random_return = summarise(control)
        left.errorbar([1.0], [random_return["mean_return"][0]], yerr=[random_return["mean_return"][1] or 0.0],
                      marker="x", color="0.3", ls="none", capsize=3, label="random vector, same norm")
        left.set_xlabel("coefficient")
        left.set_ylabel("mean return / success rate")
        left.legend(fontsize=8)
        right.plot(coeffs, [r[3] for r in rows], "o-", label="KL(edited ‖ A)")
        right.plot(coeffs, [r[4] for r in rows], "s-", label="TV(edited, B)")
        right.set_xlabel("coefficient")
        right.set_ylabel("action-distribution shift")
        right.legend(fontsize=8)
        fig.suptitle(f"RTG steering vector at {self.config.hook} (B − A)", fontsize=10)
        return save_pyplot_figure(fig, ctx.artifact("steering_scan.png"), dpi=120)
