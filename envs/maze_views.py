"""Observations of arbitrary maze states: procgen's 64×64 RGB render and the symbolic grid view."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from shardlab.envs import maze_state
from shardlab.envs.procgen_import import ProcgenGym3Env

GRID_CHANNELS = ("wall", "mouse", "cheese")
RGB_CHANNELS = ("red", "green", "blue")
_MODE_OF_WORLD = {15: "easy", 25: "hard"}
_renderers: dict[str, ProcgenGym3Env] = {}


def observation_channels(obs: str) -> tuple[str, ...]:
    """Names of the input channels of an ``obs`` kind: the grid view's, else procgen's RGB."""
    return GRID_CHANNELS if obs == "grid" else RGB_CHANNELS


def render_rgb(states: Sequence[bytes]) -> np.ndarray:
    """Procgen's (K, 64, 64, 3) uint8 images of K states, rendered in one batch."""
    if not states:
        return np.zeros((0, 64, 64, 3), np.uint8)
    world = maze_state.layout(states[0]).world_dim
    mode = _MODE_OF_WORLD.get(world)
    if mode is None:
        raise maze_state.StateError(f"no procgen mode renders a {world}×{world} world")
    env = _renderers.get(mode)
    if env is None or env.num < len(states):
        # creating procgen envs is slow (~6 ms each), so one grows and is reused
        size = max(len(states), 2 * env.num if env is not None else 64)
        env = _renderers[mode] = ProcgenGym3Env(num=size, env_name="maze", distribution_mode=mode)
    for index, state in enumerate(states):
        env.call_c_func("set_state", index, state, len(state))
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
