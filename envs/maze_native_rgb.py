"""Procgen's 64×64 RGB maze frames for the native env, pixel for pixel.

Procgen draws a maze observation (``Game::observe``: no antialiasing, nearest-neighbour image
scaling) as its background image at a random horizontal offset, the wall and cheese tiles, then
the mouse sprite on top. Everything but the mouse is fixed for a whole episode, so a frame here is:

- **the level picture**, rendered once per episode by procgen itself: the episode's state with the
  mouse moved out of the picture, through :func:`envs.maze_views.render_rgb`. The background's
  offset is a float per level (``bg_pct_x``) sampled by Qt's nearest-neighbour scaler, which is not
  re-implemented: procgen's own renderer is exact by construction and costs one render per episode;
- **the mouse**, composited in torch every step. The sprite covers 2–8 pixels, and each is Qt's
  premultiplied source-over ``out = s + d·(255 − a)/255`` (rounded like Qt's ``BYTE_MUL``) of the
  level picture's pixel ``d``, with a colour ``s`` and alpha ``a`` that depend only on the mouse's
  square and on whether the sprite is mirrored (procgen mirrors it after a move right until a move
  left). :func:`sprite_table` measures ``(pixel, s, a)`` once per process from procgen's renders
  (the mouse on every square, both ways round, over five backgrounds) and solves them exactly.

Fresh native levels draw their background (one of procgen's 9, uniformly) and offset (uniform in
[0, 1)) like ``BasicAbstractGame::game_reset``; loaded procgen states keep their own. A batch of
finished episodes is written as procgen states with array operations (:func:`envs.maze_state.levels`);
procgen then renders them one C call each (over a few threads for big batches), the one per-env
loop of the native env, paid once per episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from shardlab.envs import maze_state, maze_views
from shardlab.envs.maze_config import MODE_OF_WORLD
from shardlab.envs.procgen_import import ProcgenGym3Env

SIDE = 64  # procgen's observation is 64×64 whatever the world size
# level pictures the sprite table is measured over: (background index, bg_pct_x), spread out so
# every sprite pixel lands on clearly different colours
_PROBES = ((0, 0.1), (3, 0.5), (5, 0.9), (8, 0.3), (1, 0.7))
_SPACING = 3  # mice per measuring render: one on every third square each way


@dataclass(frozen=True)
class SpriteTable:
    """Where the mouse sprite lands and how it blends, per orientation and world square.

    Indexed ``[reflected, y * world_dim + x]`` (world square, y = 0 at the bottom); each square's
    pixel list is padded to a common length by repeating its last entry (writing it twice is harmless).
    """

    pixels: np.ndarray  # (2, W·W, P) int64 flat pixel index row·64 + column
    colour: np.ndarray  # (2, W·W, P, 3) int32 premultiplied sprite colour s
    alpha: np.ndarray  # (2, W·W, P) int32 sprite alpha a


def _byte_mul(value: np.ndarray | torch.Tensor, alpha: np.ndarray | torch.Tensor):
    """Qt's ``BYTE_MUL`` per channel: ``value · alpha / 255`` rounded the way Qt's raster engine does."""
    product = value * alpha
    return (product + (product >> 8) + 0x80) >> 8


@lru_cache(maxsize=None)
def template_state(world_dim: int) -> bytes:
    """A procgen maze state of the world size, whose every other field the native levels reuse."""
    mode = MODE_OF_WORLD.get(world_dim)
    if mode is None:
        raise maze_state.StateError(f"no procgen mode has a {world_dim}×{world_dim} world")
    env = ProcgenGym3Env(num=1, env_name="maze", distribution_mode=mode, rand_seed=0)
    try:
        return bytes(env.callmethod("get_state")[0])
    finally:
        env.close()


@lru_cache(maxsize=None)
def sprite_table(world_dim: int) -> SpriteTable:
    """Measure the mouse sprite's pixels, colours and alphas from procgen's own renders (once per process)."""
    template = template_state(world_dim)
    where = maze_state.layout(template)
    empty = np.full((world_dim, world_dim), maze_state.EMPTY, dtype="<i4")
    base = maze_state.with_grid(template, where, empty)
    scenes = [maze_state.with_looks(base, index, pct, where=where) for index, pct in _PROBES]
    hidden = maze_views.render_rgb([maze_state.with_mouse_hidden(s, where) for s in scenes]).astype(np.int32)
    # a mouse on every third square in both directions per render: a sprite stays inside its own
    # square, so each changed pixel has exactly one mouse within a square of the one it lies in
    classes = [(cx, cy) for cy in range(_SPACING) for cx in range(_SPACING)]
    placed = [maze_state.with_mice(scene, _class_squares(world_dim, cx, cy), reflected, where)
              for reflected in (False, True) for cx, cy in classes for scene in scenes]
    shots = maze_views.render_rgb(placed).astype(np.int32)
    shots = shots.reshape(2, len(classes), len(_PROBES), SIDE, SIDE, 3)
    unit = SIDE / world_dim
    owner_of, flat, before, after = [], [], [], []  # one row per (orientation, square, covered pixel)
    for r in range(2):
        for c, (cx, cy) in enumerate(classes):
            rows, cols = np.nonzero((shots[r, c] != hidden).any(-1).any(0))
            x = np.floor((cols + 0.5) / unit).astype(int)
            y = world_dim - 1 - np.floor((rows + 0.5) / unit).astype(int)  # image rows count from the top
            # the class square within one square of (x, y): x rounded to the class's residue
            x = x + (cx - x + 1) % _SPACING - 1
            y = y + (cy - y + 1) % _SPACING - 1
            owner_of.append(r * world_dim * world_dim + y * world_dim + x)
            flat.append(rows * SIDE + cols)
            before.append(hidden[:, rows, cols])
            after.append(shots[r, c][:, rows, cols])
    owner = np.concatenate(owner_of)
    d, out = np.concatenate(before, 1), np.concatenate(after, 1)  # (probes, rows, 3)
    solved_s = np.zeros(out.shape[1:], np.int32)
    solved_a = np.full(out.shape[1], -1, np.int32)
    for a in range(256):  # the alpha is shared by the three channels; the colour follows from it
        s = out - _byte_mul(d, 255 - a)
        fits = (s == s[:1]).all(0).all(-1) & (s[0] >= 0).all(-1) & (s[0] <= a).all(-1) & (solved_a < 0)
        solved_s[fits], solved_a[fits] = s[0][fits], a
    if (solved_a < 0).any():
        raise RuntimeError("procgen's renderer does not draw the mouse as a premultiplied source-over "
                           "sprite here; use env.backend: procgen for RGB observations")
    count = 2 * world_dim * world_dim
    order = np.argsort(owner, kind="stable")
    owner, flat_all, solved_s, solved_a = owner[order], np.concatenate(flat)[order], solved_s[order], solved_a[order]
    lengths = np.bincount(owner, minlength=count)
    width = int(lengths.max())
    # a square whose sprite covers no pixel centre (some do in the 25×25 world, 2.56 pixels a square)
    # keeps zeros: pixel 0 with a = 0 and s = 0 blends to itself
    pixels = np.zeros((count, width), np.int64)
    colour = np.zeros((count, width, 3), np.int32)
    alpha = np.zeros((count, width), np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for slot in np.flatnonzero(lengths):
        take = starts[slot] + np.minimum(np.arange(width), lengths[slot] - 1)  # pad with the last entry
        pixels[slot], colour[slot], alpha[slot] = flat_all[take], solved_s[take], solved_a[take]
    shape = (2, world_dim * world_dim)
    return SpriteTable(pixels.reshape(*shape, width), colour.reshape(*shape, width, 3), alpha.reshape(*shape, width))


def _class_squares(world_dim: int, cx: int, cy: int) -> list[tuple[int, int]]:
    """The world squares (x, y) with x ≡ cx and y ≡ cy modulo the spacing."""
    return [(x, y) for y in range(cy, world_dim, _SPACING) for x in range(cx, world_dim, _SPACING)]


def level_pictures(states: Sequence[bytes]) -> np.ndarray:
    """Procgen's (K, 64, 64, 3) pictures of K states without the mouse: background, walls, cheese."""
    return maze_views.render_rgb([maze_state.with_mouse_hidden(state) for state in states])


