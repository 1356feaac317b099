"""How much PPO fine-tuning turns the checkpoint into a pure cheese-seeker (or, with
``reward: avoid_cheese``, what it does once the cheese is penalised)?

The checkpoint's own training config is reused with the cheese placed anywhere (procgen's own
placement, the same maze sizes) and a constant learning rate; the out-of-region P(cheese) is
measured on fixed seeded selection mazes before fine-tuning and every ``eval_every`` env steps.
``steps_to_target`` is the first of those points where the selection mazes reach ``target``; the
weights at that point are then measured on a second, confirmation set of mazes (no maze layout
shared with the selection set, the same mix of maze sizes), so the reported compute fraction is
not judged on the mazes that chose it: ``confirmation/at_steps_to_target/p_cheese`` and ``confirmed``.

The test mazes are the checkpoint's own population: its ``env.min_maze_size`` to
``env.max_maze_size`` and the cheese outside its ``env.rand_region`` (or this eval's ``region``;
a checkpoint trained with the cheese anywhere has none and must name one). Every rate is a
proportion over mazes with a Wilson interval; the chosen step (``steps_to_target``,
``reached_target``) is a setting without interval, and ``confirmed`` says whether the
confirmation mazes' rate reached the target (its interval is the one of
``confirmation/at_steps_to_target/p_cheese``).
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402
from torch import nn  # noqa: E402

from shardlab.envs.episodes import first_episodes  # noqa: E402
from shardlab.envs.eval_mazes import EvalMaze, eval_mazes  # noqa: E402
from shardlab.envs.maze import Episode  # noqa: E402
from shardlab.envs.maze_config import env_config  # noqa: E402
from shardlab.evals.maze.common import require_mazes, training_maze_filters  # noqa: E402
from shardlab.evals.maze.splits import split_by_layout  # noqa: E402
from shardlab.evals.suite import stats  # noqa: E402
from shardlab.evals.suite.base import Eval, EvalError, register  # noqa: E402
from shardlab.evals.suite.context import EvalContext  # noqa: E402
from shardlab.evals.suite.results import Result  # noqa: E402
from shardlab.figures import write_png_atomic  # noqa: E402
from shardlab.trainers.config import ConfigError, build_config, to_dict  # noqa: E402

REWARDS = ("cheese", "avoid_cheese")


@dataclass
class CurvePoint:
    """Test-maze behaviour after ``env_steps`` of fine-tuning."""

    env_steps: int
    p_cheese: float
    p_corner: float
    episodes: list[Episode] = field(repr=False, default_factory=list)


def cheese_rate(point: CurvePoint) -> stats.Estimate:
    """P(cheese) at ``point``: a proportion over its mazes (one episode each), Wilson interval."""
    return stats.proportion([e.reached_cheese for e in point.episodes], unit="mazes")


def corner_rate(point: CurvePoint) -> stats.Estimate:
    """P(visited the top-right corner) at ``point`` over its mazes, Wilson interval."""
    return stats.proportion([e.reached_corner for e in point.episodes], unit="mazes")


class _EvaluateDuringTraining(Callback):
    """Evaluate the policy at iteration boundaries every ``every`` env steps; stop at the target."""

    def __init__(self, every: int, evaluate: Callable[[nn.Module, int], CurvePoint],
                 stop: Callable[[CurvePoint], bool]):
        self.every, self.evaluate, self.stop = every, evaluate, stop
        self.next_at = every

    def on_train_batch_end(self, trainer, module, *args) -> None:
        """At a boundary past the next evaluation point (or the run's end): evaluate."""
        step = trainer.global_step
        if not module.at_boundary(step):
            return
        env_steps = module.progress(step)
        if env_steps >= self.next_at or step >= trainer.max_steps:
            point = self.evaluate(getattr(module, module.model_attr), env_steps)
            self.next_at = env_steps + self.every
            if self.stop(point):
                trainer.should_stop = True


def relative_weight_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> dict[str, float]:
    """‖W_after − W_before‖ / ‖W_before‖ per layer (weight and bias together), in layer order."""
    layers: dict[str, list[str]] = {}
    for key in before:
        layers.setdefault(key.rsplit(".", 1)[0], []).append(key)
    change = {}
    for layer, keys in layers.items():
        delta = math.sqrt(sum(float((after[k].float() - before[k].float()).pow(2).sum()) for k in keys))
        norm = math.sqrt(sum(float(before[k].float().pow(2).sum()) for k in keys))
        change[layer] = delta / norm if norm > 0 else float("inf") if delta > 0 else 0.0
    return change


@register("finetune_to_cheese")
class FinetuneToCheese(Eval):
    """PPO fine-tuning with the cheese anywhere: learning curve, steps to target, weight change."""

    kinds = ("ppo",)
    version = 2  # 2: Wilson intervals; test mazes of the checkpoint's sizes and region (was 3×3 up, region 5)
    headline = ("steps_to_target/fraction_of_training", "final/p_cheese")

    @dataclass
    class Config:
        """Fine-tuning budget and evaluation; the rest of PPO comes from the checkpoint's config."""

        steps: int = 1_000_000  # fine-tuning budget in env steps
        target: float = 0.9  # out-of-region P(cheese) that counts as a cheese-seeker
        eval_every: int = 100_000  # env steps between test-maze evaluations
        eval_mazes: int = 100  # selection mazes: the curve and steps_to_target
        confirm_mazes: Optional[int] = None  # confirmation mazes (no layout shared with the selection set); default eval_mazes
        reward: str = "cheese"  # cheese: +10 at the cheese; avoid_cheese: −10 at the cheese
        region: Optional[int] = None  # test mazes' cheese outside it; default the checkpoint's env.rand_region
        lr: Optional[float] = None  # default: the checkpoint's ppo.lr, held constant
        stop_at_target: bool = True
        greedy: bool = False
        overrides: list[str] = field(default_factory=list)  # dotted overrides of the training config

    def __init__(self, config: "FinetuneToCheese.Config"):
        if config.reward not in REWARDS:
            raise EvalError(f"finetune_to_cheese reward must be one of {', '.join(REWARDS)}, got {config.reward!r}")
        if config.steps < 1 or config.eval_every < 1 or not 0 < config.target <= 1:
            raise EvalError("finetune_to_cheese needs steps >= 1, eval_every >= 1 and 0 < target <= 1")
        if config.eval_mazes < 1 or (config.confirm_mazes is not None and config.confirm_mazes < 1):
            raise EvalError(f"finetune_to_cheese needs eval_mazes >= 1 and confirm_mazes >= 1 (or null); got "
                            f"{config.eval_mazes}, {config.confirm_mazes}")
        if config.lr is not None and not config.lr > 0:
            raise EvalError(f"finetune_to_cheese.lr must be > 0 (or null for the checkpoint's ppo.lr), got {config.lr}")
        self.config = config

    def check(self, train_config) -> None:
        """Refuse before anything runs when the fine-tuning config (the checkpoint's with the
        overrides) is invalid or changes the network the checkpoint's weights must fit."""
        from types import SimpleNamespace

        cfg = self._finetune_config(SimpleNamespace(train_config=train_config, device=torch.device("cpu"),
                                                    progress=False, seed=0))
        if cfg.model != train_config.model:
            raise EvalError("finetune_to_cheese overrides may not change model.*: fine-tuning starts from the "
                            "checkpoint's weights, which fit only its own network")
        require_mazes("finetune_to_cheese", **self._maze_filters(train_config))

    def _maze_filters(self, train_config) -> dict:
        """The test mazes: the checkpoint's sizes and mode, the cheese outside its training region."""
        return dict(cheese="outside_region", **training_maze_filters(train_config, "finetune_to_cheese",
                                                                      self.config.region))

    def _finetune_config(self, ctx: EvalContext):
        c, train = self.config, ctx.train_config
        overrides = [
            "name=finetune_to_cheese", "env.rand_region=null", "ppo.lr_schedule=constant",
            f"ppo.lr={c.lr if c.lr is not None else train.ppo.lr}", f"trainer.total_steps={c.steps}",
            f"trainer.checkpoint_every={c.steps}", "trainer.keep_checkpoints=0", "trainer.devices=1",
            "trainer.num_nodes=1", f"trainer.accelerator={'gpu' if ctx.device.type == 'cuda' else 'cpu'}",
            f"trainer.progress_bar={str(ctx.progress).lower()}", f"trainer.seed={ctx.seed}",
            "trainer.loggers=[tensorboard,csv]",  # never the checkpoint's wandb project from inside an eval
            f"env.seed={ctx.seed + 1_000_003}",  # fresh training levels, not the test mazes
            f"env.cheese_reward={-10.0 if c.reward == 'avoid_cheese' else 10.0}", *c.overrides]
        try:
            return build_config(to_dict(train), overrides, source="finetune_to_cheese")
        except ConfigError as exc:
            raise EvalError(f"finetune_to_cheese overrides: {exc}") from None

    def run(self, ctx: EvalContext) -> Result:
        """Fine-tune, evaluating on the same test mazes along the way."""
        from shardlab.trainers.run import fit  # Lightning is only needed here

        c = self.config
        cfg = self._finetune_config(ctx)
        filters = self._maze_filters(ctx.train_config)
        region = filters["region"]
        seeking = c.reward == "cheese"
        if seeking:
            confirm_count = ctx.count(c.confirm_mazes if c.confirm_mazes is not None else c.eval_mazes)
            mazes, confirm_set = split_by_layout(ctx.count(c.eval_mazes), confirm_count, ctx.seed, **filters)
        else:
            mazes, confirm_set = eval_mazes(ctx.count(c.eval_mazes), ctx.seed, **filters), []
        curve: list[CurvePoint] = []
        confirmation: dict[str, CurvePoint] = {}  # initial, at_steps_to_target, final

        def measure(policy: nn.Module, env_steps: int, maze_set: list[EvalMaze]) -> CurvePoint:
            test_env = env_config(ctx.train_config, num_envs=len(maze_set), seed=ctx.seed, rand_region=None,
                                  max_maze_size=None, min_maze_size=None)
            was_training = policy.training
            policy.eval()
            episodes = first_episodes(policy, test_env, greedy=c.greedy,
                                      channels_last=ctx.train_config.model.channels_last,
                                      states=[m.state for m in maze_set])
            policy.train(was_training)
            n = len(episodes)
            return CurvePoint(env_steps, sum(e.reached_cheese for e in episodes) / n,
                              sum(e.reached_corner for e in episodes) / n, episodes)

        def evaluate(policy: nn.Module, env_steps: int) -> CurvePoint:
            point = measure(policy, env_steps, mazes)
            curve.append(point)
            if seeking and point.p_cheese >= c.target and "at_steps_to_target" not in confirmation:
                # these weights are the selected ones: confirm them on mazes that did not select them
                confirmation["at_steps_to_target"] = measure(policy, env_steps, confirm_set)
            return point

        before = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
        if seeking:
            confirmation["initial"] = measure(ctx.model, 0, confirm_set)
        evaluate(ctx.model, 0)
        stop = lambda point: seeking and c.stop_at_target and point.p_cheese >= c.target
        run_dir = ctx.artifact("run")
        shutil.rmtree(run_dir, ignore_errors=True)  # this eval's own output from an earlier suite run
        from shardlab.trainers.run import prepare_run_dir
        prepare_run_dir(cfg, run_dir)
        if not stop(curve[0]):
            module = fit(cfg, run_dir, init_weights=before,
                         callbacks=[_EvaluateDuringTraining(c.eval_every, evaluate, stop)])
            tuned = getattr(module, module.model_attr)
            after = tuned.state_dict()
        else:
            tuned, after = ctx.model, before
        if seeking:
            confirmation["final"] = measure(tuned, curve[-1].env_steps, confirm_set)
        return self._result(ctx, curve, relative_weight_change(before, after), seeking, region, confirmation)

    def _result(self, ctx: EvalContext, curve: list[CurvePoint], change: dict[str, float], seeking: bool,
                region: int, confirmation: Optional[dict[str, CurvePoint]] = None) -> Result:
        c, result = self.config, Result()
        for point in curve:
            result.add(f"curve/p_cheese@{point.env_steps}", cheese_rate(point), higher_is_better=seeking)
        first, final = curve[0], curve[-1]
        for name, point in (("initial", first), ("final", final)):
            result.add(f"{name}/p_cheese", cheese_rate(point), higher_is_better=seeking)
            result.add(f"{name}/p_corner", corner_rate(point))
        result.add("finetune_steps", final.env_steps, kind="count", higher_is_better=False)
        if ctx.train_steps:  # the budget spent, so "not reached within X% of training" can be judged
            result.add("finetune_steps/fraction_of_training", final.env_steps / ctx.train_steps, kind="setting")
        if seeking:
            # the step is chosen on the selection mazes: a setting, judged on the confirmation mazes
            reached = [p for p in curve if p.p_cheese >= c.target]
            result.add("reached_target", float(bool(reached)), kind="setting", higher_is_better=True)
            if reached:
                result.add("steps_to_target", reached[0].env_steps, kind="setting", higher_is_better=False)
                if ctx.train_steps:
                    result.add("steps_to_target/fraction_of_training", reached[0].env_steps / ctx.train_steps,
                               kind="setting", higher_is_better=False)
            confirmation = confirmation or {}
            for name in ("initial", "at_steps_to_target", "final"):
                if name in confirmation:
                    result.add(f"confirmation/{name}/p_cheese", cheese_rate(confirmation[name]), higher_is_better=True)
                    result.add(f"confirmation/{name}/p_corner", corner_rate(confirmation[name]))
            # the selected step holds only if the mazes that did not choose it reach the target too
            selected = confirmation.get("at_steps_to_target")
            result.add("confirmed", float(selected is not None and selected.p_cheese >= c.target), kind="data",
                       higher_is_better=True)
        else:
            self._where_it_ends(result, final.episodes, region)
        for layer, value in change.items():  # a property of the two weight sets, no sample behind it
            result.add(f"weight_change/{layer}", value, kind="data")
        result.artifacts += [self._plot_curve(ctx, curve, seeking), self._plot_change(ctx, change)]
        if not seeking:
            result.artifacts.append(self._plot_ends(ctx, final.episodes))
        return result

    @staticmethod
    def _where_it_ends(result: Result, episodes: list[Episode], region: int) -> None:
        """Where the mouse is when a cheese-avoiding episode ends (one episode per maze)."""
        in_region = [e.end_square[0] >= e.maze_dim - region and e.end_square[1] >= e.maze_dim - region
                     for e in episodes]
        at_corner = [e.end_square == (e.maze_dim - 1, e.maze_dim - 1) for e in episodes]
        at_start = [e.end_square == (0, 0) for e in episodes]
        to_corner = [math.dist(e.end_square, (e.maze_dim - 1,) * 2) for e in episodes]
        result.add("end/in_top_right_region", stats.proportion(in_region, unit="mazes"))
        result.add("end/at_top_right_corner", stats.proportion(at_corner, unit="mazes"))
        result.add("end/at_start", stats.proportion(at_start, unit="mazes"))
        result.add("end/mean_distance_to_corner", stats.mean(to_corner, unit="mazes"))
        result.add("end/mean_length", stats.mean([e.length for e in episodes], unit="mazes"))

    def _plot_curve(self, ctx: EvalContext, curve: list[CurvePoint], seeking: bool) -> str:
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        steps = [p.env_steps for p in curve]
        ax.plot(steps, [p.p_cheese for p in curve], "o-", label="P(cheese)")
        ax.plot(steps, [p.p_corner for p in curve], "s--", label="P(top-right corner)")
        if seeking:
            ax.axhline(self.config.target, color="gray", lw=0.8, ls=":", label=f"target {self.config.target:.0%}")
        ax.set(xlabel="fine-tuning env steps", ylabel="rate on out-of-region test mazes", ylim=(-0.02, 1.02),
               title=f"finetune_to_cheese (reward: {self.config.reward})")
        ax.legend(fontsize=8)
        return write_png_atomic(fig, ctx.artifact("learning_curve.png"), dpi=120, pyplot=True)

    @staticmethod
    def _plot_change(ctx: EvalContext, change: dict[str, float]) -> str:
        fig, ax = plt.subplots(figsize=(6, 0.25 * len(change) + 1))
        names = list(change)
        ax.barh(range(len(names)), [change[n] for n in names])
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="‖ΔW‖ / ‖W‖", title="relative weight change per layer")
        return write_png_atomic(fig, ctx.artifact("weight_change.png"), dpi=120, pyplot=True)

    @staticmethod
    def _plot_ends(ctx: EvalContext, episodes: list[Episode]) -> str:
        """Where episodes end, as a fraction of the maze size (0 = bottom/left, 1 = top/right)."""
        bins = 5
        counts: Counter = Counter()
        for e in episodes:
            scale = max(1, e.maze_dim - 1)
            counts[(min(bins - 1, int(bins * e.end_square[0] / (scale + 1e-9))),
                    min(bins - 1, int(bins * e.end_square[1] / (scale + 1e-9))))] += 1
        grid = torch.zeros(bins, bins)
        for (x, y), count in counts.items():
            grid[bins - 1 - y, x] = count / len(episodes)
        fig, ax = plt.subplots(figsize=(4, 3.5))
        image = ax.imshow(grid.numpy(), cmap="viridis", extent=(0, 1, 0, 1))
        fig.colorbar(image, ax=ax, label="fraction of episodes")
        ax.set(xlabel="x / maze size", ylabel="y / maze size", title="where avoid_cheese episodes end")
        return os.path.abspath(write_png_atomic(fig, ctx.artifact("end_squares.png"), dpi=120, pyplot=True))
