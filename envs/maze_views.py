"""Observations of arbitrary maze states: procgen's 64×64 RGB render and the symbolic grid view."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np

from shardlab.envs import maze_state
from shardlab.envs.maze_config import MODE_OF_WORLD
from shardlab.envs.procgen_import import ProcgenGym3Env

GRID_CHANNELS = ("wall", "mouse", "cheese")
RGB_CHANNELS = ("red", "green", "blue")
_renderers: dict[str, ProcgenGym3Env] = {}
_render_lock = threading.Lock()  # the renderers are shared: one batch at a time
# procgen renders inside set_state, in C with the GIL released: a big batch split over a few threads
# renders on as many cores (1.5-2x on 2 cores; the images are the same, a test compares them)
_PARALLEL_FROM = 64
_pool: Optional[ThreadPoolExecutor] = None


def _render_threads() -> int:
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4)


def observation_channels(obs: str) -> tuple[str, ...]:
    """Names of the input channels of an ``obs`` kind: the grid view's, else procgen's RGB."""
    return GRID_CHANNELS if obs == "grid" else RGB_CHANNELS


def render_rgb(states: Sequence[bytes]) -> np.ndarray:
    """Procgen's (K, 64, 64, 3) uint8 images of K states, rendered in one batch."""
    if not states:
        return np.zeros((0, 64, 64, 3), np.uint8)
    world = maze_state.layout(states[0]).world_dim
    mode = MODE_OF_WORLD.get(world)
    if mode is None:
        raise maze_state.StateError(f"no procgen mode renders a {world}×{world} world")
    with _render_lock:
        env = _renderers.get(mode)
        if env is None or env.num < len(states):
            # creating procgen envs is slow (~6 ms each), so one grows and is reused
            size = max(len(states), 2 * env.num if env is not None else 64)
            env = _renderers[mode] = ProcgenGym3Env(num=size, env_name="maze", distribution_mode=mode)
        threads = _render_threads() if len(states) >= _PARALLEL_FROM else 1
        bounds = np.linspace(0, len(states), threads + 1).astype(int)

        def set_states(part: int) -> None:
            for index in range(bounds[part], bounds[part + 1]):
                env.call_c_func("set_state", index, states[index], len(states[index]))
        if threads > 1:
            global _pool
            if _pool is None:
                _pool = ThreadPoolExecutor(threads, thread_name_prefix="shardlab-render")
            list(_pool.map(set_states, range(threads)))
        else:
            set_states(0)
        _, obs, _ = env.observe()
        return np.array(obs["rgb"][:len(states)])


def grid_view(walls: np.ndarray, mouse: np.ndarray, cheese: np.ndarray) -> np.ndarray:
    """Symbolic observations (N, W, W, 3) uint8 ∈ {0, 255} from world arrays indexed [y, x].

    ``walls`` is (N, W, W) bool; ``mouse`` and ``cheese`` are (N, 2) world (x, y), cheese
    (-1, -1) when absent. Rows are flipped so row 0 is the top, like procgen's image.
    """
    n, size = walls.shape[0], walls.shape[1]
    obs = np.zeros((n, size, size, 3), np.uint8)
    obs[..., 0] = walls[:, ::-1, :] * 255
    rows = np.arange(n)
    obs[rows, size - 1 - mouse[:, 1], mouse[:, 0], 1] = 255
    present = cheese[:, 0] >= 0
    obs[rows[present], size - 1 - cheese[present, 1], cheese[present, 0], 2] = 255
    return obs


def grid_observations(states: Sequence[bytes]) -> np.ndarray:
    """Symbolic (K, W, W, 3) observations of K states (wall, mouse, cheese channels)."""
    walls, mice, cheeses = [], [], []
    for state in states:
        where = maze_state.layout(state)
        walls.append(maze_state.grid(state, where) == maze_state.WALL)
        mice.append(np.add(maze_state.mouse_square(state, where), where.margin))
        cheese = maze_state.cheese_square(state, where)
        cheeses.append(np.add(cheese, where.margin) if cheese is not None else (-1, -1))
    return grid_view(np.stack(walls), np.array(mice), np.array(cheeses))