def mouse_frames(state: bytes, squares: Sequence[tuple[int, int]]) -> np.ndarray:
    """Procgen's (K, 64, 64, 3) images of ``state`` with the mouse moved to each inner square (x, y), as
    :func:`envs.maze_views.render_rgb` of the K edited states gives them, from one render of the level."""
    where = maze_state.layout(state)
    table = sprite_table(where.world_dim)
    side = int(maze_state.is_reflected(state, where))
    slots = np.array([(y + where.margin) * where.world_dim + x + where.margin for x, y in squares], np.int64)
    picture = level_pictures([state])[0].reshape(SIDE * SIDE, 3).astype(np.int32)
    out = np.repeat(picture[None], len(slots), 0)
    rows, pixels = np.arange(len(slots))[:, None], table.pixels[side, slots]
    below = out[rows, pixels]  # read before any write: a padded (repeated) entry blends the same pixel alike
    out[rows, pixels] = table.colour[side, slots] + _byte_mul(below, 255 - table.alpha[side, slots][..., None])
    return out.astype(np.uint8).reshape(len(slots), SIDE, SIDE, 3)


def level_states(walls: np.ndarray, cheese: np.ndarray, maze_dim: np.ndarray, background: np.ndarray,
                 bg_pct_x: np.ndarray) -> list[bytes]:
    """Procgen states of native levels (world walls [y, x], world cheese (x, y) or (-1, -1)), for rendering."""
    count, world = walls.shape[0], walls.shape[1]
    grids = np.where(walls, maze_state.WALL, maze_state.EMPTY).astype(np.int32)
    present = np.flatnonzero(cheese[:, 0] >= 0)
    grids[present, cheese[present, 1], cheese[present, 0]] = maze_state.CHEESE
    return maze_state.levels(template_state(world), grids, np.asarray(maze_dim).reshape(count),
                             np.asarray(background).reshape(count), np.asarray(bg_pct_x).reshape(count))


