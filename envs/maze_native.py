"""Procgen's ``maze`` re-implemented in torch: batched, vectorised over envs, on any torch device.

:class:`NativeMazeEnv` has :class:`envs.maze.MazeEnv`'s interface (an :class:`envs.batched.BatchedEnv`)
and both observations: the symbolic grid view, and procgen's 64×64 RGB frames pixel for pixel
(:mod:`envs.maze_native_rgb`: procgen renders each episode's level picture once, the mouse is
composited in torch every step). It matches procgen
(openai/procgen ``games/maze.cpp``, ``mazegen.cpp``, ``game.cpp``, ``basic-abstract-game.cpp``):

- **Mazes.** The world is 15×15 (easy) or 25×25 (hard); the inner maze has an odd side uniform over
  3..world (procgen's ``randn((world - 1) / 2) * 2 + 3``), centred, all else wall, and the mouse
  starts at its bottom-left square. The layout is randomised Kruskal on the (even, even) squares:
  procgen removes uniformly chosen remaining walls one at a time, joining two cell sets when they
  differ, which is Kruskal over a uniformly random order of the walls. Here a batch of mazes of
  different sizes is built at once: random keys per candidate wall (walls outside a maze's size
  sort last), one loop over the ≤ 2·12·13 wall slots, and union-find replaced by a per-maze label
  array relabelled with ``torch.where``. The distribution is procgen's; its RNG stream is not.
- **Cheese.** Uniform over the open inner squares except the start (procgen's ``place_objects`` over
  the freed cells, cell 0 excluded); with ``rand_region`` r, uniform over
  :func:`envs.maze.cheese_candidates`'s squares, as the procgen backend re-places it.
  ``max_maze_size``/``min_maze_size`` make the side uniform over the odd sizes in range, the
  distribution the procgen backend gets by replacing out-of-range mazes.
- **Dynamics.** The 15 actions move by :data:`envs.maze_actions.ACTION_DX`/``ACTION_DY``; a move happens iff
  the target is inside the world and not a wall. Landing on the cheese gives ``cheese_reward`` and
  ends the episode; so does procgen's step counter reaching its 500-step timeout (``cur_time``,
  incremented before the check, read from the state bytes by :meth:`NativeMazeEnv.load_states`).
  Done envs restart in a fresh maze, drawn from a pool generated in batches.
- **Records.** :class:`envs.maze_episode.Episode` records with ``MazeEnv.step``'s semantics, the corner flag
  included (set only by squares reached on steps that did not end the episode).

Procgen's level seeds (``start_level``/``num_levels``) cannot be reproduced, so only
``num_levels = 0`` (fresh mazes) is accepted.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence, Union

import numpy as np
import torch

from shardlab.envs import maze_state
from shardlab.envs.maze_actions import ACTION_DX, ACTION_DY
from shardlab.envs.maze_episode import Episode
from shardlab.envs.maze_config import DISTRIBUTION_MODES, OBSERVATIONS, WORLD_DIM, MazeEnvConfig
from shardlab.envs.seeding import RANK_SEED_STRIDE

__all__ = ["NativeMazeEnv", "MazeBatch", "generate_mazes", "cur_time", "with_cur_time", "make", "TIMEOUT"]

TIMEOUT = 500  # MazeGame's timeout: the episode ends when cur_time reaches it
# Game::serialize writes 15 ints after rand_gen (reward, done, level_complete, action, timeout,
# current_level_seed, prev_level_seed, episodes_remaining, episode_done, last_reward_timer,
# last_reward, default_action, fixed_asset_seed, cur_time, is_waiting_for_step): cur_time is the 14th
_CUR_TIME_INDEX = 13
_MIN_POOL = 512  # mazes per pool refill at least; one refill's fixed cost is the 312-step wall loop
Device = Union[str, torch.device]


def _cur_time_offset(where: maze_state.Layout) -> int:
    """Byte offset of ``cur_time`` in a state laid out as ``where``."""
    # the 15 Game ints start right after the RNG strings, _AFTER_RNG bytes before the mouse
    return where.mouse_offset - maze_state._AFTER_RNG + 4 * _CUR_TIME_INDEX


def cur_time(state: bytes, where: Optional[maze_state.Layout] = None) -> int:
    """Procgen's step counter ``cur_time`` stored in maze state bytes (the timeout counts it)."""
    (value,) = struct.unpack_from("<i", state, _cur_time_offset(where or maze_state.layout(state)))
    return value


