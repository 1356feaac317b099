"""Retargeting a maze policy by writing values into "cheese channels" at a target square's cell
(Mini et al.: setting channel 55 of ``embedder.block2.res1.resadd_out`` to 5.5 at one cell sends
the published agent towards that square), measured as the published prediction states it:
editing < 10% of activations sends the agent to the top-left / bottom-right with ≥ 33% success.

* **Mazes**: seeded mazes of the largest training size whose real cheese stays where training put
  it: a seeded random open square of the top-right ``region`` (the checkpoint's
  ``env.rand_region``; never the start or a target square). The edit competes with the cheese.
* **Channels**: by default the ``top_channels`` channels whose activation at the cheese's cell
  rises most when the cheese is added to other seeded mazes, mouse on the start square
  (``maze.common.cheese_channel_scores``).
* **Value**: each chosen channel gets ``value_multiple`` × its own mean activation at the real
  cheese's cell on those mazes (this network's statistics); ``value`` writes one constant instead.
* **Edit**: the values are written at the target square's activation cell
  (``maze.common.activation_square_cell``) and the cells within ``cell_radius`` of it, in
  every forward pass. ``fraction_edited`` = channels × cells / (C·H·W), the largest over mazes.
* **Success**: the fraction of sampled rollouts whose mouse steps on the target within the step
  budget, the mean number of steps the unedited policy takes to reach the real cheese in the same
  mazes (over the rollouts that reach it within ``max_steps``). Reaching the cheese first ends the
  episode: a failure.

Every (channel count, cell radius) setting of the scan is measured; ``success_at_under_10pct/T``
is the best success for target T among settings that edit under ``max_fraction`` of the layer.
``path_prob`` (teacher-forced geometric mean of P(next move) along the shortest path to the
target, one forward per square) is reported beside it for the main setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from shardlab.envs import maze_geometry, maze_state
from shardlab.envs.eval_mazes import eval_mazes
from shardlab.envs.maze import MazeEnv, MazeEnvConfig, cheese_candidates
from shardlab.envs.maze_config import env_config
from shardlab.evals.maze import common
from shardlab.evals.suite.base import Eval
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.registry import register
from shardlab.evals.suite.results import Result
from shardlab.models.hooks import Edit, hooked
from shardlab.models.impala import preprocess
from shardlab.trainers.bars import progress_kwargs
from shardlab.trainers.rollout import rollout

START = maze_geometry.START
TARGETS = ("top_left", "top_right", "bottom_right", "center")
CONDITIONS = ("baseline", "edited", "cheese_placed")
Values = Union[float, Sequence[float], np.ndarray]


def target_square(name: str, maze_dim: int) -> tuple[int, int]:
    """The inner square a target name stands for in a ``maze_dim`` maze (always open: procgen's
    (even, even) squares are; "center" rounds the middle up to even, the corner for a 3×3 maze)."""
    top = maze_dim - 1
    if name == "top_left":
        return 0, top
    if name == "top_right":
        return top, top
    if name == "bottom_right":
        return top, 0
    if name == "center":
        middle = maze_dim // 2 + (maze_dim // 2) % 2
        return middle, middle
    raise ValueError(f"unknown retargeting target {name!r}; use one of {', '.join(TARGETS)}")


# -- mazes ------------------------------------------------------------------------------------------
def with_region_cheese(states: Sequence[bytes], region: int, rng: np.random.Generator,
                       avoid: Sequence[Sequence[tuple[int, int]]] = ()) -> list[Optional[bytes]]:
    """Each state with its cheese moved to a uniformly random open square of the top-right
    ``region`` (as training's ``rand_region`` places it), never the start nor a square of
    ``avoid[i]``; None for a maze with no such square."""
    placed: list[Optional[bytes]] = []
    for index, state in enumerate(states):
        banned = set(avoid[index]) if index < len(avoid) else set()
        squares = [s for s in cheese_candidates(maze_state.inner_grid(state), region) if s not in banned]
        placed.append(maze_state.with_cheese_at(state, squares[rng.integers(len(squares))]) if squares else None)
    return placed


# -- the edit ---------------------------------------------------------------------------------------
def block_cells(cell: tuple[int, int], radius: int, side: int) -> list[tuple[int, int]]:
    """The cells within ``radius`` rows and columns of ``cell`` on a ``side``×``side`` grid."""
    row, col = cell
    return [(r, c) for r in range(max(0, row - radius), min(side, row + radius + 1))
            for c in range(max(0, col - radius), min(side, col + radius + 1))]


def set_at_cells(values: Values, channels: Sequence[int], rows: torch.Tensor, cols: torch.Tensor) -> Edit:
    """Channels set to ``values`` (one per channel, or one for all) at each batch item's cells:
    item i at (rows[i, k], cols[i, k]) for every k; 1-D rows and cols are one cell per item."""
    chans = torch.as_tensor(list(channels), dtype=torch.long)
    rows, cols = torch.as_tensor(rows).reshape(len(rows), -1), torch.as_tensor(cols).reshape(len(cols), -1)
    written = torch.as_tensor(np.asarray(values, dtype=np.float32)).reshape(-1).expand(len(chans))

    def edit(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(rows):
            raise ValueError(f"edit built for a batch of {len(rows)}, got {x.shape[0]}")
        out = x.clone()
        batch = torch.arange(x.shape[0])[:, None, None]
        out[batch, chans[None, :, None], rows[:, None, :], cols[:, None, :]] = written.to(x.dtype)[None, :, None]
        return out
    return edit


def fraction_edited(channels: Sequence[int], shape: Sequence[int], cells: int = 1) -> float:
    """Share of a (C, H, W) layer's values an edit of ``channels`` at ``cells`` cells writes."""
    return len(set(channels)) * cells / float(np.prod(shape))


def target_edit(states: Sequence[bytes], targets: Sequence[tuple[int, int]], obs: str, side: int,
                channels: Sequence[int], values: Values, radius: int = 0) -> tuple[Edit, int]:
    """The edit writing ``values`` into ``channels`` at each item's target cell (and the cells
    within ``radius``), and the largest number of cells it writes for one item."""
    blocks = [block_cells(common.cell_of(s, tuple(t), obs, side), radius, side) for s, t in zip(states, targets)]
    width = max(len(b) for b in blocks)
    padded = [b + [b[0]] * (width - len(b)) for b in blocks]  # repeats write the same value again
    rows = torch.tensor([[r for r, _ in b] for b in padded])
    cols = torch.tensor([[c for _, c in b] for b in padded])
    return set_at_cells(values, channels, rows, cols), width


def cheese_activation_means(policy: torch.nn.Module, states: Sequence[bytes], obs: str, layer: str) -> np.ndarray:
    """(C,) mean over mazes of each channel's activation at the cheese's cell, mouse on the start."""
    acts = common.layer_activations(policy, [common.at_square(s, START) for s in states], obs, layer)
    side = acts.shape[-1]
    cells = [common.cell_of(s, maze_state.cheese_square(s), obs, side) for s in states]
    rows, cols = torch.tensor([r for r, _ in cells]), torch.tensor([c for _, c in cells])
    return acts[torch.arange(len(states)), :, rows, cols].mean(0).numpy()


# -- success measures --------------------------------------------------------------------------------
def path_probabilities(policy: torch.nn.Module, states: Sequence[bytes], targets: Sequence[tuple[int, int]],
                       obs: str, layer: Optional[str] = None, channels: Sequence[int] = (),
                       value: Values = 0.0, radius: int = 0) -> np.ndarray:
    """Per maze, the geometric mean of P(next move) along the shortest path start → target with the
    mouse on each path square (the target and the cheese square excluded); with ``layer`` the
    ``channels`` are set to ``value`` at the target's cell (and within ``radius``) in every one of
    those forward passes."""
    squares, moves, owner, item_states, item_targets = [], [], [], [], []
    for index, (state, target) in enumerate(zip(states, targets)):
        inner = maze_state.inner_grid(state)
        path = maze_geometry.shortest_path(inner, START, target)
        if len(path) < 2:
            raise ValueError(f"target {target} is the start or unreachable in maze {index}")
        cheese = maze_state.cheese_square(state)
        for square, move in zip(path[:-1], common.path_moves(path)):
            if square == cheese:  # the mouse is never seen on the cheese: the episode ends there
                continue
            squares.append(common.at_square(state, square))
            moves.append(move)
            owner.append(index)
            item_states.append(state)
            item_targets.append(target)
    edits = None
    if layer:
        side = common.layer_activations(policy, states[:1], obs, layer).shape[-1]
        edits = {layer: target_edit(item_states, item_targets, obs, side, channels, value, radius)[0]}
    probs = common.folded_probs(policy, squares, obs, edits)[np.arange(len(moves)), moves]
    owner_array = np.array(owner)
    logs = np.log(np.clip(probs, 1e-12, None))
    return np.array([np.exp(logs[owner_array == i].mean()) for i in range(len(states))])


def arrival_steps(policy: torch.nn.Module, states: Sequence[bytes], targets: Sequence[tuple[int, int]],
                  env_cfg: MazeEnvConfig, rollouts: int, max_steps: int, seed: int, layer: Optional[str] = None,
                  channels: Sequence[int] = (), value: Values = 0.0, radius: int = 0,
                  channels_last: bool = True, progress: bool = False) -> np.ndarray:
    """(mazes, rollouts): the step (1, 2, ...) at which each sampled episode's mouse first stands on
    its maze's target, NaN if not within ``max_steps``; the edit at the target's cell (with
    ``layer``) is applied at every step. An episode that ends (at the cheese) before the target
    never reaches it, unless the cheese was on the target."""
    batch_states = [s for s in states for _ in range(rollouts)]
    batch_targets = np.array([t for t in targets for _ in range(rollouts)])
    env = MazeEnv(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(env_cfg), {
        "num_envs": len(batch_states), "rand_region": None, "max_maze_size": None, "min_maze_size": None, "seed": seed})))
    generator = torch.Generator().manual_seed(seed)
    edits = None
    if layer:
        side = common.layer_activations(policy, states[:1], env_cfg.obs, layer).shape[-1]
        edits = {layer: target_edit(batch_states, [tuple(t) for t in batch_targets], env_cfg.obs, side,
                                    channels, value, radius)[0]}
    cheese_on_target = np.array([maze_state.cheese_square(s) == tuple(t) for s, t in zip(batch_states, batch_targets)])
    arrival = np.full(len(batch_states), np.nan)
    over = np.zeros(len(batch_states), bool)  # reached, or the episode ended
    device = next(policy.parameters()).device
    try:
        obs = env.load_states(batch_states)

        def act(obs: torch.Tensor) -> torch.Tensor:
            logits, _ = policy(preprocess(obs.to(device), channels_last))
            return torch.multinomial(logits.float().softmax(-1).cpu(), 1, generator=generator).squeeze(-1)

        def arrive(t: int, obs, action, reward, done: torch.Tensor, finished: list) -> None:
            done = done.numpy()
            reached = np.zeros(len(batch_states), bool)
            # a finished episode reached the target only if the target held the cheese; after
            # the end procgen has already started a new level, so its squares no longer count
            for index, episode in zip(np.flatnonzero(done), finished):
                reached[index] = episode.reached_cheese and cheese_on_target[index]
            reached |= (np.array(env.mouse_squares) == batch_targets).all(1) & ~done
            arrival[reached & ~over] = t + 1  # steps count from 1
            over[:] |= reached | done
            bar.update(1)

        with torch.inference_mode(), hooked(policy, edits=edits), tqdm(
                total=max_steps, desc="rollouts", disable=not progress, leave=False, **progress_kwargs()) as bar:
            rollout(env, act, obs=obs, steps=max_steps, until="steps", on_step=arrive, stop=over.all)
    finally:
        env.close()
    return arrival.reshape(len(states), rollouts)


