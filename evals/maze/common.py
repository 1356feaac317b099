"""Shared pieces of the maze steering and retargeting evals: observations of edited states, one
layer's activations, folded action probabilities under hook edits, the first move along a shortest
path, the maze square → activation cell map, the top-right path edit, summary statistics and
multi-panel figures.

Squares are (x, y) in inner-maze coordinates, x the column from the left, y the row from the
bottom; activation cells are (row from the top, column), like the observation's pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import nn

from shardlab.envs import maze_geometry, maze_state
from shardlab.envs.maze_config import WORLD_DIM
from shardlab.evals.maze.render import activation_cell
from shardlab.evals.maze.splits import layout_key
from shardlab.evals.maze.vector_field import DOWN, LEFT, RIGHT, UP, observations, policy_probs
from shardlab.evals.suite import stats
from shardlab.evals.suite.base import EvalError
from shardlab.models.hooks import Edit, hooked
from shardlab.models.impala import pooled_size, preprocess

Square = tuple[int, int]
DEFAULT_LAYER = "embedder.block2.res1.resadd_out"
# folded move index of each (dx, dy) step between neighbouring squares
_MOVE_OF_STEP = {(-1, 0): LEFT, (0, -1): DOWN, (0, 1): UP, (1, 0): RIGHT}


@dataclass(frozen=True)
class TrainEnv:
    """What the maze evals need from a checkpoint's env config: observation, mode, maze sizes, backend."""

    obs: str
    mode: str
    max_size: int
    min_size: int = 3
    backend: str = "procgen"  # the env that plays episodes (env.backend)

    @property
    def world_dim(self) -> int:
        """Side of the world grid in tiles."""
        return WORLD_DIM[self.mode]


def train_env(train_config: DictConfig) -> TrainEnv:
    """The observation kind, procgen mode, maze sizes and env backend of a training run."""
    env = train_config.env
    mode = env.distribution_mode
    return TrainEnv(env.obs, mode, env.max_maze_size or WORLD_DIM[mode], env.get("min_maze_size") or 3,
                    env.get("backend") or "procgen")


def training_region(configured: Optional[int], train_config: DictConfig, eval_name: str) -> int:
    """The top-right cheese region an eval tests against: its own ``region`` if set, else the
    checkpoint's ``env.rand_region`` exactly (0: the corner square only); EvalError when neither
    says (a checkpoint trained with the cheese anywhere has no training region)."""
    if configured is not None:
        if configured < 0:
            raise EvalError(f"{eval_name}.region must be >= 0, got {configured}")
        return configured
    region = train_config.env.rand_region
    if region is None:
        raise EvalError(f"{eval_name}: the checkpoint was trained with env.rand_region=null (cheese anywhere), so it "
                        f"has no training region; set one, e.g. {eval_name}.region=5")
    return int(region)


def training_maze_filters(train_config: DictConfig, eval_name: str, region: Optional[int] = None,
                          min_size: Optional[int] = None, max_size: Optional[int] = None) -> dict:
    """The ``eval_mazes`` filters of a checkpoint's own maze population: ``region`` from
    :func:`training_region`, the smallest and largest maze from the eval's bounds where set, else
    the checkpoint's ``env.min_maze_size`` / ``env.max_maze_size`` exactly (a policy trained on
    7×7 mazes only is not tested on 5×5 ones), and its procgen ``mode``."""
    env = train_env(train_config)
    return dict(region=training_region(region, train_config, eval_name), min_size=min_size or env.min_size,
                max_size=max_size or env.max_size, mode=env.mode)


# -- states and forward passes ----------------------------------------------------------------------
def at_square(state: bytes, square: Square) -> bytes:
    """``state`` with the mouse moved to ``square``."""
    return maze_state.with_mouse_at(state, square)


def policy_input(policy: nn.Module, states: Sequence[bytes], obs: str) -> torch.Tensor:
    """The float NCHW batch the policy sees for ``states`` (procgen's image or the grid view),
    laid out as ``evals.maze.vector_field.policy_probs`` lays it out, so activations computed here
    match the ones edited there."""
    device = next(policy.parameters()).device
    return preprocess(torch.from_numpy(np.ascontiguousarray(observations(states, obs))).to(device))