class RgbFrames:
    """The RGB view of ``num_envs`` native envs: one level picture per env and the mouse on top."""

    def __init__(self, num_envs: int, world_dim: int, device: torch.device):
        """Measure (once per process) the sprite table and allocate the pictures on ``device``."""
        table = sprite_table(world_dim)
        self.world_dim = world_dim
        self.device = device
        # per (orientation, square) slot, flattened over (pixel, channel) so that one gather and one
        # scatter on a (N, 64·64·3) picture do the blend
        slots, width = 2 * world_dim * world_dim, table.pixels.shape[-1]
        channels = table.pixels.reshape(slots, width, 1) * 3 + np.arange(3)
        self._channels = torch.from_numpy(channels.reshape(slots, width * 3)).to(device)
        self._colour = torch.from_numpy(table.colour.reshape(slots, width * 3)).to(device)
        inverse = np.repeat(255 - table.alpha.reshape(slots, width, 1), 3, axis=2)
        self._inverse_alpha = torch.from_numpy(inverse.reshape(slots, width * 3)).to(device)
        self._pictures = torch.zeros(num_envs, SIDE * SIDE, 3, dtype=torch.uint8, device=device)
        self.reflected = torch.zeros(num_envs, dtype=torch.bool, device=device)
        self.background = torch.zeros(num_envs, dtype=torch.int64, device=device)  # procgen's background_index
        self.bg_pct_x = torch.zeros(num_envs, dtype=torch.float32, device=device)  # and its offset fraction

    def show_levels(self, index: torch.Tensor, walls: torch.Tensor, cheese: torch.Tensor, maze_dim: torch.Tensor,
                    background: torch.Tensor, bg_pct_x: torch.Tensor) -> None:
        """Envs ``index`` start fresh native levels: render their pictures; the mouse faces left."""
        states = level_states(walls.cpu().numpy(), cheese.cpu().numpy(), maze_dim.cpu().numpy(),
                              background.cpu().numpy(), bg_pct_x.cpu().numpy())
        self._pictures[index] = torch.from_numpy(level_pictures(states)).to(self.device).view(-1, SIDE * SIDE, 3)
        self.reflected[index] = False
        self.background[index], self.bg_pct_x[index] = background, bg_pct_x

    def show_states(self, index: torch.Tensor, states: Sequence[bytes]) -> None:
        """Envs ``index`` show procgen ``states``: their pictures and mouse orientations."""
        self._pictures[index] = torch.from_numpy(level_pictures(states)).to(self.device).view(-1, SIDE * SIDE, 3)
        self.reflected[index] = torch.tensor([maze_state.is_reflected(s) for s in states], device=self.device)
        looks = [maze_state.background(s) for s in states]
        self.background[index] = torch.tensor([image for image, _ in looks], device=self.device)
        self.bg_pct_x[index] = torch.tensor([pct for _, pct in looks], dtype=torch.float32, device=self.device)

    def turn(self, dx: torch.Tensor) -> None:
        """Procgen's ``MazeGame::game_step``: a move right mirrors the sprite, a move left unmirrors it."""
        self.reflected = torch.where(dx > 0, True, torch.where(dx < 0, False, self.reflected))

    def frames(self, square: torch.Tensor) -> torch.Tensor:
        """(N, 64, 64, 3) uint8 frames with the mice on world squares ``square`` (N,) = y·W + x."""
        slot = self.reflected.long() * (self.world_dim * self.world_dim) + square
        channels = self._channels[slot]
        out = self._pictures.clone().view(len(slot), -1)
        below = out.gather(1, channels).int()
        blended = self._colour[slot] + _byte_mul(below, self._inverse_alpha[slot])
        out.scatter_(1, channels, blended.to(torch.uint8))
        return out.view(-1, SIDE, SIDE, 3)
