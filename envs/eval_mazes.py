"""Seeded evaluation sets of procgen mazes with the cheese placed by rule.

:func:`eval_mazes` draws levels from procgen (batches of ``BATCH`` envs whose ``rand_seed`` comes
from the set's seed), keeps those that pass the size filters, and moves the cheese with its own
RNG to a uniformly random open square of the requested area (never the start square (0, 0)):

* ``"anywhere"`` — any open square;
* ``"quadrant:<top_left|top_right|bottom_left|bottom_right>"`` — the inner maze split at its
  middle row and column; squares on the middle row or column belong to no quadrant (the side is
  odd), so a 3×3 maze's quadrants are its four corner squares;
* ``"outside_region"`` — not in the top-right ``region``×``region`` squares (the training
  cheese region of ``MazeEnvConfig.rand_region``; 0 means the corner square only).

With ``require_decision_square`` the cheese is drawn uniformly among the area's squares that have
a decision square (``maze_geometry.decision_square``: the paths to cheese and to the top-right
corner part somewhere, neither contains the other), and mazes with none are skipped.

Squares are (x, y) in inner-maze coordinates, x the column from the left, y the row from the bottom.
The same call gives the same bytes (for one procgen build): procgen's levels depend only on
``rand_seed`` and the env index, and the cheese RNG only on ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from shardlab.envs import maze_geometry, maze_state
from shardlab.envs.maze_config import WORLD_DIM
from shardlab.envs.procgen_import import ProcgenGym3Env

Square = tuple[int, int]
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")
CHEESE_MODES = ("anywhere", *(f"quadrant:{q}" for q in QUADRANTS), "outside_region")
BATCH = 64  # procgen levels drawn per env batch; part of the seed → mazes mapping, keep fixed
_MAX_DRAWS_PER_MAZE, _MIN_MAX_DRAWS = 400, 20_000  # a safety net; feasible filters need far fewer


@dataclass(frozen=True)
class EvalMaze:
    """One maze of an evaluation set: the state bytes to load and what was chosen."""

    state: bytes
    seed: int  # the eval_mazes seed
    index: int  # position in the set
    source: tuple[int, int]  # (procgen rand_seed, env index) of the level before the cheese moved
    maze_dim: int
    cheese: Square
    decision_square: Optional[Square]


def cheese_area(size: int, cheese: str, region: int = 5) -> np.ndarray:
    """(size, size) bool mask [y, x] of the squares ``cheese`` allows, walls not considered."""
    _check_cheese_mode(cheese)
    mask = np.zeros((size, size), bool)
    if cheese == "anywhere":
        mask[:] = True
    elif cheese == "outside_region":
        low = size - min(max(region, 1), size)  # as maze_geometry.region_squares
        mask[:] = True
        mask[low:, low:] = False
    else:
        middle = size // 2
        quadrant = cheese.split(":", 1)[1]
        rows = slice(middle + 1, None) if quadrant.startswith("top") else slice(0, middle)
        cols = slice(middle + 1, None) if quadrant.endswith("right") else slice(0, middle)
        mask[rows, cols] = True
    mask[0, 0] = False  # never the start square
    return mask


def decision_possible(size: int) -> np.ndarray:
    """(size, size) bool mask of squares that have a decision square in some procgen maze.

    A procgen maze is a tree whose open squares include every (even, even) square and none of the
    (odd, odd) ones. The start, the top-right corner and the two squares next to the corner never
    qualify (the path to one of the latter runs through the corner, or the corner path through it);
    every other square that can be open does (checked exhaustively for 3×3 and by sampling for
    larger sizes in tests/test_eval_mazes.py).
    """
    mask = np.ones((size, size), bool)
    mask[1::2, 1::2] = False  # (odd, odd) squares are always walls
    top = size - 1
    for x, y in ((0, 0), (top, top), (top - 1, top), (top, top - 1)):
        mask[y, x] = False
    return mask


def feasible_sizes(cheese: str, region: int, min_size: int, max_size: int,
                   require_decision_square: bool, mode: str) -> list[int]:
    """Maze sizes in [min_size, max_size] (and the mode's world) where a cheese can be placed."""
    sizes = [d for d in range(3, WORLD_DIM[mode] + 1, 2) if min_size <= d <= max_size]
    feasible = []
    for size in sizes:
        allowed = cheese_area(size, cheese, region)
        allowed[1::2, 1::2] = False  # walls in every procgen maze
        if require_decision_square:
            allowed &= decision_possible(size)
        if allowed.any():
            feasible.append(size)
    return feasible


def eval_mazes(n: int, seed: int, *, cheese: str = "anywhere", region: int = 5, min_size: int = 3,
               max_size: int = 25, require_decision_square: bool = False, mode: str = "hard"
               ) -> list[EvalMaze]:
    """``n`` procgen mazes passing the filters, the cheese moved by rule; deterministic in ``seed``."""
    sizes = _check_filters(n, cheese, region, min_size, max_size, require_decision_square, mode)
    # separate streams for procgen's seeds and for cheese squares, both from the one seed
    level_seeds, cheese_seeds = np.random.SeedSequence(seed).spawn(2)
    level_rng, rng = np.random.default_rng(level_seeds), np.random.default_rng(cheese_seeds)
    mazes: list[EvalMaze] = []
    draws, max_draws = 0, max(_MIN_MAX_DRAWS, _MAX_DRAWS_PER_MAZE * n)
    while len(mazes) < n:
        if draws >= max_draws:
            raise RuntimeError(f"only {len(mazes)} of {n} mazes passed the filters in {draws} procgen "
                               "levels; the filters are too narrow")
        rand_seed = int(level_rng.integers(2**31 - 1))
        for env_index, state in enumerate(_procgen_states(rand_seed, mode)):
            draws += 1
            where = maze_state.layout(state)
            if where.maze_dim not in sizes:
                continue
            placed = _place_cheese(state, where, cheese, region, require_decision_square, rng)
            if placed is None:
                continue
            square, decision = placed
            mazes.append(EvalMaze(maze_state.with_cheese_at(state, square, where), seed, len(mazes),
                                  (rand_seed, env_index), where.maze_dim, square, decision))
            if len(mazes) == n:
                break
    return mazes


def _procgen_states(rand_seed: int, mode: str) -> list[bytes]:
    """The first-level states of ``BATCH`` procgen maze envs seeded with ``rand_seed``."""
    env = ProcgenGym3Env(num=BATCH, env_name="maze", distribution_mode=mode, rand_seed=rand_seed)
    try:
        return env.callmethod("get_state")
    finally:
        env.close()


def _place_cheese(state: bytes, where: maze_state.Layout, cheese: str, region: int,
                  require_decision_square: bool, rng: np.random.Generator
                  ) -> Optional[tuple[Square, Optional[Square]]]:
    """A uniformly random allowed cheese square and its decision square; None if there is none."""
    inner = maze_state.inner_grid(state, where)
    ys, xs = np.nonzero(cheese_area(where.maze_dim, cheese, region) & (inner != maze_state.WALL))
    if not len(xs):
        return None
    # a random order, taking the first square that qualifies: uniform among qualifying squares,
    # and only a few decision-square searches per maze
    for k in rng.permutation(len(xs)):
        square = (int(xs[k]), int(ys[k]))
        decision = maze_geometry.decision_square(inner, square)
        if decision is not None or not require_decision_square:
            return square, decision
    return None


def _check_cheese_mode(cheese: str) -> None:
    if cheese not in CHEESE_MODES:
        raise ValueError(f"cheese must be one of {', '.join(CHEESE_MODES)}; got {cheese!r}")


def check_filters(cheese: str, region: int, min_size: int = 3, max_size: int = 25,
                  require_decision_square: bool = False, mode: str = "hard") -> None:
    """The ValueError :func:`eval_mazes` would raise for these filters (none when some maze can pass),
    so an eval can refuse a config before it plays anything."""
    _check_filters(1, cheese, region, min_size, max_size, require_decision_square, mode)


def _check_filters(n: int, cheese: str, region: int, min_size: int, max_size: int,
                   require_decision_square: bool, mode: str) -> list[int]:
    """The maze sizes to keep; ValueError naming the problem when no maze can pass."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if mode not in WORLD_DIM:
        raise ValueError(f"mode must be one of {sorted(WORLD_DIM)}, got {mode!r}")
    _check_cheese_mode(cheese)
    if region < 0:
        raise ValueError(f"region must be >= 0, got {region}")
    world = WORLD_DIM[mode]
    if min_size > max_size:
        raise ValueError(f"min_size {min_size} > max_size {max_size}")
    sizes = [d for d in range(3, world + 1, 2) if min_size <= d <= max_size]
    if not sizes:
        raise ValueError(f"no maze size in [{min_size}, {max_size}]: {mode} mazes have odd sizes "
                         f"3 to {world}")
    feasible = feasible_sizes(cheese, region, min_size, max_size, require_decision_square, mode)
    if not feasible:
        need = " with a decision square" if require_decision_square else ""
        raise ValueError(f"no maze of size {sizes[0]}" + (f" to {sizes[-1]}" if len(sizes) > 1 else "")
                         + f" has an open square for cheese={cheese!r}" + (f" (region {region})" if
                         cheese == "outside_region" else "") + f"{need}; widen the size range or the cheese area")
    return feasible