def with_cur_time(state: bytes, value: int) -> bytes:
    """A copy of ``state`` whose step counter is ``value`` (``TIMEOUT - value`` steps are left)."""
    out = bytearray(state)
    struct.pack_into("<i", out, _cur_time_offset(maze_state.layout(state)), value)
    return bytes(out)


@dataclass(frozen=True)
class MazeBatch:
    """A batch of mazes in world coordinates ([y, x], y = 0 at the bottom)."""

    walls: torch.Tensor  # (B, W, W) bool
    cheese: torch.Tensor  # (B, 2) world (x, y)
    maze_dim: torch.Tensor  # (B,) int64, odd
    # what only the RGB view shows (None unless asked for): the background image and its offset
    background: Optional[torch.Tensor] = None  # (B,) int64 in 0..8
    bg_pct_x: Optional[torch.Tensor] = None  # (B,) float32 in [0, 1)

    def __len__(self) -> int:
        """The number of mazes."""
        return int(self.maze_dim.shape[0])

    def rows(self, start: int, stop: int) -> "MazeBatch":
        """Mazes ``start``..``stop`` (views)."""
        looks = (None, None) if self.background is None else (self.background[start:stop],
                                                               self.bg_pct_x[start:stop])
        return MazeBatch(self.walls[start:stop], self.cheese[start:stop], self.maze_dim[start:stop], *looks)

    @staticmethod
    def cat(parts: Sequence["MazeBatch"]) -> "MazeBatch":
        """The mazes of ``parts`` in order."""
        if len(parts) == 1:
            return parts[0]
        looks = (None, None) if parts[0].background is None else (
            torch.cat([p.background for p in parts]), torch.cat([p.bg_pct_x for p in parts]))
        return MazeBatch(torch.cat([p.walls for p in parts]), torch.cat([p.cheese for p in parts]),
                         torch.cat([p.maze_dim for p in parts]), *looks)


@dataclass(frozen=True)
class _Walls:
    """The candidate walls of the largest maze of a world, between cells (cx, cy) of a C×C grid."""

    cell_a: torch.Tensor  # (E,) flat cell index cy·C + cx of one side
    cell_b: torch.Tensor  # (E,) the other side
    square: torch.Tensor  # (E,) flat inner index y·W + x of the wall square between them
    cells_needed: torch.Tensor  # (E,) cells per side a maze needs for this wall to be inside it
    cell_square: torch.Tensor  # (C·C,) flat inner index of each cell's square
    cell_cells_needed: torch.Tensor  # (C·C,) cells per side a maze needs for the cell to be inside it


@lru_cache(maxsize=None)
def _wall_table(world_dim: int, device: str) -> _Walls:
    """The wall and cell tables of a ``world_dim`` world, built once per device."""
    cells = (world_dim + 1) // 2
    rows = []
    # (cell, cell, wall square, cells needed): a wall lies in a maze of c×c cells when both its
    # cells do, i.e. when c exceeds their largest coordinate (the order is irrelevant: it is shuffled)
    for cy in range(cells):  # horizontal neighbours
        for cx in range(cells - 1):
            rows.append((cy * cells + cx, cy * cells + cx + 1, 2 * cy * world_dim + 2 * cx + 1,
                         max(cx + 2, cy + 1)))
    for cy in range(cells - 1):  # vertical neighbours
        for cx in range(cells):
            rows.append((cy * cells + cx, (cy + 1) * cells + cx, (2 * cy + 1) * world_dim + 2 * cx,
                         max(cx + 1, cy + 2)))
    table = torch.tensor(rows, dtype=torch.int64, device=device)
    cy, cx = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    return _Walls(table[:, 0], table[:, 1], table[:, 2], table[:, 3],
                  (2 * cy * world_dim + 2 * cx).reshape(-1).to(device),
                  (torch.maximum(cx, cy) + 1).reshape(-1).to(device))