def reach_rates(policy: torch.nn.Module, states: Sequence[bytes], targets: Sequence[tuple[int, int]],
                env_cfg: MazeEnvConfig, rollouts: int, max_steps: int, seed: int, **edit) -> np.ndarray:
    """Per maze, the fraction of ``rollouts`` sampled episodes reaching the target within ``max_steps``."""
    return (arrival_steps(policy, states, targets, env_cfg, rollouts, max_steps, seed, **edit) <= max_steps).mean(1)


def best_under(points: Sequence[tuple[float, common.Summary]], max_fraction: float) -> Optional[common.Summary]:
    """The (fraction_edited, success) point with the highest mean success among those editing
    strictly less than ``max_fraction``; None when no point does."""
    kept = [summary for fraction, summary in points if fraction < max_fraction]
    return max(kept, key=lambda s: s.mean) if kept else None


@register("retargeting")
class Retargeting(Eval):
    """Send the agent to chosen squares by writing values into cheese channels at their cells."""

    kinds = ("ppo",)
    layer_fields = ("layer",)

    @dataclass
    class Config:
        """Mazes, targets, channels, values, the scan over edit sizes and rollouts."""

        mazes: int = 16  # seeded mazes, each tried with every target
        targets: list[str] = field(default_factory=lambda: ["top_left", "bottom_right", "top_right"])
        layer: str = common.DEFAULT_LAYER
        region: Optional[int] = None  # the real cheese's top-right region; default: the checkpoint's (required when null)
        channels: Optional[list[int]] = None  # None: the auto-selected cheese channels, best first
        top_channels: int = 4  # channels of the main setting (path_prob, bars PNG)
        cell_radius: int = 0  # cells of the main setting: the target's cell and those within this radius
        channel_mazes: int = 64  # seeded mazes (cheese anywhere) for choosing channels and their values
        value_multiple: float = 10.0  # written value = this × the channel's mean activation at the cheese
        value: Optional[float] = None  # a constant written into every channel instead (e.g. 5.5)
        channel_counts: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # the success scan ...
        cell_radii: list[int] = field(default_factory=lambda: [0, 1])  # ... over channels × cells
        max_fraction: float = 0.1  # success_at_under_{100·max_fraction}pct: settings editing less
        rollouts: int = 4  # sampled episodes per maze, target and setting
        max_steps: int = 200  # per unedited rollout towards the real cheese (the step budget's sample)
        scan_scales: list[float] = field(default_factory=list)  # path_prob with the values × these (PNG)
        min_size: Optional[int] = None  # default: max_size (the largest mazes)
        max_size: Optional[int] = None  # default: the training max

        def __post_init__(self) -> None:
            if not self.targets or not self.channel_counts or not self.cell_radii:
                raise ValueError("retargeting targets, channel_counts and cell_radii must each list at least one value")
            for name in self.targets:
                target_square(name, 5)  # unknown names fail before anything runs (exit 2)
            if self.channels is not None and (not self.channels or min(self.channels) < 0):
                raise ValueError(f"retargeting channels must be non-negative channel indices, got {self.channels}")
            if min(self.mazes, self.top_channels, self.channel_mazes, self.rollouts, self.max_steps,
                   *self.channel_counts) < 1:
                raise ValueError("retargeting mazes, top_channels, channel_mazes, rollouts, max_steps and "
                                 "channel_counts must be >= 1")
            if min(self.cell_radius, *self.cell_radii) < 0 or (self.region is not None and self.region < 0):
                raise ValueError("retargeting cell_radius, cell_radii and region must be >= 0")
            if not 0 < self.max_fraction <= 1:
                raise ValueError(f"retargeting max_fraction must lie in (0, 1], got {self.max_fraction}")
            for key in ("min_size", "max_size"):
                if getattr(self, key) is not None and getattr(self, key) < 3:
                    raise ValueError(f"retargeting.{key} must be >= 3 (the smallest maze) or null, "
                                     f"got {getattr(self, key)}")

    def check(self, train_config: DictConfig) -> None:
        """Refuse before anything runs when the cheese region cannot be known."""
        common.training_region(self.config.region, train_config, "retargeting")
        cfg, env = self.config, common.train_env(train_config)
        max_size = cfg.max_size or env.max_size
        common.require_mazes("retargeting", cheese="anywhere", region=5, min_size=cfg.min_size or max_size,
                             max_size=max_size, mode=env.mode)

    def check_model(self, policy, train_config) -> None:
        """Refuse before anything runs when the network lacks a named layer, channel or more channels than it has."""
        from shardlab.evals.maze.common import require_channels
        from shardlab.evals.suite.registry import EvalError

        cfg = self.config
        super().check_model(policy, train_config)
        count = max(cfg.top_channels, *cfg.channel_counts)
        if cfg.channels is None:
            require_channels(policy, train_config, "retargeting top_channels/channel_counts", None, cfg.layer,
                             count=count)
            return
        require_channels(policy, train_config, "retargeting.channels", cfg.channels, cfg.layer)
        if count > len(cfg.channels):
            raise EvalError(f"retargeting top_channels/channel_counts ask for {count} channels but "
                            f"retargeting.channels lists {len(cfg.channels)}; list more or ask for fewer")

    def run(self, ctx: EvalContext) -> Result:
        """Place the real cheese, choose channels and values, find the step budget, then measure
        every target under the main setting and the scan."""
        cfg, policy, env = self.config, ctx.policy, common.train_env(ctx.train_config)
        max_size = cfg.max_size or env.max_size
        min_size = cfg.min_size or max_size
        region = common.training_region(cfg.region, ctx.train_config, "retargeting")
        result = Result()
        result.add("region", region)
        mazes = eval_mazes(ctx.count(cfg.mazes), ctx.seed, cheese="anywhere", min_size=min_size,
                           max_size=max_size, mode=env.mode)
        avoid = [[target_square(name, m.maze_dim) for name in cfg.targets] for m in mazes]
        rng = np.random.default_rng(np.random.SeedSequence([ctx.seed, 1]))  # not the eval_mazes streams
        states = [s for s in with_region_cheese([m.state for m in mazes], region, rng, avoid) if s is not None]
        if not states:
            raise ValueError(f"no maze has a free square in the top-right region {region} for the cheese "
                             "(besides the start and the targets); use larger mazes or a larger region")
        shape = tuple(common.layer_activations(policy, states[:1], env.obs, cfg.layer).shape[1:])
        ranked, values = self._channels_and_values(ctx, result, env, max_size, shape)
        env_cfg = env_config(ctx.train_config, seed=ctx.seed)
        rollout = dict(env_cfg=env_cfg, rollouts=cfg.rollouts, seed=ctx.seed,
                       channels_last=ctx.train_config.model.channels_last)
        budget = self._step_budget(result, policy, states, rollout)

        main = (cfg.top_channels, cfg.cell_radius)
        settings = list(dict.fromkeys([main, *((k, r) for k in cfg.channel_counts for r in cfg.cell_radii)]))
        if max(k for k, _ in settings) > len(ranked):
            raise ValueError(f"retargeting asks for {max(k for k, _ in settings)} channels but has "
                             f"{len(ranked)} ({cfg.channels or 'the layer'}); lower top_channels/channel_counts")
        pct = f"{100 * cfg.max_fraction:g}"
        summaries: dict[str, dict[str, common.Summary]] = {}
        scans: dict[str, list[tuple[int, int, float, common.Summary]]] = {}
        for name in tqdm(cfg.targets, desc="retargeting", disable=not ctx.progress, **progress_kwargs()):
            targets = [target_square(name, maze_state.layout(s).maze_dim) for s in states]
            placed = [maze_state.with_cheese_at(s, t) for s, t in zip(states, targets)]
            success, sizes = {}, {}
            for count, radius in settings:
                edit = dict(layer=cfg.layer, channels=ranked[:count], value=values[:count], radius=radius)
                arrival = arrival_steps(policy, states, targets, max_steps=budget, **rollout, **edit)
                success[count, radius] = common.summarise((arrival <= budget).mean(1))
                cells = target_edit(states, targets, env.obs, shape[-1], ranked[:count], 0.0, radius)[1]
                sizes[count, radius] = fraction_edited(ranked[:count], shape, cells)
            edit = dict(layer=cfg.layer, channels=ranked[:main[0]], value=values[:main[0]], radius=main[1])
            runs = {"baseline": (states, {}), "edited": (states, edit), "cheese_placed": (placed, {})}
            summaries[name] = {}
            for condition, (run_states, kwargs) in runs.items():
                path = common.summarise(path_probabilities(policy, run_states, targets, env.obs, **kwargs))
                if condition == "edited":
                    reach = success[main]
                else:
                    arrival = arrival_steps(policy, run_states, targets, max_steps=budget, **rollout)
                    reach = common.summarise((arrival <= budget).mean(1))
                summaries[name][f"path_prob/{condition}"] = path
                summaries[name][f"success/{condition}"] = reach
                result.add(f"{name}/path_prob/{condition}/median", path.median, n=path.n)
                result.add(f"{name}/path_prob/{condition}/mean", path.mean, stderr=path.stderr, n=path.n)
                result.add(f"{name}/success/{condition}", reach.mean, stderr=reach.stderr, n=reach.n,
                           higher_is_better=True if condition == "edited" else None)
            scans[name] = [(k, r, sizes[k, r], success[k, r]) for k, r in settings]
            for count, radius, size, summary in scans[name]:
                prefix = f"{name}/scan/channels={count}/radius={radius}"
                result.add(f"{prefix}/fraction_edited", size)
                result.add(f"{prefix}/success", summary.mean, stderr=summary.stderr, n=summary.n)
            best = best_under([(size, summary) for _, _, size, summary in scans[name]], cfg.max_fraction)
            result.add(f"success_at_under_{pct}pct/{name}", best.mean if best else math.nan,
                       stderr=best.stderr if best else None, n=best.n if best else 0, higher_is_better=True)
            for scale in cfg.scan_scales:
                path = common.summarise(path_probabilities(policy, states, targets, env.obs, layer=cfg.layer,
                                                           channels=ranked[:main[0]],
                                                           value=scale * values[:main[0]], radius=main[1]))
                summaries[name][f"scale/{scale:g}"] = path
                result.add(f"{name}/scan/scale={scale:g}/path_prob/median", path.median, n=path.n)
                result.add(f"{name}/scan/scale={scale:g}/path_prob/mean", path.mean, stderr=path.stderr, n=path.n)
        result.add("fraction_edited", max(size for scan in scans.values() for k, r, size, _ in scan if (k, r) == main))
        result.artifacts.append(self._png(ctx, summaries, ranked[:main[0]], budget))
        result.artifacts.append(self._success_png(ctx, summaries, scans, budget))
        if cfg.scan_scales:
            result.artifacts.append(self._scan_png(ctx, summaries, ranked[:main[0]]))
        return result

    def _channels_and_values(self, ctx: EvalContext, result: Result, env: common.TrainEnv, max_size: int,
                             shape: tuple[int, ...]) -> tuple[list[int], np.ndarray]:
        """The channels in rank order and the value each gets, recorded as metrics: chosen
        automatically (or as configured) on seeded mazes with the cheese anywhere."""
        cfg = self.config
        sign = cfg.value if cfg.value is not None else cfg.value_multiple
        channel_mazes = eval_mazes(ctx.count(cfg.channel_mazes), ctx.seed + 1, cheese="anywhere",
                                   max_size=max_size, mode=env.mode)
        channel_states = [m.state for m in channel_mazes]
        if cfg.channels is not None:
            ranked = list(cfg.channels)
            if any(not 0 <= c < shape[0] for c in ranked):
                raise ValueError(f"channels {ranked} must lie in 0..{shape[0] - 1} for layer {cfg.layer}")
        else:
            scores = common.cheese_channel_scores(ctx.policy, channel_states, env.obs, cfg.layer)
            ranked = common.choose_channels(scores, max([cfg.top_channels, *cfg.channel_counts]), sign)
        means = cheese_activation_means(ctx.policy, channel_states, env.obs, cfg.layer)[ranked]
        values = np.full(len(ranked), cfg.value, np.float32) if cfg.value is not None else \
            (cfg.value_multiple * means).astype(np.float32)
        for rank, channel in enumerate(ranked):
            result.add(f"channels/rank={rank}", channel, n=len(channel_states))
            if cfg.channels is None:
                result.add(f"channels/rank={rank}/cheese_minus_no_cheese", float(scores[channel]),
                           n=len(channel_states))
            result.add(f"channels/rank={rank}/mean_at_cheese", float(means[rank]), n=len(channel_states))
            result.add(f"channels/rank={rank}/value", float(values[rank]))
        return ranked, values

    def _step_budget(self, result: Result, policy: torch.nn.Module, states: list[bytes], rollout: dict) -> int:
        """The mean number of steps the unedited policy takes to reach the real cheese (rollouts
        that reach it within max_steps), floored; max_steps when none does."""
        cfg = self.config
        cheese = [maze_state.cheese_square(s) for s in states]
        arrival = arrival_steps(policy, states, cheese, max_steps=cfg.max_steps, **rollout)
        reached = arrival[np.isfinite(arrival)]
        steps = common.summarise(reached)
        result.add("step_budget/mean", steps.mean, stderr=steps.stderr, n=steps.n)
        result.add("step_budget/reached_cheese", float(np.isfinite(arrival).mean()), n=arrival.size)
        budget = max(1, math.floor(steps.mean)) if len(reached) else cfg.max_steps
        result.add("step_budget", budget)
        return budget

    def _png(self, ctx: EvalContext, summaries: dict, channels: list[int], budget: int) -> str:
        """Grouped bars per target: path probability and success, baseline / edited / cheese placed."""
        cfg = self.config
        fig, axes = common.new_panels(2, size_inches=4.5)
        width = 0.8 / len(CONDITIONS)
        colours = {"baseline": "#9e9e9e", "edited": "#d62728", "cheese_placed": "#d4a017"}
        positions = np.arange(len(cfg.targets))
        for ax, metric, label in ((axes[0], "path_prob", "geometric-mean path probability (mean)"),
                                  (axes[1], "success", f"fraction of rollouts reaching the target in {budget} steps")):
            for offset, condition in enumerate(CONDITIONS):
                stats = [summaries[t][f"{metric}/{condition}"] for t in cfg.targets]
                ax.bar(positions + (offset - 1) * width, [s.mean for s in stats], width,
                       yerr=np.nan_to_num([s.stderr for s in stats]), color=colours[condition], label=condition,
                       capsize=2)
            ax.set_xticks(positions, [t.replace("_", " ") for t in cfg.targets])
            ax.set_ylim(0, 1.02)
            ax.set_ylabel(label, fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"channels {channels} at the target's cell (radius {cfg.cell_radius}) of {cfg.layer}",
                     fontsize=9)
        fig.tight_layout()
        return common.save_figure(fig, ctx.artifact("retargeting.png"))

    def _success_png(self, ctx: EvalContext, summaries: dict, scans: dict, budget: int) -> str:
        """Success against the fraction of the layer edited, per target (one line per cell radius),
        beside the unedited policy (dashed) and the max_fraction bound (dotted)."""
        cfg = self.config
        fig, axes = common.new_panels(len(cfg.targets), size_inches=4.0)
        for ax, target in zip(axes, cfg.targets):
            for index, radius in enumerate(sorted({r for _, r, _, _ in scans[target]})):
                points = sorted((size, s) for _, r, size, s in scans[target] if r == radius)
                ax.errorbar([p[0] for p in points], [p[1].mean for p in points],
                            yerr=np.nan_to_num([p[1].stderr for p in points]), marker="o", capsize=2,
                            color=f"C{index}", label=f"cell radius {radius}")
            ax.axhline(summaries[target]["success/baseline"].mean, color="gray", linestyle="--", label="unedited")
            ax.axvline(cfg.max_fraction, color="black", linestyle=":", alpha=0.6)
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("fraction of the layer's activations edited")
            ax.set_ylabel(f"reached the target within {budget} steps")
            ax.set_title(target.replace("_", " "), fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return common.save_figure(fig, ctx.artifact("retargeting_success.png"))

    def _scan_png(self, ctx: EvalContext, summaries: dict, channels: list[int]) -> str:
        """Mean path probability against the scale of the written values, per target, beside the
        unedited policy (dashed) and the real cheese on the target (dotted)."""
        cfg = self.config
        fig, axes = common.new_panels(1, size_inches=5.0)
        ax = axes[0]
        scales = sorted(cfg.scan_scales)
        for index, target in enumerate(cfg.targets):
            colour = f"C{index}"
            stats = [summaries[target][f"scale/{s:g}"] for s in scales]
            ax.errorbar(scales, [s.mean for s in stats], yerr=np.nan_to_num([s.stderr for s in stats]),
                        marker="o", color=colour, capsize=2, label=target.replace("_", " "))
            ax.axhline(summaries[target]["path_prob/baseline"].mean, color=colour, linestyle="--", alpha=0.6)
            ax.axhline(summaries[target]["path_prob/cheese_placed"].mean, color=colour, linestyle=":", alpha=0.8)
        ax.set_xlabel("scale of the written values (1 = the configured values)")
        ax.set_ylabel("geometric-mean path probability (mean)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="dashed: unedited, dotted: cheese on target", title_fontsize=7)
        ax.set_title(f"channels {channels} of {cfg.layer}", fontsize=8)
        fig.tight_layout()
        return common.save_figure(fig, ctx.artifact("retargeting_scan.png"))
