"""Retargeting a maze policy by writing values into "cheese channels" at a target square's cell
(Mini et al.: setting channel 55 of ``embedder.block2.res1.resadd_out`` to 5.5 at one cell sends
the published agent towards that square), measured as the published prediction states it:
editing < 10% of activations sends the agent to the top-left / bottom-right with ≥ 33% success.

* **Mazes**: seeded mazes of the largest training size whose real cheese stays where training put
  it: a seeded random open square of the top-right ``region`` (the checkpoint's
  ``env.rand_region``; never the start or a target square). The edit competes with the cheese.
  They come in two sets with no wall layout in both: ``mazes`` *selection* mazes, where the step
  budget, the scan and the choice of the edit setting are made, and ``confirmation_mazes``
  *confirmation* mazes, where only the chosen setting and the unedited policy are measured.
* **Channels**: by default the ``top_channels`` channels whose activation at the cheese's cell
  rises most when the cheese is added to other seeded mazes, mouse on the start square
  (``maze.common.cheese_channel_scores``).
* **Value**: each chosen channel gets ``value_multiple`` × its own mean activation at the real
  cheese's cell on those mazes (this network's statistics); ``value`` writes one constant instead.
* **Edit**: the values are written at the target square's activation cell
  (``maze.common.activation_square_cell``) and the cells within ``cell_radius`` of it, in
  every forward pass. ``fraction_edited`` = channels × cells written / (C × the cells the inner
  maze covers by that same square → cell map): padding cells are not activations of the maze, and
  every written cell counts (also one in the padding), so the fraction is never understated; the
  largest over mazes.
* **Success**: the fraction of sampled rollouts whose mouse steps on the target within the step
  budget, the mean number of steps the unedited policy takes to reach the real cheese in the
  selection mazes (over the rollouts that reach it within ``max_steps``). Reaching the cheese
  first ends the episode: a failure. Rollouts of one maze are not independent: every success is a
  mean over rollouts with a bootstrap over whole mazes.

Every (channel count, cell radius) setting of the scan is measured on the selection mazes
(``T/scan/…``); the chosen setting for target T (``T/chosen/{channels,radius,fraction_edited}``)
is the one with the best selection success among those editing under ``max_fraction`` of the
maze's activations (on every selection and confirmation maze). The headline is that setting on
the confirmation mazes: ``T/confirmation/success`` (= ``success_at_under_10pct/T``), the unedited
policy there (``T/confirmation/baseline``) and their paired difference over confirmation mazes
(``T/confirmation/success_minus_baseline``). ``T/edit_overlaps_cheese_region`` /
``…_cheese_cell`` count the confirmation mazes where the chosen edit writes a cell that also holds
a square of the cheese's region / the real cheese itself. ``path_prob`` (teacher-forced geometric
mean of P(next move) along the shortest path to the target, one forward per square) is reported
beside the main setting's success on the selection mazes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence, Union

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.envs import maze_geometry, maze_state
from shardlab.envs.eval_mazes import EvalMaze, eval_mazes
from shardlab.envs.maze import MazeEnvConfig, cheese_candidates, make
from shardlab.envs.maze_config import env_config
from shardlab.envs.rollout import rollout
from shardlab.evals.maze import common
from shardlab.evals.maze.splits import layout_key, split_by_layout
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import Eval, EvalError, register
from shardlab.evals.suite.context import EvalContext
from shardlab.evals.suite.results import Result
from shardlab.figures import write_png_atomic
from shardlab.models.hooks import Edit, hooked
from shardlab.models.impala import preprocess

START = maze_geometry.START
TARGETS = ("top_left", "top_right", "bottom_right", "center")
CONDITIONS = ("baseline", "edited", "cheese_placed")
Values = Union[float, Sequence[float], np.ndarray]
Setting = tuple[int, int]  # (channel count, cell radius)


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


def maze_cells(state: bytes, obs: str, side: int) -> set[tuple[int, int]]:
    """The activation cells of a ``side``×``side`` layer that hold a square of ``state``'s inner
    maze (by :func:`common.cell_of`, the map the edit uses); the rest is wall padding."""
    dim = maze_state.layout(state).maze_dim
    return {common.cell_of(state, (x, y), obs, side) for y in range(dim) for x in range(dim)}


def fraction_edited(channels: Sequence[int], layer_channels: int, written: int, covered: int) -> float:
    """Share of a maze's activations (``layer_channels`` × the ``covered`` cells its inner maze
    covers) that an edit of ``channels`` at ``written`` cells writes."""
    return len(set(channels)) * written / float(layer_channels * covered)


def edit_cells(state: bytes, target: tuple[int, int], obs: str, side: int, radius: int) -> list[tuple[int, int]]:
    """The cells an edit at ``target``'s cell with ``radius`` writes in ``state``'s maze."""
    return block_cells(common.cell_of(state, tuple(target), obs, side), radius, side)


def largest_fraction(states: Sequence[bytes], targets: Sequence[tuple[int, int]], obs: str,
                     shape: Sequence[int], channels: Sequence[int], radius: int) -> float:
    """The largest :func:`fraction_edited` of one setting over the mazes (0 without mazes)."""
    side = shape[-1]
    return max((fraction_edited(channels, shape[0], len(edit_cells(s, t, obs, side, radius)),
                                len(maze_cells(s, obs, side))) for s, t in zip(states, targets)), default=0.0)


def cheese_overlaps(states: Sequence[bytes], targets: Sequence[tuple[int, int]], obs: str, side: int,
                    radius: int, region: int) -> tuple[int, int]:
    """How many mazes' edits write a cell that also holds a square of the cheese's top-right
    ``region``, and how many write the real cheese's own cell (there the edit may act through
    the cheese's own signal rather than instead of it)."""
    region_hits = cheese_hits = 0
    for state, target in zip(states, targets):
        written = set(edit_cells(state, target, obs, side, radius))
        squares = maze_geometry.region_squares(maze_state.inner_grid(state), region)
        region_hits += bool(written & {common.cell_of(state, square, obs, side) for square in squares})
        cheese_hits += common.cell_of(state, maze_state.cheese_square(state), obs, side) in written
    return region_hits, cheese_hits


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
    env = make(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(env_cfg), {
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


def choice_mazes(count: int, seed: int, max_size: int, mode: str) -> list[EvalMaze]:
    """The seeded mazes (cheese anywhere, the eval's seed + 1) on which the channels and the values
    written into them are chosen."""
    return eval_mazes(count, seed + 1, cheese="anywhere", max_size=max_size, mode=mode)


def written_values(channels: Sequence[int], value_multiple: float, value: Optional[float] = None,
                   means: Optional[np.ndarray] = None) -> np.ndarray:
    """What the edit writes into each of ``channels``: ``value`` in every one, else ``value_multiple``
    × the channel's mean activation at the cheese (``means``: every channel's, from
    :func:`cheese_activation_means`)."""
    if value is not None:
        return np.full(len(channels), value, np.float32)
    return (value_multiple * means[list(channels)]).astype(np.float32)


def reach_estimate(reached: np.ndarray) -> stats.Estimate:
    """The fraction of rollouts reaching the target from (mazes, rollouts) flags: the rollouts of
    one maze are not independent, so the interval comes from a bootstrap over whole mazes."""
    reached = np.asarray(reached, dtype=float)
    if reached.size == 0:
        return stats.undefined("no mazes", 0, "mazes")
    rates = reached.mean(1)
    if np.ptp(rates) == 0:
        # every maze the same (typically all 0 or all 1): every resample is too, and a bootstrap
        # interval has width 0. A per-maze rate in [0, 1] has at most the variance of one
        # Bernoulli trial, so Wilson over mazes is a valid (conservative) interval instead
        return replace(stats.proportion(float(rates.sum()), n=len(rates), unit="mazes"),
                       note="every maze gave the same rate: Wilson interval over mazes")
    return stats.cluster_mean(reached.ravel(), np.repeat(np.arange(len(reached)), reached.shape[1]), "mazes")


def choose_setting(scan: dict[Setting, tuple[float, float]], max_fraction: float) -> Optional[Setting]:
    """Of ``scan``, setting (channel count, cell radius) → (fraction_edited, success), the setting
    with the highest success among those editing strictly less than ``max_fraction``, the first in
    scan order on a tie; None when no setting does."""
    kept = [setting for setting, (fraction, _) in scan.items() if fraction < max_fraction]
    return max(kept, key=lambda setting: scan[setting][1]) if kept else None


@dataclass(frozen=True)
class Runner:
    """How one eval run plays and scores its mazes: the policy, the rollout settings, the step budget."""

    policy: torch.nn.Module
    rollout: dict  # env_cfg, rollouts, seed, channels_last of arrival_steps
    budget: int

    def reached(self, states: Sequence[bytes], targets: Sequence[tuple[int, int]], **edit) -> np.ndarray:
        """(mazes, rollouts) flags: the sampled episode stepped on its maze's target within the budget."""
        return arrival_steps(self.policy, states, targets, max_steps=self.budget, **self.rollout, **edit) <= self.budget

    def path(self, states: Sequence[bytes], targets: Sequence[tuple[int, int]], **edit) -> np.ndarray:
        """Per maze, the teacher-forced geometric-mean path probability to the target."""
        return path_probabilities(self.policy, states, targets, self.rollout["env_cfg"].obs, **edit)


@register("retargeting")
class Retargeting(Eval):
    """Send the agent to chosen squares by writing values into cheese channels at their cells."""

    kinds = ("ppo",)
    layer_fields = ("layer",)
    version = 2  # 2: the edit setting chosen on selection mazes and confirmed on other layouts

    @dataclass
    class Config:
        """Mazes, targets, channels, values, the scan over edit sizes and rollouts."""

        mazes: int = 16  # selection mazes, each tried with every target: step budget, scan, chosen setting
        confirmation_mazes: Optional[int] = None  # the chosen setting on other layouts; default: mazes
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
            if self.confirmation_mazes is not None and self.confirmation_mazes < 1:
                raise ValueError(f"retargeting.confirmation_mazes must be >= 1 or null, got {self.confirmation_mazes}")
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
        """Place the real cheese, choose channels and values, find the step budget and scan every
        setting on the selection mazes, then measure each target's chosen setting on the
        confirmation mazes."""
        cfg, policy, env = self.config, ctx.policy, common.train_env(ctx.train_config)
        result = Result()
        region = common.training_region(cfg.region, ctx.train_config, "retargeting")
        result.add("region", region, kind="setting")
        states, confirm, channel_mazes, shared = self._mazes(ctx, env, region)
        # the channels are chosen from activations (not from success) on mazes that may repeat a layout
        result.add("confirmation/layouts_shared_with_channel_mazes", shared, kind="count")
        shape = tuple(common.layer_activations(policy, states[:1], env.obs, cfg.layer).shape[1:])
        ranked, values = self._channels_and_values(ctx, result, env, channel_mazes, shape)
        env_cfg = env_config(ctx.train_config, seed=ctx.seed)
        rollout = dict(env_cfg=env_cfg, rollouts=cfg.rollouts, seed=ctx.seed,
                       channels_last=ctx.train_config.model.channels_last)
        budget = self._step_budget(result, policy, states, rollout)
        runner = Runner(policy, rollout, budget)

        main = (cfg.top_channels, cfg.cell_radius)
        settings = list(dict.fromkeys([main, *((k, r) for k in cfg.channel_counts for r in cfg.cell_radii)]))
        if max(k for k, _ in settings) > len(ranked):
            raise ValueError(f"retargeting asks for {max(k for k, _ in settings)} channels but has "
                             f"{len(ranked)} ({cfg.channels or 'the layer'}); lower top_channels/channel_counts")
        edit_of = lambda setting, scale=1.0: dict(layer=cfg.layer, channels=ranked[:setting[0]],
                                                  value=scale * values[:setting[0]], radius=setting[1])
        summaries: dict[str, dict[str, stats.Estimate]] = {}
        scans: dict[str, list[tuple[int, int, float, stats.Estimate]]] = {}
        chosen: dict[str, tuple[Optional[Setting], stats.Estimate]] = {}
        main_fractions = []
        for name in tqdm(cfg.targets, desc="retargeting", disable=not ctx.progress, **progress_kwargs()):
            targets = [target_square(name, maze_state.layout(s).maze_dim) for s in states]
            confirm_targets = [target_square(name, maze_state.layout(s).maze_dim) for s in confirm]
            success, sizes = {}, {}
            for count, radius in settings:
                success[count, radius] = reach_estimate(runner.reached(states, targets, **edit_of((count, radius))))
                # every maze either set can be scored on: the headline edits under max_fraction on each
                sizes[count, radius] = max(
                    largest_fraction(states, targets, env.obs, shape, ranked[:count], radius),
                    largest_fraction(confirm, confirm_targets, env.obs, shape, ranked[:count], radius))
            main_fractions.append(sizes[main])
            summaries[name] = self._conditions(result, name, runner, states, targets, success[main], edit_of(main))
            scans[name] = [(k, r, sizes[k, r], success[k, r]) for k, r in settings]
            for count, radius, size, estimate in scans[name]:
                prefix = f"{name}/scan/channels={count}/radius={radius}"
                result.add(f"{prefix}/fraction_edited", size, kind="setting")
                result.add(f"{prefix}/success", estimate)
            setting = choose_setting({(k, r): (size, s.value) for k, r, size, s in scans[name]}, cfg.max_fraction)
            edit = edit_of(setting) if setting is not None else None
            note = None
            if setting is not None:
                region_hits, cheese_hits = cheese_overlaps(confirm, confirm_targets, env.obs, shape[-1], setting[1],
                                                           region)
                result.add(f"{name}/edit_overlaps_cheese_region", region_hits, kind="count")
                result.add(f"{name}/edit_overlaps_cheese_cell", cheese_hits, kind="count")
                if region_hits:
                    note = f"the edit writes a cell of the cheese's region in {region_hits} of {len(confirm)} mazes"
            chosen[name] = (setting, self._confirm(result, name, runner, confirm, confirm_targets, setting,
                                                   sizes.get(setting), edit, note))
            for scale in cfg.scan_scales:
                path = runner.path(states, targets, **edit_of(main, scale))
                summaries[name][f"scale/{scale:g}"] = stats.mean(path, "mazes")
                result.add(f"{name}/scan/scale={scale:g}/path_prob/median", stats.median(path, "mazes"))
                result.add(f"{name}/scan/scale={scale:g}/path_prob/mean", summaries[name][f"scale/{scale:g}"])
        result.add("fraction_edited", max(main_fractions), kind="setting")
        result.artifacts.append(self._png(ctx, summaries, ranked[:main[0]], budget))
        result.artifacts.append(self._success_png(ctx, summaries, scans, chosen, budget))
        if cfg.scan_scales:
            result.artifacts.append(self._scan_png(ctx, summaries, ranked[:main[0]]))
        return result

    def _mazes(self, ctx: EvalContext, env: common.TrainEnv, region: int
               ) -> tuple[list[bytes], list[bytes], list[EvalMaze], int]:
        """Selection and confirmation mazes (no layout in both) with the real cheese in the region,
        the channel mazes (cheese anywhere) that choose the channels and their values, and how
        many confirmation layouts the channel mazes share."""
        cfg = self.config
        max_size = cfg.max_size or env.max_size
        filters = dict(cheese="anywhere", min_size=cfg.min_size or max_size, max_size=max_size, mode=env.mode)
        pools = split_by_layout(ctx.count(cfg.mazes), ctx.count(cfg.confirmation_mazes or cfg.mazes), ctx.seed,
                                **filters)
        placed = []
        for stream, pool in enumerate(pools, start=1):
            avoid = [[target_square(name, m.maze_dim) for name in cfg.targets] for m in pool]
            rng = np.random.default_rng(np.random.SeedSequence([ctx.seed, stream]))  # not the eval_mazes streams
            states = with_region_cheese([m.state for m in pool], region, rng, avoid)
            placed.append([s for s in states if s is not None])
        if not placed[0] or not placed[1]:
            raise ValueError(f"no maze has a free square in the top-right region {region} for the cheese "
                             "(besides the start and the targets); use larger mazes or a larger region")
        choice = choice_mazes(ctx.count(cfg.channel_mazes), ctx.seed, max_size, env.mode)
        shared = len({layout_key(m.state) for m in pools[1]} & {layout_key(m.state) for m in choice})
        return placed[0], placed[1], choice, shared

    @staticmethod
    def _conditions(result: Result, name: str, runner: Runner, states: list[bytes], targets: list[tuple[int, int]],
                    edited: stats.Estimate, edit: dict) -> dict[str, stats.Estimate]:
        """Path probability and success of the unedited policy, the main setting and the real
        cheese placed on the target, on the selection mazes; returns the estimates for the PNGs."""
        placed = [maze_state.with_cheese_at(s, t) for s, t in zip(states, targets)]
        runs = {"baseline": (states, {}), "edited": (states, edit), "cheese_placed": (placed, {})}
        shown = {}
        for condition, (run_states, kwargs) in runs.items():
            path = runner.path(run_states, targets, **kwargs)
            reach = edited if condition == "edited" else reach_estimate(runner.reached(run_states, targets))
            shown[f"path_prob/{condition}"] = stats.mean(path, "mazes")
            shown[f"success/{condition}"] = reach
            result.add(f"{name}/path_prob/{condition}/median", stats.median(path, "mazes"))
            result.add(f"{name}/path_prob/{condition}/mean", shown[f"path_prob/{condition}"])
            result.add(f"{name}/success/{condition}", reach, higher_is_better=True if condition == "edited" else None)
        return shown

    def _confirm(self, result: Result, name: str, runner: Runner, states: list[bytes],
                 targets: list[tuple[int, int]], setting: Optional[Setting], fraction: Optional[float],
                 edit: Optional[dict], note: Optional[str] = None) -> stats.Estimate:
        """The chosen setting and the unedited policy on the confirmation mazes: success (with
        ``note`` added to its row), baseline and their difference paired by maze; returns the success."""
        pct = f"{100 * self.config.max_fraction:g}"
        unedited = runner.reached(states, targets)
        baseline = reach_estimate(unedited)
        result.add(f"{name}/confirmation/baseline", baseline)
        if setting is None:
            why = f"no setting of the scan edits under {pct}% of the maze's activations"
            success = stats.undefined(why, len(states), "mazes")
            difference = stats.undefined(why, len(states), "mazes")
        else:
            result.add(f"{name}/chosen/channels", setting[0], kind="setting")
            result.add(f"{name}/chosen/radius", setting[1], kind="setting")
            result.add(f"{name}/chosen/fraction_edited", fraction, kind="setting")
            reached = runner.reached(states, targets, **edit)
            success = reach_estimate(reached)
            if note:
                success = replace(success, note="; ".join(filter(None, [success.note, note])))
            # per maze, the share of rollouts reaching the target, edited minus unedited
            difference = stats.paired_difference(reached.mean(1), unedited.mean(1), "mazes")
            if difference.stderr == 0:  # a t interval of width 0 would claim certainty
                difference = replace(difference, stderr=None, ci_low=None, ci_high=None,
                                     note="every maze's difference is the same: no spread for an interval")
        result.add(f"{name}/confirmation/success", success, higher_is_better=True)
        result.add(f"{name}/confirmation/success_minus_baseline", difference, higher_is_better=True)
        result.add(f"success_at_under_{pct}pct/{name}", success, higher_is_better=True)
        return success

    def _channels_and_values(self, ctx: EvalContext, result: Result, env: common.TrainEnv, channel_mazes: list,
                             shape: tuple[int, ...]) -> tuple[list[int], np.ndarray]:
        """The channels in rank order and the value each gets, recorded as settings: chosen
        automatically (or as configured) on seeded mazes with the cheese anywhere."""
        cfg = self.config
        sign = cfg.value if cfg.value is not None else cfg.value_multiple
        channel_states = [m.state for m in channel_mazes]
        if cfg.channels is not None:
            ranked = list(cfg.channels)
            if any(not 0 <= c < shape[0] for c in ranked):
                raise ValueError(f"channels {ranked} must lie in 0..{shape[0] - 1} for layer {cfg.layer}")
        else:
            scores = common.cheese_channel_scores(ctx.policy, channel_states, env.obs, cfg.layer)
            ranked = common.choose_channels(scores, max([cfg.top_channels, *cfg.channel_counts]), sign)
        every = cheese_activation_means(ctx.policy, channel_states, env.obs, cfg.layer)
        means, values = every[ranked], written_values(ranked, cfg.value_multiple, cfg.value, every)
        result.add("channels/channel_mazes", len(channel_states), kind="count")
        for rank, channel in enumerate(ranked):
            # the ranking and the values are choices made from these mazes: settings, not estimates
            result.add(f"channels/rank={rank}", channel, kind="setting")
            if cfg.channels is None:
                result.add(f"channels/rank={rank}/cheese_minus_no_cheese", float(scores[channel]), kind="setting")
            result.add(f"channels/rank={rank}/mean_at_cheese", float(means[rank]), kind="setting")
            result.add(f"channels/rank={rank}/value", float(values[rank]), kind="setting")
        return ranked, values

    def _step_budget(self, result: Result, policy: torch.nn.Module, states: list[bytes], rollout: dict) -> int:
        """The mean number of steps the unedited policy takes to reach the real cheese (rollouts
        that reach it within max_steps), floored; max_steps when none does."""
        cfg = self.config
        cheese = [maze_state.cheese_square(s) for s in states]
        arrival = arrival_steps(policy, states, cheese, max_steps=cfg.max_steps, **rollout)
        mazes = np.repeat(np.arange(len(states)), arrival.shape[1])
        reached = np.isfinite(arrival).ravel()
        if reached.any():
            steps = stats.cluster_mean(arrival.ravel()[reached], mazes[reached], "mazes")
        else:
            steps = stats.undefined(f"no rollout reached the cheese within {cfg.max_steps} steps", 0, "mazes")
        result.add("step_budget/mean", steps)
        result.add("step_budget/reached_cheese", reach_estimate(np.isfinite(arrival)))
        budget = max(1, math.floor(steps.value)) if reached.any() else cfg.max_steps
        result.add("step_budget", budget, kind="setting")
        return budget

    def _png(self, ctx: EvalContext, summaries: dict, channels: list[int], budget: int) -> str:
        """Grouped bars per target: path probability and success, baseline / edited / cheese placed."""
        cfg = self.config
        fig, axes = common.new_panels(2, size_inches=4.5)
        width = 0.8 / len(CONDITIONS)
        colours = {"baseline": "#9e9e9e", "edited": "#d62728", "cheese_placed": "#d4a017"}
        positions = np.arange(len(cfg.targets))
        for ax, metric, label in ((axes[0], "path_prob", "geometric-mean path probability (mean, 95% CI)"),
                                  (axes[1], "success", f"rollouts reaching the target in {budget} steps (95% CI)")):
            for offset, condition in enumerate(CONDITIONS):
                estimates = [summaries[t][f"{metric}/{condition}"] for t in cfg.targets]
                ax.bar(positions + (offset - 1) * width, [e.value for e in estimates], width,
                       yerr=stats.error_bars(estimates), color=colours[condition], label=condition, capsize=2)
            ax.set_xticks(positions, [t.replace("_", " ") for t in cfg.targets])
            ax.set_ylim(0, 1.02)
            ax.set_ylabel(label, fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"channels {channels} at the target's cell (radius {cfg.cell_radius}) of {cfg.layer}; "
                     "selection mazes", fontsize=9)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("retargeting.png"))

    def _success_png(self, ctx: EvalContext, summaries: dict, scans: dict, chosen: dict, budget: int) -> str:
        """Success against the fraction of the maze's activations edited, per target (one line per
        cell radius, selection mazes), the chosen setting on the confirmation mazes (star), beside
        the unedited policy (dashed) and the max_fraction bound (dotted)."""
        cfg = self.config
        fig, axes = common.new_panels(len(cfg.targets), size_inches=4.0)
        for ax, target in zip(axes, cfg.targets):
            for index, radius in enumerate(sorted({r for _, r, _, _ in scans[target]})):
                points = sorted(((size, s) for _, r, size, s in scans[target] if r == radius), key=lambda p: p[0])
                ax.errorbar([p[0] for p in points], [p[1].value for p in points],
                            yerr=stats.error_bars([p[1] for p in points]), marker="o", capsize=2,
                            color=f"C{index}", label=f"cell radius {radius}")
            setting, success = chosen[target]
            if setting is not None and success.defined:
                size = next(size for k, r, size, _ in scans[target] if (k, r) == setting)
                ax.errorbar([size], [success.value], yerr=stats.error_bars([success]), marker="*", markersize=10,
                            color="black", capsize=2, linestyle="none", label="chosen, confirmation mazes")
            ax.axhline(summaries[target]["success/baseline"].value, color="gray", linestyle="--", label="unedited")
            ax.axvline(cfg.max_fraction, color="black", linestyle=":", alpha=0.6)
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("fraction of the maze's activations edited")
            ax.set_ylabel(f"reached the target within {budget} steps")
            ax.set_title(target.replace("_", " "), fontsize=9)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("retargeting_success.png"))

    def _scan_png(self, ctx: EvalContext, summaries: dict, channels: list[int]) -> str:
        """Mean path probability against the scale of the written values, per target, beside the
        unedited policy (dashed) and the real cheese on the target (dotted)."""
        cfg = self.config
        fig, axes = common.new_panels(1, size_inches=5.0)
        ax = axes[0]
        scales = sorted(cfg.scan_scales)
        for index, target in enumerate(cfg.targets):
            colour = f"C{index}"
            estimates = [summaries[target][f"scale/{s:g}"] for s in scales]
            ax.errorbar(scales, [e.value for e in estimates], yerr=stats.error_bars(estimates),
                        marker="o", color=colour, capsize=2, label=target.replace("_", " "))
            ax.axhline(summaries[target]["path_prob/baseline"].value, color=colour, linestyle="--", alpha=0.6)
            ax.axhline(summaries[target]["path_prob/cheese_placed"].value, color=colour, linestyle=":", alpha=0.8)
        ax.set_xlabel("scale of the written values (1 = the configured values)")
        ax.set_ylabel("geometric-mean path probability (mean, 95% CI)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="dashed: unedited, dotted: cheese on target", title_fontsize=7)
        ax.set_title(f"channels {channels} of {cfg.layer}", fontsize=8)
        fig.tight_layout()
        return write_png_atomic(fig, ctx.artifact("retargeting_scan.png"))
