"""Maze geometry on an inner grid (``[y, x]``, y = 0 at the bottom, walls = ``maze_state.WALL``):
shortest paths, the decision square, and distances among cheese, decision square and top-right."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from shardlab.envs.maze_state import WALL

Square = tuple[int, int]  # (x, y) in inner-maze coordinates
START: Square = (0, 0)


def is_open(inner: np.ndarray, square: Square) -> bool:
    """True if ``square`` lies inside the maze and is not a wall."""
    x, y = square
    return 0 <= x < inner.shape[1] and 0 <= y < inner.shape[0] and inner[y, x] != WALL


def neighbours(inner: np.ndarray, square: Square) -> list[Square]:
    """Open squares next to ``square`` (left, down, up, right)."""
    x, y = square
    return [s for s in ((x - 1, y), (x, y - 1), (x, y + 1), (x + 1, y)) if is_open(inner, s)]


# BFS runs on a flat list of the grid with a border of walls: Python ints and list lookups
# instead of numpy scalar indexing, about 20× faster, which the eval-maze draws (a decision-square
# search per candidate cheese) and the explorer's paths feel. The neighbour order (left, down,
# up, right) is :func:`neighbours`'s, so ties between equally short paths break the same way.
def _flat(inner: np.ndarray) -> tuple[list[bool], int]:
    """Open squares of ``inner`` as a flat list with a one-square wall border, and its row stride."""
    height, width = inner.shape
    padded = np.zeros((height + 2, width + 2), dtype=bool)
    padded[1:-1, 1:-1] = inner != WALL
    return padded.ravel().tolist(), width + 2


def _bfs(open_: list[bool], stride: int, source: int) -> list[int]:
    """Distance from flat index ``source`` to every flat index (-1: a wall or unreachable)."""
    dist = [-1] * len(open_)
    dist[source] = 0
    queue = [source]
    offsets = (-1, -stride, stride, 1)
    for here in queue:  # the list grows while it is walked: a FIFO queue
        step = dist[here] + 1
        for offset in offsets:
            there = here + offset
            if open_[there] and dist[there] < 0:
                dist[there] = step
                queue.append(there)
    return dist


def distances_from(inner: np.ndarray, source: Square) -> np.ndarray:
    """Path distance from ``source`` to every square (-1 where unreachable or a wall), by BFS."""
    if not is_open(inner, source):
        return np.full(inner.shape, -1, dtype=np.int64)
    open_, stride = _flat(inner)
    dist = _bfs(open_, stride, (source[1] + 1) * stride + source[0] + 1)
    return np.array(dist, dtype=np.int64).reshape(inner.shape[0] + 2, stride)[1:-1, 1:-1]


def shortest_path(inner: np.ndarray, start: Square, goal: Square) -> list[Square]:
    """Squares from ``start`` to ``goal`` inclusive along a shortest path; [] if unreachable."""
    if not (is_open(inner, start) and is_open(inner, goal)):
        return []
    open_, stride = _flat(inner)
    dist = _bfs(open_, stride, (goal[1] + 1) * stride + goal[0] + 1)
    here = (start[1] + 1) * stride + start[0] + 1
    if dist[here] < 0:
        return []
    path = [here]
    offsets = (-1, -stride, stride, 1)
    while dist[here] > 0:  # walk downhill in distance-to-goal
        here = next(here + o for o in offsets if dist[here + o] == dist[here] - 1)
        path.append(here)
    return [(index % stride - 1, index // stride - 1) for index in path]


def corner(inner: np.ndarray) -> Square:
    """The inner top-right corner square."""
    return inner.shape[1] - 1, inner.shape[0] - 1


def decision_square(inner: np.ndarray, cheese: Square, start: Square = START) -> Optional[Square]:
    """Last square shared by the paths start → cheese and start → top-right corner; None when
    one path contains the other (no decision to make)."""
    to_cheese, to_corner = shortest_path(inner, start, cheese), shortest_path(inner, start, corner(inner))
    if not to_cheese or not to_corner:
        return None
    shared = 0
    while shared < min(len(to_cheese), len(to_corner)) and to_cheese[shared] == to_corner[shared]:
        shared += 1
    last = to_cheese[shared - 1]
    return None if last in (cheese, corner(inner)) else last


def region_squares(inner: np.ndarray, size: int) -> list[Square]:
    """Open squares of the top-right ``size``×``size`` region (0 → the corner only)."""
    d = inner.shape[0]
    low = d - min(max(size, 1), d)
    return [(x, y) for y in range(low, d) for x in range(low, d) if inner[y, x] != WALL]


def euclidean(a: Square, b: Square) -> float:
    """Straight-line distance in squares."""
    return math.hypot(a[0] - b[0], a[1] - b[1])


@dataclass(frozen=True)
class Distances:
    """The behavioural-statistics features of one maze (path and Euclidean, in squares)."""

    decision_square: Square
    path_decision_cheese: int
    path_decision_corner: int
    path_cheese_corner: int
    path_decision_region: int  # to the nearest square of the top-right region
    euclid_decision_cheese: float
    euclid_cheese_corner: float
    euclid_decision_corner: float
    euclid_decision_region: float


def maze_distances(inner: np.ndarray, cheese: Square, region: int = 5) -> Optional[Distances]:
    """Distances among decision square, cheese, top-right corner and region; None without a
    decision square."""
    decision = decision_square(inner, cheese)
    if decision is None:
        return None
    from_decision, from_cheese = distances_from(inner, decision), distances_from(inner, cheese)
    top_right = corner(inner)
    area = region_squares(inner, region)
    at = lambda dist, s: int(dist[s[1], s[0]])
    return Distances(
        decision, at(from_decision, cheese), at(from_decision, top_right), at(from_cheese, top_right),
        min(at(from_decision, s) for s in area), euclidean(decision, cheese),
        euclidean(cheese, top_right), euclidean(decision, top_right),
        min(euclidean(decision, s) for s in area))
