"""Random mazes like procgen's (randomised Kruskal on the even squares) and the check that a maze
could have come from procgen."""

from __future__ import annotations

import numpy as np

from shardlab.envs import maze_geometry
from shardlab.envs.maze_state import EMPTY, WALL


def random_maze(size: int, rng: np.random.Generator) -> np.ndarray:
    """An inner maze [y, x] of odd ``size``: (even, even) squares open, joined into a random tree."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"maze size must be odd and >= 1, got {size}")
    inner = np.full((size, size), WALL, dtype=np.int32)
    inner[::2, ::2] = EMPTY
    cells = (size + 1) // 2
    parent = list(range(cells * cells))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # walls between horizontally or vertically adjacent cells, in random order (Kruskal)
    edges = [(cx, cy, cx + 1, cy) for cy in range(cells) for cx in range(cells - 1)]
    edges += [(cx, cy, cx, cy + 1) for cy in range(cells - 1) for cx in range(cells)]
    for index in rng.permutation(len(edges)):
        x1, y1, x2, y2 = edges[index]
        a, b = root(y1 * cells + x1), root(y2 * cells + x2)
        if a != b:
            parent[a] = b
            inner[y1 + y2, x1 + x2] = EMPTY  # the wall square between the two cells
    return inner


def is_on_distribution(inner: np.ndarray) -> bool:
    """True if the maze has procgen's structure: (odd, odd) squares walls, (even, even) open,
    and the open squares forming a tree (connected, no loops)."""
    size = inner.shape[0]
    if inner.shape != (size, size) or size % 2 == 0:
        return False
    open_ = inner != WALL
    if open_[1::2, 1::2].any() or not open_[::2, ::2].all():
        return False
    squares = int(open_.sum())
    edges = int((open_[:, 1:] & open_[:, :-1]).sum() + (open_[1:, :] & open_[:-1, :]).sum())
    reachable = int((maze_geometry.distances_from(inner, (0, 0)) >= 0).sum())
    return edges == squares - 1 and reachable == squares
