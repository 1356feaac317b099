"""Disjoint maze sets: a maze's layout key, and selection/confirmation sets that share no layout,
so a setting chosen on one set is measured on mazes that did not choose it."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from shardlab.envs import maze_state
from shardlab.envs.eval_mazes import EvalMaze, eval_mazes


def layout_key(state: bytes) -> bytes:
    """The maze's walls (and size) as bytes: equal keys are the same maze, wherever cheese and mouse sit."""
    walls = maze_state.inner_grid(state) == maze_state.WALL
    return bytes([walls.shape[0]]) + np.packbits(walls).tobytes()


def split_by_layout(n_select: int, n_confirm: int, seed: int, **filters) -> tuple[list[EvalMaze], list[EvalMaze]]:
    """Selection and confirmation mazes from one pool of ``eval_mazes(..., seed, **filters)`` with
    no layout on both sides (drawing more until both are full); RuntimeError if too few layouts.

    Every layout goes to one side, and within each maze size the layouts alternate between the
    sides in proportion to the sizes asked for, so both sides keep the pool's mix of maze sizes
    (skipping the selection set's layouts in a second draw would leave mostly the large mazes,
    whose layouts rarely repeat, and make the confirmation set harder)."""
    share = n_select / (n_select + n_confirm)
    draw = 2 * (n_select + n_confirm)
    while True:
        selection, confirmation = [], []
        side: dict[bytes, bool] = {}
        layouts, selected = Counter(), Counter()  # per maze size
        for maze in eval_mazes(draw, seed, **filters):
            key = layout_key(maze.state)
            if key not in side:
                layouts[maze.maze_dim] += 1
                side[key] = selected[maze.maze_dim] < math.floor(share * layouts[maze.maze_dim] + 0.5)
                selected[maze.maze_dim] += side[key]
            (selection if side[key] else confirmation).append(maze)
        if len(selection) >= n_select and len(confirmation) >= n_confirm:
            return selection[:n_select], confirmation[:n_confirm]
        if draw >= 64 * (n_select + n_confirm):
            raise RuntimeError(f"only {len(selection)} selection and {len(confirmation)} confirmation mazes with "
                               f"separate layouts in {draw} draws; the maze filters allow too few layouts")
        draw *= 2