def layer_activations(policy: nn.Module, states: Sequence[bytes], obs: str, layer: str,
                      edits: Optional[dict[str, Edit]] = None) -> torch.Tensor:
    """Activations (N, C, H, W) at ``layer`` for ``states`` (after ``edits``), float32, detached."""
    with torch.inference_mode(), hooked(policy, edits=edits, cache=[layer]) as acts:
        policy(policy_input(policy, states, obs))
    return acts[layer].float().contiguous()


def folded_probs(policy: nn.Module, states: Sequence[bytes], obs: str,
                 edits: Optional[dict[str, Edit]] = None) -> np.ndarray:
    """(N, 5) folded action probabilities (left, down, up, right, noop) for ``states`` under ``edits``."""
    with hooked(policy, edits=edits):
        return policy_probs(policy, observations(states, obs))


def first_move(inner: np.ndarray, start: Square, goal: Square) -> int:
    """The folded move (LEFT/DOWN/UP/RIGHT) of the first step of a shortest path start → goal."""
    path = maze_geometry.shortest_path(inner, start, goal)
    if len(path) < 2:
        raise ValueError(f"no step from {start} towards {goal}: unreachable or the same square")
    (x0, y0), (x1, y1) = path[0], path[1]
    return _MOVE_OF_STEP[(x1 - x0, y1 - y0)]


def path_moves(path: Sequence[Square]) -> list[int]:
    """The folded move of each step along ``path`` (len(path) − 1 moves)."""
    return [_MOVE_OF_STEP[(b[0] - a[0], b[1] - a[1])] for a, b in zip(path, path[1:])]


# -- cheese channels ------------------------------------------------------------------------------
def cheese_channel_samples(policy: nn.Module, states: Sequence[bytes], obs: str, layer: str) -> np.ndarray:
    """(mazes, C): each maze's (with cheese − without) at the cheese's activation cell, mouse on
    the start square."""
    at_start = [at_square(s, maze_geometry.START) for s in states]
    acts = layer_activations(policy, at_start + [maze_state.without_cheese(s) for s in at_start], obs, layer)
    diff = acts[:len(states)] - acts[len(states):]
    side = diff.shape[-1]
    cells = [cell_of(state, maze_state.cheese_square(state), obs, side) for state in states]
    rows, cols = torch.tensor([r for r, _ in cells]), torch.tensor([c for _, c in cells])
    return diff[torch.arange(len(states)), :, rows, cols].numpy()


def cheese_channel_scores(policy: nn.Module, states: Sequence[bytes], obs: str, layer: str) -> np.ndarray:
    """(C,) mean over mazes of (with cheese − without) at the cheese's activation cell, mouse on
    the start square (:func:`cheese_channel_samples` averaged)."""
    return cheese_channel_samples(policy, states, obs, layer).mean(0)


def choose_channels(scores: np.ndarray, count: int, value: float) -> list[int]:
    """The ``count`` channels the cheese raises most (lowers most when ``value`` < 0)."""
    order = np.argsort(-scores if value >= 0 else scores, kind="stable")
    return [int(c) for c in order[:count]]


def cell_of(state: bytes, square: tuple[int, int], obs: str, side: int) -> tuple[int, int]:
    """The activation cell of ``square`` in ``state``'s maze."""
    where = maze_state.layout(state)
    return activation_square_cell(square, where.maze_dim, where.world_dim, obs, side)


