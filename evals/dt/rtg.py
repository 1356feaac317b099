"""Does the return-to-go matter? Online success, return and length at a list of target returns, and
the calibration curve (achieved vs target return).

Every target plays the same seeded levels (ones the training data did not record), so differences
between targets are paired by level and every interval comes from the levels, the independent
unit: rates and means per target over levels, the calibration slope, rank correlation and mean
absolute error from a bootstrap over levels (resample levels, recompute the statistic of the mean
achieved return per target). A DT that ignores its RTG (the known failure: behavioural cloning in
disguise) shows a flat curve: ``calibration/slope`` near 0, ``calibration/return_spread`` near 0,
and ``calibration/spearman`` undefined when every target gives the same mean return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from shardlab.evals.dt.rollout import evaluation_seed, play, summarise
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic


def default_targets(spec, count: int = 6) -> list[float]:
    """``count`` targets evenly spaced over the data's episode returns (min to max)."""
    return [round(float(x), 4) for x in np.linspace(spec.return_min, spec.return_max, count)]


def target_label(target: float) -> str:
    """Metric prefix of one target, e.g. ``target=0.90``."""
    return f"target={target:.2f}"


def calibration(targets: Sequence[float], returns: np.ndarray) -> dict[str, stats.Estimate]:
    """Slope, Spearman, spread and mean absolute error of achieved on target return, from
    ``returns[t, level]`` (every target played on the same levels), with intervals over levels."""
    x, returns = np.asarray(targets, dtype=float), np.asarray(returns, dtype=float)
    n = returns.shape[1]

    def means(rows: np.ndarray) -> np.ndarray:  # (resamples, targets): mean achieved return on the chosen levels
        return returns[:, rows].mean(2).T

    # every resample at once (a batched bootstrap): rows of level indices, one row per resample
    error = stats.bootstrap(lambda rows: np.abs(means(rows) - x).mean(1), n, "levels", batched=True)
    if x.size < 2 or np.ptp(x) == 0:
        undefined = stats.undefined("needs at least two different target returns", n, "levels")
        return {"slope": undefined, "spearman": undefined, "return_spread": undefined, "mean_abs_error": error}
    out = {"slope": stats.bootstrap(lambda rows: stats.slope_rows(x, means(rows)), n, "levels", batched=True)}
    if np.ptp(returns.mean(1)) == 0:
        out["spearman"] = stats.undefined("every target return gave the same mean return", n, "levels")
    else:
        out["spearman"] = stats.bootstrap(lambda rows: stats.spearman_rows(x, means(rows)), n, "levels", batched=True)
    out["return_spread"] = stats.paired_difference(returns[int(np.argmax(x))], returns[int(np.argmin(x))], "levels")
    out["mean_abs_error"] = error
    return out


@register("dt_rtg")
class DTReturnConditioning(Eval):
    """Success rate, mean return, length and truncation per target RTG; calibration slope and plot."""

    kinds = ("dt",)
    version = 2  # 2: intervals over levels (slope etc. by a level bootstrap), levels outside the training data
    headline = ("calibration/spearman", "calibration/slope")

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
        first = evaluation_seed(spec, ctx.seed, n, "dt_rtg")
        result = Result()
        summaries, returns = [], []
        for target in targets:  # one batch per target, all from the same seed: the same levels
            episodes = play(ctx.model, spec, [target] * n, first, self.config.greedy, progress=ctx.progress,
                            desc=f"dt_rtg {target:.2f}", max_steps=self.config.max_steps)
            summary = summarise(episodes)
            for name, estimate in summary.items():
                result.add(f"{target_label(target)}/{name}", estimate,
                           higher_is_better=True if name in ("success_rate", "mean_return") else None)
            summaries.append(summary)
            returns.append([e.ret for e in episodes])
        better = {"slope": True, "spearman": True, "return_spread": True, "mean_abs_error": False}
        for name, estimate in calibration(targets, np.array(returns)).items():
            result.add(f"calibration/{name}", estimate, higher_is_better=better[name])
        result.add("levels/first_seed", first, kind="setting")
        result.add("data/return_max", spec.return_max, kind="data")
        result.add("data/success_rate", spec.success_rate, kind="data")
        result.artifacts.append(self._plot(ctx, targets, summaries))
        return result

    def _plot(self, ctx: EvalContext, targets: list[float], summaries: list[dict]) -> str:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        spec = ctx.train_config.spec
        achieved = [s["mean_return"] for s in summaries]
        means, errors = np.array([a.value for a in achieved]), stats.error_bars(achieved)
        success = [s["success_rate"].value for s in summaries]
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        ax.axvspan(spec.return_min, spec.return_max, color="0.92", label="data's returns")
        low, high = min(min(targets), 0.0), max(max(targets), spec.return_max, 1e-6)
        ax.plot([low, high], [low, high], "--", color="0.5", label="achieved = target")
        ax.errorbar(targets, means, yerr=errors, marker="o", capsize=3, label="mean return (95% CI over levels)")
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
        return write_png_atomic(fig, ctx.artifact("calibration.png"), dpi=120, pyplot=True)