def _kruskal(sizes: torch.Tensor, world_dim: int, generator: torch.Generator) -> torch.Tensor:
    """Open inner squares (B, W, W) bool, [y, x] from the maze's bottom-left, of mazes of side ``sizes``."""
    device = sizes.device
    table = _wall_table(world_dim, str(device))
    batch, cells = sizes.shape[0], (sizes + 1) // 2
    # a uniformly random wall order per maze; walls outside the maze sort after all of its own
    valid = table.cells_needed[None, :] <= cells[:, None]
    keys = torch.rand(batch, table.cell_a.shape[0], generator=generator, device=device)
    order = torch.where(valid, keys, 2.0).argsort(1)
    count = valid.sum(1)
    # (E, B) so that the k-th wall of every maze is one contiguous row
    first, second = table.cell_a[order].t().contiguous(), table.cell_b[order].t().contiguous()
    live = torch.arange(order.shape[1], device=device)[:, None] < count[None, :]
    # int16 labels (≤ 169 cells) halve the memory traffic of the relabelling, the loop's main cost
    labels = torch.arange(table.cell_square.shape[0], dtype=torch.int16, device=device)
    labels = labels.expand(batch, -1).contiguous()
    opened = torch.zeros(order.shape[1], batch, dtype=torch.bool, device=device)
    for k in range(int(count.max())):  # each step relabels one set per maze: no per-maze loop
        a = labels.gather(1, first[k, :, None])
        b = labels.gather(1, second[k, :, None])
        merge = (a != b) & live[k, :, None]
        labels = torch.where(merge & (labels == a), b, labels)
        opened[k] = merge[:, 0]
    inner = torch.zeros(batch, world_dim * world_dim, dtype=torch.bool, device=device)
    inner[:, table.cell_square] = table.cell_cells_needed[None, :] <= cells[:, None]
    inner.scatter_(1, table.square[order], opened.t())  # each wall square is written once per maze
    return inner.view(batch, world_dim, world_dim)