# -- the top-right path edit -----------------------------------------------------------------------
def with_top_right_path(state: bytes) -> Optional[bytes]:
    """``state`` with an L-shaped corridor opened through the wall padding, from the inner maze's
    top-right corner straight up to the world's top row and then right to the world's top-right
    corner (procgen-tools' ``make_top_right_path``: the reachable top-right square becomes the
    absolute one). None when the maze fills the world (no padding to open)."""
    where = maze_state.layout(state)
    margin, world_side = where.margin, where.world_dim
    if margin == 0:
        return None
    world = maze_state.grid(state, where).copy()  # [y, x], y = 0 at the bottom
    corner = margin + where.maze_dim - 1  # world x and y of the inner top-right corner
    world[corner + 1:, corner] = maze_state.EMPTY  # up the corner's column to the top row
    world[world_side - 1, corner + 1:] = maze_state.EMPTY  # along the top row to the world corner
    return maze_state.with_grid(state, where, world)


# -- squares → activation cells --------------------------------------------------------------------
def pools_to(side: int, input_side: int) -> int:
    """How many maxpool(3, stride 2, pad 1) halvings take ``input_side`` to ``side``."""
    pools, size = 0, input_side
    while size > side:
        size, pools = pooled_size(size), pools + 1
    if size != side:
        raise ValueError(f"a {side}×{side} activation is not a pooled {input_side}×{input_side} input")
    return pools


