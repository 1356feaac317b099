"""Does the return-to-go matter? Online success, return and length at a list of target returns, and
the calibration curve (achieved vs target return).

Every target plays the same seeded levels, so differences between targets are paired. A DT that
ignores its RTG (the known failure: behavioural cloning in disguise) shows a flat curve:
``calibration/slope`` near 0 and ``calibration/return_spread`` near 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
from scipy import stats

from shardlab.evals.dt.rollout import play, summarise
from shardlab.evals.maze.render import save_pyplot_figure
from shardlab.evals.suite.base import Eval
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.registry import register
from shardlab.evals.suite.results import Result


def default_targets(spec, count: int = 6) -> list[float]:
    """``count`` targets evenly spaced over the data's episode returns (min to max)."""
    return [round(float(x), 4) for x in np.linspace(spec.return_min, spec.return_max, count)]


def target_label(target: float) -> str:
    """Metric prefix of one target, e.g. ``target=0.90``."""
    return f"target={target:.2f}"


@register("dt_rtg")
class DTReturnConditioning(Eval):
    """Success rate, mean return, length and truncation per target RTG; calibration slope and plot."""

    kinds = ("dt",)

    @dataclass
    class Config:
        """Targets default to six values spanning the training data's returns."""

        targets: List[float] = field(default_factory=list)
        episodes: int = 100  # per target, the same seeded levels for every target
        greedy: bool = True  # argmax actions; false samples (seeded)
        max_steps: Optional[int] = None  # episode step limit; null keeps the env's own

        def __post_init__(self) -> None:
            if self.episodes < 1 or (self.max_steps is not None and self.max_steps < 1):
                raise ValueError(f"dt_rtg needs episodes >= 1 and max_steps >= 1 (or null); got "
                                 f"episodes={self.episodes}, max_steps={self.max_steps}")

    def run(self, ctx: EvalContext) -> Result:
        """Play ``episodes`` levels at every target and summarise."""
        spec = ctx.train_config.spec
        targets = list(self.config.targets) or default_targets(spec)
        n = ctx.count(self.config.episodes)
        result = Result()
        achieved, success = [], []
        for target in targets:  # one batch per target, all from the same seed: the same levels
            episodes = play(ctx.model, spec, [target] * n, ctx.seed, self.config.greedy, progress=ctx.progress,
                            desc=f"dt_rtg {target:.2f}", max_steps=self.config.max_steps)
            summary = summarise(episodes)
            label = target_label(target)
            for name, (value, stderr) in summary.items():
                result.add(f"{label}/{name}", value, stderr=stderr, n=n,
                           higher_is_better=True if name in ("success_rate", "mean_return") else None)
            achieved.append(summary["mean_return"])
            success.append(summary["success_rate"][0])
        means = np.array([a[0] for a in achieved])
        if len(targets) > 1:
            fit = stats.linregress(targets, means)
            result.add("calibration/slope", fit.slope, stderr=fit.stderr, n=len(targets), higher_is_better=True)
            # undefined (nan) when every target achieves the same return
            rho = stats.spearmanr(targets, means).statistic if np.ptp(means) > 0 else float("nan")
            result.add("calibration/spearman", rho, n=len(targets), higher_is_better=True)
        result.add("calibration/return_spread", means[int(np.argmax(targets))] - means[int(np.argmin(targets))],
                   n=len(targets), higher_is_better=True)
        result.add("calibration/mean_abs_error", float(np.mean(np.abs(means - np.array(targets)))), n=len(targets),
                   higher_is_better=False)
        result.add("data/return_max", spec.return_max)
        result.add("data/success_rate", spec.success_rate)
        result.artifacts.append(self._plot(ctx, targets, achieved, success))
        return result

    def _plot(self, ctx: EvalContext, targets: list[float], achieved: list, success: list[float]) -> str:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        spec = ctx.train_config.spec
        means = np.array([a[0] for a in achieved])
        errors = np.array([a[1] or 0.0 for a in achieved])
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        ax.axvspan(spec.return_min, spec.return_max, color="0.92", label="data's returns")
        low, high = min(min(targets), 0.0), max(max(targets), spec.return_max, 1e-6)
        ax.plot([low, high], [low, high], "--", color="0.5", label="achieved = target")
        ax.errorbar(targets, means, yerr=errors, marker="o", capsize=3, label="mean return")
        ax.axhline(spec.return_mean, color="tab:green", lw=0.8, ls=":", label="data's mean return")
        ax.set_xlabel("target return-to-go")
        ax.set_ylabel("achieved return")
        twin = ax.twinx()
        twin.plot(targets, success, "s-", color="tab:orange", alpha=0.7, label="success rate")
        twin.set_ylim(-0.02, 1.02)
        twin.set_ylabel("success rate")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="best", fontsize=8)
        ax.set_title(f"RTG calibration ({spec.env_id}, {ctx.count(self.config.episodes)} episodes/target)", fontsize=9)
        return save_pyplot_figure(fig, ctx.artifact("calibration.png"), dpi=120)