def _centre(inner: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """World open squares (B, W, W): each inner maze moved up and right by its margin."""
    batch, world_dim = inner.shape[0], inner.shape[1]
    margin = (world_dim - sizes) // 2
    shifted = torch.arange(world_dim, device=inner.device)[None, :] - margin[:, None]  # (B, W)
    inside = shifted >= 0  # beyond the maze's far side the inner array is closed already
    index = shifted.clamp(min=0)
    rows = torch.arange(batch, device=inner.device)[:, None, None]
    world = inner[rows, index[:, :, None], index[:, None, :]]
    return world & inside[:, :, None] & inside[:, None, :]


def _place_cheese(open_: torch.Tensor, sizes: torch.Tensor, rand_region: Optional[int],
                  generator: torch.Generator) -> torch.Tensor:
    """World (x, y) of a cheese uniform over each maze's allowed squares (B, 2)."""
    batch, world_dim = open_.shape[0], open_.shape[1]
    margin = (world_dim - sizes) // 2
    coords = torch.arange(world_dim, device=open_.device)[None, :] - margin[:, None]  # inner coordinate
    allowed = open_ & ~((coords == 0)[:, :, None] & (coords == 0)[:, None, :])  # not the start
    if rand_region is not None:  # maze_geometry.region_squares: the top-right min(max(r, 1), d) squares
        low = sizes - torch.clamp(sizes, max=max(rand_region, 1))
        top_right = coords >= low[:, None]
        allowed = allowed & top_right[:, :, None] & top_right[:, None, :]
    keys = torch.rand(batch, world_dim * world_dim, generator=generator, device=open_.device)
    flat = torch.where(allowed.view(batch, -1), keys, -1.0).argmax(1)  # uniform over allowed squares
    return torch.stack([flat % world_dim, flat // world_dim], 1)


def generate_mazes(count: int, world_dim: int, generator: torch.Generator, *, min_size: int = 3,
                   max_size: Optional[int] = None, rand_region: Optional[int] = None,
                   device: Device = "cpu", looks: bool = False) -> MazeBatch:
    """``count`` fresh procgen-distributed mazes: side uniform over odd sizes in [min_size, max_size];
    with ``looks``, also each level's background image and offset (drawn last, so the mazes are the same)."""
    high = min(max_size or world_dim, world_dim)
    if min_size < 3 or min_size % 2 == 0 or high % 2 == 0 or min_size > high:
        raise ValueError(f"maze sizes must be odd with 3 <= min <= max <= {world_dim}, "
                         f"got [{min_size}, {high}]")
    sizes = min_size + 2 * torch.randint(0, (high - min_size) // 2 + 1, (count,), generator=generator,
                                         device=device)
    open_ = _centre(_kruskal(sizes, world_dim, generator), sizes)
    cheese = _place_cheese(open_, sizes, rand_region, generator)
    if not looks:
        return MazeBatch(~open_, cheese, sizes)
    # BasicAbstractGame::game_reset: background_index = randn(9), bg_pct_x = rand01()
    background = torch.randint(0, maze_state.BACKGROUNDS, (count,), generator=generator, device=device)
    bg_pct_x = torch.rand(count, generator=generator, device=device)
    return MazeBatch(~open_, cheese, sizes, background, bg_pct_x)


def _check_config(cfg: MazeEnvConfig) -> None:
    """Raise ValueError for settings the procgen backend refuses or the native one cannot honour."""
    if cfg.distribution_mode not in DISTRIBUTION_MODES:
        raise ValueError(f"env.distribution_mode must be one of {DISTRIBUTION_MODES}, "
                         f"got {cfg.distribution_mode!r}")
    if cfg.obs not in OBSERVATIONS:
        raise ValueError(f"env.obs must be one of {OBSERVATIONS}, got {cfg.obs!r}")
    if cfg.num_levels != 0:
        raise ValueError(f"the native maze backend draws fresh mazes only (env.num_levels: 0); procgen's "
                         f"level seeds cannot be reproduced natively, got env.num_levels: {cfg.num_levels}")
    if cfg.rand_region is not None and cfg.rand_region < 0:
        raise ValueError(f"env.rand_region must be >= 0 or null, got {cfg.rand_region}")
    world = WORLD_DIM[cfg.distribution_mode]
    if cfg.max_maze_size is not None and (cfg.max_maze_size < 3 or cfg.max_maze_size % 2 == 0):
        raise ValueError(f"env.max_maze_size must be odd and >= 3, got {cfg.max_maze_size}")
    high = min(cfg.max_maze_size or world, world)
    if cfg.min_maze_size is not None and (cfg.min_maze_size < 3 or cfg.min_maze_size % 2 == 0
                                          or cfg.min_maze_size > high):
        raise ValueError(f"env.min_maze_size must be odd, >= 3 and <= max_maze_size (and the world, {world}), "
                         f"got {cfg.min_maze_size}")


@dataclass(frozen=True)
class _Loaded:
    """One state's contents, in world coordinates."""

    walls: np.ndarray
    mouse: tuple[int, int]
    cheese: tuple[int, int]  # (-1, -1): no cheese
    maze_dim: int
    cur_time: int
    state: bytes  # the bytes themselves, which the RGB view renders


class NativeMazeEnv:
    """``num_envs`` procgen mazes simulated in torch (see the module docstring); observations are
    uint8 (N, W, W, 3) grid views or (N, 64, 64, 3) RGB frames on the env's device."""

    num_actions = 15  # procgen's action set, which the policy's logits cover

    def __init__(self, cfg: MazeEnvConfig, rank: int = 0, device: Device = "cpu"):
        """Check ``cfg`` and allocate the env state on ``device``; mazes come with reset/load_states."""
        _check_config(cfg)
        self.cfg = cfg
        self.num_envs = n = cfg.num_envs
        self.device = torch.device(device)
        self.world_dim = w = WORLD_DIM[cfg.distribution_mode]
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(cfg.seed + RANK_SEED_STRIDE * rank)
        # squares are flat indices y·P + x' of the world padded with a ring of wall (P = W + 2, x' = x + 1,
        # y' = y + 1): a move is one add and one gather, and the ring blocks moves out of the world
        self._side = p = w + 2
        self._delta = torch.tensor(np.asarray(ACTION_DY) * p + np.asarray(ACTION_DX), device=self.device)
        self._dx = torch.tensor(np.asarray(ACTION_DX), device=self.device)
        self._cheese_reward = torch.tensor(cfg.cheese_reward, dtype=torch.float32, device=self.device)
        self._rows = torch.arange(n, device=self.device)
        self._padded = torch.ones(n, p, p, dtype=torch.bool, device=self.device)
        self.walls = self._padded[:, 1:-1, 1:-1]  # [y, x], y = 0 at the bottom (a view)
        flat = torch.arange(p * p, device=self.device)
        x, y = flat % p - 1, flat // p - 1
        self._world_of = torch.stack([x, y], 1)  # padded flat -> world (x, y)
        self._square_of = (y * w + x).clamp(0, w * w - 1)  # padded flat -> unpadded flat, y·W + x
        self._grid_pixel_of = (((w - 1 - y) * w + x) * 3 + 1).clamp(0, w * w * 3 - 1)  # -> the mouse channel
        self._base = torch.zeros(n, w, w, 3, dtype=torch.uint8, device=self.device)  # walls and cheese
        self._mouse_at = torch.zeros(n, dtype=torch.int64, device=self.device)  # padded flat
        self._cheese = torch.full((n, 2), -1, dtype=torch.int64, device=self.device)  # world (x, y), -1: none
        self._cheese_at = torch.full((n,), -1, dtype=torch.int64, device=self.device)  # padded flat, -1: none
        self._corner_at = torch.zeros(n, dtype=torch.int64, device=self.device)  # the maze's top-right square
        self._cheese_at_corner = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._maze_dim = torch.zeros(n, dtype=torch.int64, device=self.device)
        # procgen's step counter and the episode's length, side by side so that one add steps both
        self._clock = torch.zeros(n, 2, dtype=torch.int64, device=self.device)
        self._cur_time = self._clock[:, 0]
        self._return = torch.zeros(n, dtype=torch.float32, device=self.device)
        self._length = self._clock[:, 1]
        self._corner = torch.zeros(n, dtype=torch.bool, device=self.device)
        self._started = False
        self._rgb = None
        if cfg.obs == "rgb":  # imported here: the grid view needs neither procgen nor its renderer
            from shardlab.envs.maze_native_rgb import RgbFrames
            self._rgb = RgbFrames(n, w, self.device)
        # the pool of fresh mazes; rng_state is the generator's state before the pool was drawn and
        # how many were taken, so a restore regenerates the very same pool
        self._pool_size = max(_MIN_POOL, 2 * n)
        self._pool: Optional[MazeBatch] = None
        self._taken = 0
        self._pool_origin = self._generator.get_state()

    # -- maze supply ----------------------------------------------------------------------
    def _refill(self) -> None:
        """Generate a new pool of mazes (one vectorised batch)."""
        self._pool_origin = self._generator.get_state()
        cfg = self.cfg
        self._pool = generate_mazes(self._pool_size, self.world_dim, self._generator,
                                    min_size=cfg.min_maze_size or 3, max_size=cfg.max_maze_size,
                                    rand_region=cfg.rand_region, device=self.device,
                                    looks=self._rgb is not None)
        self._taken = 0

    def _take(self, count: int) -> MazeBatch:
        """The next ``count`` fresh mazes of the pool, refilling it when it runs out."""
        parts = []
        while count > 0:
            if self._pool is None or self._taken >= self._pool_size:
                self._refill()
            stop = min(self._pool_size, self._taken + count)
            parts.append(self._pool.rows(self._taken, stop))
            count -= stop - self._taken
            self._taken = stop
        return MazeBatch.cat(parts)

    def rng_state(self) -> dict:
        """The maze RNG state (JSON-serialisable), for checkpoints."""
        origin = base64.b64encode(self._pool_origin.numpy().tobytes()).decode("ascii")
        return {"generator": origin, "pool_size": self._pool_size if self._pool is not None else 0,
                "taken": self._taken}

    def set_rng_state(self, state: dict) -> None:
        """Restore the maze RNG: the mazes drawn next are those drawn after :meth:`rng_state`."""
        origin = torch.frombuffer(bytearray(base64.b64decode(state["generator"])), dtype=torch.uint8)
        self._generator.set_state(origin)
        self._pool, self._pool_origin, self._taken = None, origin.clone(), 0
        if state["pool_size"]:
            self._pool_size = int(state["pool_size"])
            self._refill()
            self._taken = int(state["taken"])

    # -- episodes -------------------------------------------------------------------------
    def _flat(self, world: torch.Tensor) -> torch.Tensor:
        """Padded flat indices of world squares (K, 2) = (x, y); -1 for (-1, -1) (no cheese)."""
        return torch.where(world[:, 0] >= 0, (world[:, 1] + 1) * self._side + world[:, 0] + 1, -1)

    def _place(self, index: torch.Tensor, walls: torch.Tensor, mouse: torch.Tensor, cheese: torch.Tensor,
               maze_dim: torch.Tensor) -> None:
        """Envs ``index`` hold these world walls, mouse and cheese squares (x, y) and maze sizes."""
        w = self.world_dim
        self.walls[index] = walls
        self._mouse_at[index] = self._flat(mouse)
        self._cheese[index] = cheese
        self._cheese_at[index] = self._flat(cheese)
        self._maze_dim[index] = maze_dim
        corner = ((w + maze_dim) // 2 - 1)[:, None].expand(-1, 2)  # margin + maze_dim - 1
        self._corner_at[index] = self._flat(corner)
        self._cheese_at_corner[index] = (cheese == corner).all(1)
        base = torch.zeros(len(maze_dim), w, w, 3, dtype=torch.uint8, device=self.device)
        base[..., 0] = walls.flip(1).to(torch.uint8) * 255
        present = cheese[:, 0] >= 0
        rows = torch.arange(len(maze_dim), device=self.device)
        base[rows[present], w - 1 - cheese[present, 1], cheese[present, 0], 2] = 255
        self._base[index] = base

    def _install(self, index: torch.Tensor, mazes: MazeBatch) -> None:
        """Put ``mazes`` into envs ``index`` with the mouse at the start and cur_time 0."""
        margin = (self.world_dim - mazes.maze_dim) // 2
        self._place(index, mazes.walls, margin[:, None].expand(-1, 2), mazes.cheese, mazes.maze_dim)
        self._cur_time[index] = 0
        self._clear_counters(index)
        if self._rgb is not None:
            self._rgb.show_levels(index, mazes.walls, mazes.cheese, mazes.maze_dim, mazes.background,
                                  mazes.bg_pct_x)

    def _clear_counters(self, index: torch.Tensor) -> None:
        """Restart the episode statistics of envs ``index``."""
        self._return[index] = 0.0
        self._length[index] = 0
        self._corner[index] = False

    def reset(self) -> torch.Tensor:
        """Start a fresh episode in every env and return the first observations."""
        self._install(self._rows, self._take(self.num_envs))
        self._started = True
        return self._observation()

    def _parse(self, state: bytes) -> _Loaded:
        """Read one procgen state, refusing a world of the other mode like ``MazeEnv.set_state``."""
        where = maze_state.layout(state)
        if where.world_dim != self.world_dim:
            raise maze_state.StateError(
                f"state has a {where.world_dim}×{where.world_dim} world but this env is "
                f"{self.cfg.distribution_mode!r} ({self.world_dim}×{self.world_dim}); use a state of the same mode")
        mouse = maze_state.mouse_square(state, where)
        cheese = maze_state.cheese_square(state, where)
        return _Loaded(maze_state.grid(state, where) == maze_state.WALL,
                       (mouse[0] + where.margin, mouse[1] + where.margin),
                       (cheese[0] + where.margin, cheese[1] + where.margin) if cheese is not None else (-1, -1),
                       where.maze_dim, cur_time(state, where), state)

    def _write(self, index: Sequence[int], loaded: Sequence[_Loaded]) -> None:
        """Put parsed states into envs ``index`` (their step counters come from the states)."""
        at = torch.as_tensor(list(index), dtype=torch.int64, device=self.device)
        walls = torch.from_numpy(np.stack([item.walls for item in loaded])).to(self.device)
        as_tensor = lambda values: torch.tensor(values, dtype=torch.int64, device=self.device)  # noqa: E731
        self._place(at, walls, as_tensor([item.mouse for item in loaded]).view(-1, 2),
                    as_tensor([item.cheese for item in loaded]).view(-1, 2), as_tensor([item.maze_dim for item in loaded]))
        self._cur_time[at] = as_tensor([item.cur_time for item in loaded])
        if self._rgb is not None:
            self._rgb.show_states(at, [item.state for item in loaded])

    def set_state(self, index: int, state: bytes) -> None:
        """Replace env ``index``'s game by a procgen state, like ``MazeEnv.set_state`` (its episode
        statistics carry on; procgen's step counter comes from the state)."""
        self._write([index], [self._parse(state)])
        self._started = True

    def load_states(self, states: Sequence[bytes]) -> torch.Tensor:
        """Start a new episode in every env from procgen ``states`` (one per env) and return the
        observations; nothing is re-placed (no rand_region, no max_maze_size)."""
        if len(states) != self.num_envs:
            raise ValueError(f"load_states needs one state per env ({self.num_envs}), got {len(states)}")
        loaded = [self._parse(state) for state in states]  # all checked before any env changes
        self._write(range(self.num_envs), loaded)
        self._clear_counters(self._rows)
        self._started = True
        return self._observation()

    # -- stepping ---------------------------------------------------------------------------
    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Episode]]:
        """Act in every env; returns (obs, reward, done, finished episodes). Done envs auto-reset."""
        if not self._started:
            raise RuntimeError("call reset() or load_states() before step()")
        action = torch.as_tensor(actions, device=self.device).to(torch.int64).reshape(self.num_envs)
        self._move_mice(action)
        self._clock += 1
        reached = self._mouse_at == self._cheese_at  # an absent cheese (-1) is never reached
        reward = torch.where(reached, self._cheese_reward, 0.0)
        done = reached | (self._cur_time >= TIMEOUT)
        self._return += reward
        done_index = done.nonzero().squeeze(1)
        finished = self._records(done_index, reached)
        # a square reached on this step counts from the next; done envs restart with a clear flag
        self._corner |= self._mouse_at == self._corner_at
        if finished:
            self._install(done_index, self._take(len(finished)))
        return self._observation(), reward, done, finished

    def _move_mice(self, action: torch.Tensor) -> None:
        """Move each mouse by its action unless the target is outside the world or a wall."""
        if self._rgb is not None:
            self._rgb.turn(self._dx[action])
        target = self._mouse_at + self._delta[action]
        blocked = self._padded.view(self.num_envs, -1).gather(1, target[:, None])[:, 0]
        self._mouse_at = torch.where(blocked, self._mouse_at, target)

    @property
    def _mouse(self) -> torch.Tensor:
        """World squares (N, 2) = (x, y) of the mice."""
        return self._world_of[self._mouse_at]

    def _records(self, index: torch.Tensor, reached: torch.Tensor) -> list[Episode]:
        """Episode records of the finished envs ``index``, in env order (one transfer off the device)."""
        if index.numel() == 0:
            return []
        # MazeEnv's record counts the corner when visited before this step, or eaten on it
        corner = self._corner | (reached & self._cheese_at_corner)
        margin = (self.world_dim - self._maze_dim[index]) // 2
        square = self._world_of[self._mouse_at[index]] - margin[:, None]  # inner (x, y)
        # every value is exact in float32 (returns are float32, counts small), so one stack suffices
        table = torch.stack([self._return[index], self._length[index].float(), reached[index].float(),
                             corner[index].float(), self._maze_dim[index].float(),
                             square[:, 0].float(), square[:, 1].float()], 1).cpu().tolist()
        return [Episode(ret, int(length), bool(got), bool(top_right), int(dim), (int(x), int(y)))
                for ret, length, got, top_right, dim, x, y in table]

    def _observation(self) -> torch.Tensor:
        """Fresh grid views (N, W, W, 3) uint8 like ``maze_views.grid_view`` (wall, mouse, cheese),
        or procgen's RGB frames."""
        if self._rgb is not None:
            return self._rgb.frames(self._square_of[self._mouse_at])
        obs = self._base.clone()
        obs.view(self.num_envs, -1)[self._rows, self._grid_pixel_of[self._mouse_at]] = 255
        return obs

    # -- views ----------------------------------------------------------------------------
    @property
    def cheese_squares(self) -> list[Optional[tuple[int, int]]]:
        """Current cheese square (x, y) of every env, in inner-maze coordinates (None: no cheese)."""
        margin = (self.world_dim - self._maze_dim) // 2
        inner = (self._cheese - margin[:, None]).tolist()
        present = (self._cheese[:, 0] >= 0).tolist()
        return [(x, y) if here else None for (x, y), here in zip(inner, present)]

    @property
    def mouse_squares(self) -> list[tuple[int, int]]:
        """Current mouse square (x, y) of every env, in inner-maze coordinates."""
        margin = (self.world_dim - self._maze_dim) // 2
        return [(x, y) for x, y in (self._mouse - margin[:, None]).tolist()]

    @property
    def maze_dims(self) -> np.ndarray:
        """Current inner maze size of every env."""
        return self._maze_dim.cpu().numpy().copy()

    @property
    def cur_times(self) -> torch.Tensor:
        """Procgen's step counter of every env (the episode times out when it reaches 500)."""
        return self._cur_time.clone()

    def inner_grid(self, index: int) -> np.ndarray:
        """Env ``index``'s inner maze [y, x] in procgen's codes (EMPTY, WALL, CHEESE), for maze_geometry."""
        return inner_grid(self.walls[index], self._cheese[index], int(self._maze_dim[index]))

    def close(self) -> None:
        """Drop the maze pool (nothing else is held)."""
        self._pool = None


def inner_grid(walls: torch.Tensor, cheese: torch.Tensor, maze_dim: int) -> np.ndarray:
    """One maze's inner grid [y, x] in procgen's codes from its world walls and world cheese (x, y)."""
    margin = (walls.shape[0] - maze_dim) // 2
    world = np.where(walls.cpu().numpy(), maze_state.WALL, maze_state.EMPTY).astype(np.int32)
    x, y = (int(v) for v in cheese)
    if x >= 0:
        world[y, x] = maze_state.CHEESE
    return world[margin:margin + maze_dim, margin:margin + maze_dim].copy()


def make(cfg: MazeEnvConfig, rank: int = 0, device: Device = "cpu") -> NativeMazeEnv:
    """Build the native batched maze env for DDP rank ``rank`` (each rank gets distinct seeds)."""
    return NativeMazeEnv(cfg, rank, device)