def pooled_cell(tile: int, pools: int, side: int) -> int:
    """The cell after ``pools`` maxpool(3, stride 2, pad 1) layers whose window is centred nearest
    to input position ``tile``: 3×3 convs with padding 1 keep positions, and each pool's output
    i looks at inputs 2i − 1 .. 2i + 1, so cell j is centred on input 2^pools · j; ties (an input
    exactly between two centres, inside both windows) go to the higher cell."""
    step = 2 ** pools
    return min((tile + step // 2) // step, side - 1)


def activation_square_cell(square: Square, maze_dim: int, world_dim: int, obs: str, side: int) -> tuple[int, int]:
    """The (row, col) cell of a ``side``×``side`` activation that holds inner square ``square``.

    RGB (64×64 image): the published map, tile t → ⌊(t + ½)·(64/world)·side/64⌋
    (``evals.maze.render.activation_cell``). Grid view (one input pixel per world tile): the cell
    whose pooling window is centred on the tile (:func:`pooled_cell`).
    """
    margin = (world_dim - maze_dim) // 2
    row_tile, col_tile = world_dim - 1 - (margin + square[1]), margin + square[0]
    if obs == "rgb":
        return activation_cell(row_tile, world_dim, side), activation_cell(col_tile, world_dim, side)
    if obs == "grid":
        pools = pools_to(side, world_dim)
        return pooled_cell(row_tile, pools, side), pooled_cell(col_tile, pools, side)
    raise ValueError(f"obs must be rgb or grid, got {obs!r}")


# -- statistics and figures ------------------------------------------------------------------------
@dataclass(frozen=True)
class Summary:
    """Median, mean and standard error of the mean of a set of per-maze values."""

    median: float
    mean: float
    stderr: float
    n: int


def summarise(values: Sequence[float]) -> Summary:
    """Median, mean and stderr (sample std / √n; NaN for fewer than two values)."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, 0)
    stderr = float(array.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Summary(float(np.median(array)), float(array.mean()), stderr, n)


def new_panels(count: int, size_inches: float = 4.0, rows: int = 1) -> tuple[Figure, list]:
    """A Figure on its own Agg canvas with ``count`` axes in ``rows`` rows (no pyplot)."""
    cols = math.ceil(count / rows)
    fig = Figure(figsize=(size_inches * cols, size_inches * rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, index + 1) for index in range(count)]
    return fig, axes




# -- cheese-channel hypotheses (activation_patching, causal_scrubbing) -------------------------------
# FACTS: the cheese channels of the published scale-4 policy at embedder.block2.res1.resadd_out
PUBLISHED_CHEESE_CHANNELS = (7, 8, 42, 44, 55, 77, 82, 88, 89, 99, 113)
PUBLISHED_CHANNEL_COUNT = 128
CHANNEL_CHOICES = ("auto", "published")
# ``auto`` without ``top_channels`` chooses this share of the layer (at least one channel): a
# hypothesis about a few channels, like the published 11 of 128, not a third of a small layer
DEFAULT_CHANNEL_FRACTION = 0.1


def default_channel_count(channel_count: int, fraction: float = DEFAULT_CHANNEL_FRACTION) -> int:
    """max(1, ⌊fraction × channel_count⌋): how many channels ``auto`` chooses when ``top_channels`` is unset."""
    return max(1, math.floor(fraction * channel_count + 1e-9))  # 1e-9: a product rounded just below an integer


def check_channel_spec(spec: object, where: str) -> None:
    """One-line ValueError unless ``spec`` is ``auto``, ``published`` or a non-empty list of
    distinct non-negative channel indices; ``where`` names the config key in the message."""
    if isinstance(spec, str):
        if spec not in CHANNEL_CHOICES:
            raise ValueError(f"{where} must be auto, published or a list of channel indices; got {spec!r}")
        return
    if (not isinstance(spec, (list, tuple)) or not spec
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in spec)
            or len(set(spec)) != len(spec)):
        raise ValueError(f"{where} must be auto, published or a non-empty list of distinct channel indices "
                         f">= 0; got {spec!r}")


def named_channels(spec: object, channel_count: int, layer: str) -> Optional[list[int]]:
    """The channels an explicit ``spec`` names at a ``layer`` of ``channel_count`` channels (None
    for ``auto``, which needs the policy): ``published`` only where the layer has the published
    policy's 128 channels, a list only of channels the layer has."""
    check_channel_spec(spec, "channels")
    if spec == "auto":
        return None
    if spec == "published":
        if channel_count != PUBLISHED_CHANNEL_COUNT:
            raise ValueError(f"channels: published names channels of the scale-4 policy's 128-channel "
                             f"{DEFAULT_LAYER}, but {layer} has {channel_count}; use channels: auto or a list")
        return list(PUBLISHED_CHEESE_CHANNELS)
    if max(spec) >= channel_count:
        raise ValueError(f"channels {list(spec)} include indices >= {channel_count}, the channel count of {layer}")
    return [int(c) for c in spec]


# -- checks of an eval config against the network, before anything runs ----------------------------
def require_mazes(key: str, **filters: object) -> None:
    """EvalError naming ``key`` when no maze passes the eval_mazes ``filters`` (cheese, region,
    min_size, max_size, require_decision_square, mode): the run would stop there."""
    from shardlab.envs.eval_mazes import check_filters
    try:
        check_filters(**filters)
    except ValueError as exc:
        raise EvalError(f"{key}: {exc}") from None


def layer_channel_count(policy: nn.Module, train_config: DictConfig, layer: str) -> int:
    """Channels of ``layer`` for the checkpoint's observations (one forward pass of a blank frame)."""
    from shardlab.envs.maze import observation_shape
    from shardlab.envs.maze_config import env_config

    shape = observation_shape(env_config(train_config))
    device = next(policy.parameters()).device
    with torch.inference_mode(), hooked(policy, cache=[layer]) as acts:
        policy(preprocess(torch.zeros((1, *shape), dtype=torch.uint8, device=device)))
    return int(acts[layer].shape[1])


def require_channels(policy: nn.Module, train_config: DictConfig, key: str, spec: object, layer: str,
                     count: int = 0) -> None:
    """EvalError naming ``key`` when the channels ``spec`` names (a list or ``published``), or
    ``count`` channels, do not exist at ``layer``."""
    if (spec is None or spec == "auto") and count <= 0:
        return
    channels = layer_channel_count(policy, train_config, layer)
    try:
        if spec is not None:
            named_channels(spec, channels, layer)
    except ValueError as exc:
        raise EvalError(f"{key}: {exc}") from None
    if count > channels:
        raise EvalError(f"{key} asks for {count} channels but {layer} has {channels}; use at most {channels}")


def cheese_channel_states(env: TrainEnv, n: int, seed: int, exclude: Sequence[bytes] = ()
                          ) -> tuple[list[bytes], int]:
    """(states, excluded): the seeded mazes (cheese anywhere, the checkpoint's mode and sizes) the
    ``auto`` cheese channels are scored on, less those whose layout is one of ``exclude``'s (the
    mazes the hypothesis is then measured on: selection is kept apart from confirmation)."""
    from shardlab.envs.eval_mazes import eval_mazes  # evals-only dependency, kept out of the steering imports

    measured = {layout_key(state) for state in exclude}
    drawn = [m.state for m in eval_mazes(n, seed, cheese="anywhere", min_size=env.min_size, max_size=env.max_size,
                                         mode=env.mode)]
    kept = [state for state in drawn if layout_key(state) not in measured]
    return kept, len(drawn) - len(kept)


@dataclass(frozen=True)
class CheeseChannels:
    """The cheese channels of one layer, how many the layer has and, when chosen on this
    checkpoint (``auto``), each selection maze's with-minus-without-cheese value per channel."""

    channels: list[int]
    layer_channels: int
    samples: Optional[np.ndarray] = None  # (selection mazes, layer_channels); None for named channels
    excluded_mazes: int = 0  # selection mazes dropped for sharing a layout with a measured maze


def resolve_cheese_channels(policy: nn.Module, spec: object, layer: str, obs: str, states: Sequence[bytes],
                            count: Optional[int] = None, excluded_mazes: int = 0) -> CheeseChannels:
    """The cheese channels of ``layer``: for ``auto`` the ``count`` channels (None:
    :func:`default_channel_count` of the layer) the cheese raises most on ``states``
    (:func:`cheese_channel_scores`, :func:`choose_channels`), else the named ones."""
    if not states:
        raise ValueError("no channel-selection mazes are left once the measured mazes' layouts are excluded; "
                         "raise channel_mazes")
    channel_count = layer_activations(policy, states[:1], obs, layer).shape[1]
    named = named_channels(spec, channel_count, layer)
    if named is not None:
        return CheeseChannels(named, channel_count)
    samples = cheese_channel_samples(policy, states, obs, layer)
    chosen = default_channel_count(channel_count) if count is None else min(count, channel_count)
    return CheeseChannels(choose_channels(samples.mean(0), chosen, 1.0), channel_count, samples, excluded_mazes)


def add_cheese_channel_rows(result, chosen: CheeseChannels, prefix: str = "") -> None:
    """The cheese channels as rows of ``result``: ``cheese_channels/count`` and ``/fraction`` of
    the layer (settings), ``cheese_channel/rank=R`` the channel index (a setting) and, when chosen
    on this checkpoint, the selection mazes used and excluded (counts) and
    ``cheese_channel/rank=R/score``, its mean with-minus-without cheese over the selection mazes
    (an estimate; biased upward, since the same mazes ranked it)."""
    result.add(f"{prefix}cheese_channels/count", len(chosen.channels), kind="setting")
    result.add(f"{prefix}cheese_channels/fraction", len(chosen.channels) / chosen.layer_channels, kind="setting")
    if chosen.samples is not None:
        result.add(f"{prefix}cheese_channels/selection_mazes", len(chosen.samples), kind="count")
        result.add(f"{prefix}cheese_channels/selection_mazes_excluded", chosen.excluded_mazes, kind="count")
    for rank, channel in enumerate(chosen.channels):
        result.add(f"{prefix}cheese_channel/rank={rank}", channel, kind="setting")
        if chosen.samples is not None:
            score = stats.mean(chosen.samples[:, channel], unit="mazes")
            note = score.note or "on the selection mazes that ranked it: biased upward"
            result.add(f"{prefix}cheese_channel/rank={rank}/score", replace(score, note=note))


def selection_states(env: TrainEnv, spec: object, n: int, seed: int, measured: Sequence[bytes]
                     ) -> tuple[list[bytes], int]:
    """(states, excluded) for :func:`resolve_cheese_channels`: for ``auto``, ``n`` seeded mazes
    less any sharing a layout with the ``measured`` mazes; for named channels one maze, only for
    the layer's shape."""
    if spec == "auto":
        return cheese_channel_states(env, n, seed, exclude=measured)
    return cheese_channel_states(env, 1, seed)
