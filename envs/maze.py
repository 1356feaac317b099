"""Batched, seeded procgen ``maze`` returning torch tensors, with the cheese confined to the
top-right r×r region at every episode start (the goal-misgeneralization training setup).

:func:`make`, the one factory configs go through, builds the env of ``env.backend``: this
module's :class:`MazeEnv` (procgen) or envs/maze_native.py's torch re-implementation."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from shardlab.envs import maze_generate, maze_geometry, maze_native, maze_state, maze_views
from shardlab.envs.batched import BatchedEnv
from shardlab.envs.maze_actions import ACTION_DX, ACTION_DY, MOVE_GROUPS, greedy_move_actions  # noqa: F401 (re-exported)
from shardlab.envs.maze_config import DISTRIBUTION_MODES, OBSERVATIONS, WORLD_DIM, MazeEnvConfig, backend_problem
from shardlab.envs.maze_episode import Episode  # noqa: F401 (re-exported)
from shardlab.envs.procgen_import import MAX_STATE_SIZE, ProcgenGym3Env
from shardlab.envs.seeding import RANK_SEED_STRIDE


def observation_shape(cfg: MazeEnvConfig) -> tuple[int, int, int]:
    """(H, W, C) of one observation."""
    side = 64 if cfg.obs == "rgb" else WORLD_DIM[cfg.distribution_mode]
    return side, side, 3


def env_shapes(cfg: MazeEnvConfig) -> dict[str, Any]:
    """What a network for these envs takes from them (the kind's ``env_shapes``): the observation shape."""
    return {"observation_shape": observation_shape(cfg)}


def cheese_candidates(inner: np.ndarray, region: int) -> list[tuple[int, int]]:
    """Where ``rand_region`` may put the cheese: open squares of the top-right region, not the start."""
    return [s for s in maze_geometry.region_squares(inner, region) if s != maze_geometry.START]


class MazeEnv:
    """``num_envs`` procgen mazes stepped together (an :class:`envs.batched.BatchedEnv`); observations
    are uint8 (N, 64, 64, 3) tensors."""

    num_actions = 15  # procgen's action set, which the policy's logits cover

    def __init__(self, cfg: MazeEnvConfig, rank: int = 0):
        if cfg.distribution_mode not in DISTRIBUTION_MODES:
            raise ValueError(f"env.distribution_mode must be one of {DISTRIBUTION_MODES}, "
                             f"got {cfg.distribution_mode!r}")
        if cfg.rand_region is not None and cfg.rand_region < 0:
            raise ValueError(f"env.rand_region must be >= 0 or null, got {cfg.rand_region}")
        if cfg.obs not in OBSERVATIONS:
            raise ValueError(f"env.obs must be one of {OBSERVATIONS}, got {cfg.obs!r}")
        if cfg.max_maze_size is not None and (cfg.max_maze_size < 3 or cfg.max_maze_size % 2 == 0):
            raise ValueError(f"env.max_maze_size must be odd and >= 3, got {cfg.max_maze_size}")
        if cfg.min_maze_size is not None and (cfg.min_maze_size < 3 or cfg.min_maze_size % 2 == 0
                                              or cfg.min_maze_size > (cfg.max_maze_size or WORLD_DIM[cfg.distribution_mode])):
            raise ValueError(f"env.min_maze_size must be odd, >= 3 and <= max_maze_size, got {cfg.min_maze_size}")
        self.cfg = cfg
        self.num_envs = cfg.num_envs
        seed = cfg.seed + RANK_SEED_STRIDE * rank
        self._env = ProcgenGym3Env(num=cfg.num_envs, env_name="maze", start_level=cfg.start_level,
                                   num_levels=cfg.num_levels,
                                   distribution_mode=cfg.distribution_mode, rand_seed=seed)
        self._rng = np.random.default_rng(seed)
        self._buf = self._env._ffi.new(f"char[{MAX_STATE_SIZE}]")
        n = cfg.num_envs
        self._return = np.zeros(n, np.float64)
        self._length = np.zeros(n, np.int64)
        self._corner = np.zeros(n, bool)
        self._cheese: list[Optional[tuple[int, int]]] = [None] * n
        self._maze_dim = np.zeros(n, np.int64)
        # the mouse is tracked by replaying its moves against the walls (checked against procgen's
        # state in tests), because reading every env's state at every step costs more than the game
        self._walls = np.ones((n, 1, 1), bool)
        self._mouse = np.zeros((n, 2), np.int64)  # world (x, y)
        self._margin = np.zeros(n, np.int64)
        self._obs: Optional[torch.Tensor] = None

    # -- procgen state access, one env at a time -------------------------------------------
    def get_state(self, index: int) -> bytes:
        """The procgen state bytes of env ``index``."""
        size = self._env.call_c_func("get_state", index, self._buf, MAX_STATE_SIZE)
        return bytes(self._env._ffi.buffer(self._buf, size))

    def set_state(self, index: int, state: bytes) -> None:
        """Replace env ``index``'s game state (the next observation shows it)."""
        where = maze_state.layout(state)
        world = WORLD_DIM[self.cfg.distribution_mode]
        if where.world_dim != world:  # procgen would take it, and _track would drop every env's walls
            raise maze_state.StateError(
                f"state has a {where.world_dim}×{where.world_dim} world but this env is "
                f"{self.cfg.distribution_mode!r} ({world}×{world}); use a state of the same mode")
        self._env.call_c_func("set_state", index, state, len(state))
        self._track(index, state, where)

    def load_states(self, states: Sequence[bytes]) -> torch.Tensor:
        """Start a new episode in every env from ``states`` (one per env) and return the
        observations; unlike ``reset()`` nothing is re-placed (no rand_region, no max_maze_size)."""
        if len(states) != self.num_envs:
            raise ValueError(f"load_states needs one state per env ({self.num_envs}), got {len(states)}")
        for index, state in enumerate(states):
            self.set_state(index, state)
        # procgen's step count (its 500-step timeout) comes from the state; our counters restart
        self._return[:] = 0.0
        self._length[:] = 0
        self._corner[:] = False
        _, obs, _ = self._env.observe()
        self._obs = self._observation(obs)
        return self._obs

    def _track(self, index: int, state: bytes, where: maze_state.Layout) -> None:
        """Record the cheese, maze size, walls and mouse of env ``index`` from its state."""
        world = maze_state.grid(state, where)
        if self._walls.shape[1] != world.shape[0]:
            self._walls = np.ones((self.num_envs, *world.shape), bool)
        self._walls[index] = world == maze_state.WALL
        self._cheese[index] = maze_state.cheese_square(state, where)
        self._maze_dim[index] = where.maze_dim
        self._margin[index] = where.margin
        self._mouse[index] = np.add(maze_state.mouse_square(state, where), where.margin)

    def rng_state(self) -> dict:
        """The cheese-placement RNG state, for checkpoints."""
        return self._rng.bit_generator.state

    def set_rng_state(self, state: dict) -> None:
        """Restore the cheese-placement RNG."""
        self._rng.bit_generator.state = state

    # -- stepping ---------------------------------------------------------------------------
    def reset(self) -> torch.Tensor:
        """Begin tracking and return the first observations; call once, before the first step.

        Procgen starts every env in a fresh level and resets finished episodes by itself, so this
        does not start new episodes: it places the cheese (``rand_region``), shrinks the maze
        (``max_maze_size``) and reads the states. To restart envs in given mazes use
        :meth:`load_states`.
        """
        self._start_episodes(np.arange(self.num_envs))
        _, obs, _ = self._env.observe()
        self._obs = self._observation(obs)
        return self._obs

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Episode]]:
        """Act in every env; returns (obs, reward, done, finished episodes). Done envs auto-reset."""
        action = np.asarray(actions.detach().cpu(), dtype=np.int64)
        self._env.act(action.astype(np.int32))
        reward, obs, first = self._env.observe()
        self._move_mice(action)
        reached_cheese = reward > 0  # procgen's only reward is the cheese's
        if self.cfg.cheese_reward != 10.0:
            reward = np.where(reached_cheese, np.float32(self.cfg.cheese_reward), reward)
        self._return += reward
        self._length += 1
        finished: list[Episode] = []
        done_idx = np.flatnonzero(first)
        square = self._mouse - self._margin[:, None]
        for i in done_idx:
            reached = bool(reached_cheese[i])
            corner = (self._maze_dim[i] - 1,) * 2
            finished.append(Episode(float(self._return[i]), int(self._length[i]), reached,
                                    bool(self._corner[i] or (reached and self._cheese[i] == corner)),
                                    int(self._maze_dim[i]), (int(square[i, 0]), int(square[i, 1]))))
        self._corner |= ~first & (square == (self._maze_dim - 1)[:, None]).all(1)
        if len(done_idx):
            self._start_episodes(done_idx)
            if self._edits_states and self.cfg.obs == "rgb":  # re-render the edited states
                _, obs, _ = self._env.observe()
        self._obs = self._observation(obs)
        return self._obs, torch.from_numpy(reward.astype(np.float32)), torch.from_numpy(first.copy()), finished

    @property
    def _edits_states(self) -> bool:
        return (self.cfg.rand_region is not None or self.cfg.max_maze_size is not None
                or self.cfg.min_maze_size is not None)

    def _observation(self, procgen_obs: dict) -> torch.Tensor:
        if self.cfg.obs == "rgb":
            return torch.from_numpy(np.array(procgen_obs["rgb"]))
        cheese = np.array([c if c is not None else (-1, -1) for c in self._cheese])
        cheese = np.where(cheese >= 0, cheese + self._margin[:, None], -1)
        return torch.from_numpy(maze_views.grid_view(self._walls, self._mouse, cheese))

    def _move_mice(self, action: np.ndarray) -> None:
        target = self._mouse + np.stack([ACTION_DX[action], ACTION_DY[action]], 1)
        size = self._walls.shape[1]
        inside = ((target >= 0) & (target < size)).all(1)
        clipped = target.clip(0, size - 1)
        free = inside & ~self._walls[np.arange(self.num_envs), clipped[:, 1], clipped[:, 0]]
        self._mouse[free] = target[free]

    def _start_episodes(self, indices: np.ndarray) -> None:
        for i in indices:
            state = self.get_state(i)
            where = maze_state.layout(state)
            if self._size_outside(where.maze_dim):
                state, where = self._smaller_maze(state)
                if self.cfg.rand_region is None:
                    self.set_state(i, state)
                    continue
            if self.cfg.rand_region is not None:
                squares = cheese_candidates(maze_state.inner_grid(state, where), self.cfg.rand_region)
                square = squares[self._rng.integers(len(squares))]
                self.set_state(i, maze_state.with_cheese_at(state, square, where))
            else:
                self._track(i, state, where)
        self._return[indices] = 0.0
        self._length[indices] = 0
        self._corner[indices] = False

    def _size_outside(self, dim: int) -> bool:
        cfg = self.cfg
        return ((cfg.max_maze_size is not None and dim > cfg.max_maze_size)
                or (cfg.min_maze_size is not None and dim < cfg.min_maze_size))

    def _smaller_maze(self, state: bytes) -> tuple[bytes, maze_state.Layout]:
        """Replace the maze by a random one of odd size in [min_maze_size, max_maze_size], cheese anywhere."""
        low = self.cfg.min_maze_size or 3
        high = self.cfg.max_maze_size or WORLD_DIM[self.cfg.distribution_mode]
        size = int(self._rng.choice(np.arange(low, high + 1, 2)))
        inner = maze_generate.random_maze(size, self._rng)
        ys, xs = np.nonzero(inner != maze_state.WALL)
        choices = [(int(x), int(y)) for x, y in zip(xs, ys) if (x, y) != (0, 0)]
        state = maze_state.with_maze(state, inner)
        state = maze_state.with_cheese_at(state, choices[self._rng.integers(len(choices))])
        return state, maze_state.layout(state)

    @property
    def cheese_squares(self) -> list[Optional[tuple[int, int]]]:
        """Current cheese square (x, y) of every env, in inner-maze coordinates."""
        return list(self._cheese)

    @property
    def mouse_squares(self) -> list[tuple[int, int]]:
        """Current mouse square (x, y) of every env, in inner-maze coordinates."""
        return [tuple(int(v) for v in row) for row in self._mouse - self._margin[:, None]]

    @property
    def maze_dims(self) -> np.ndarray:
        """Current inner maze size of every env."""
        return self._maze_dim.copy()

    def close(self) -> None:
        """Release procgen's resources."""
        self._env.close()


def make(cfg: MazeEnvConfig, rank: int = 0, device: Union[str, torch.device] = "cpu") -> BatchedEnv:
    """The batched maze env of ``cfg.backend`` for DDP rank ``rank`` (each rank gets distinct seeds);
    only the native backend can live on another ``device`` than the CPU."""
    problem = backend_problem(cfg.backend, cfg.num_levels)
    if problem is not None:
        raise ValueError(problem)
    if cfg.backend == "native":
        return maze_native.make(cfg, rank, device)
    if torch.device(device).type != "cpu":
        raise ValueError(f"the procgen maze backend runs on the CPU, not {device}; "
                         "use env.backend: native for an env on another device")
    return MazeEnv(cfg, rank)
