"""Reading and editing procgen maze states (the bytes of ``get_state``/``set_state``).

This is the only module that knows procgen's byte layout (``Game::serialize`` and
``BasicAbstractGame::serialize`` in openai/procgen): a fixed header with two variable-length RNG
strings, the entity list (the mouse is entity 0, at column + 0.5, row + 0.5), then the grid as
``w, h, w·h, w·h ints``, then ``maze_dim, world_dim`` and a 0xCAFECAFE trailer. Grid rows count
from the **bottom** (y = 0 is the bottom row), and so do all squares here: a square is
``(x, y)`` in inner-maze coordinates, x the column from the left, y the row from the bottom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

EMPTY, WALL, CHEESE = 100, 51, 2
_TRAILER = 0xCAFECAFE
_INT = struct.Struct("<i")
# fields between the second RNG string and the entity list: 15 Game fields, grid_size, entity count
_AFTER_RNG = 15 * 4 + 4 + 4
_OPTION_INTS = 12 + 5  # options.* and grid_step .. game_n
# Entity::serialize writes 31 four-byte fields; is_reflected is the 16th. BasicAbstractGame::serialize
# then writes use_procgen_background, background_index, bg_tile_ratio, bg_pct_x after the entity list
_ENTITY_BYTES = 31 * 4
_REFLECTED = 15 * 4
_BACKGROUND_INDEX = _ENTITY_BYTES + 4
_BACKGROUND_PCT = _ENTITY_BYTES + 12
BACKGROUNDS = 9  # maze draws one of procgen's 9 topdown background images, uniformly per level


class StateError(ValueError):
    """State bytes that are not a procgen maze state of the expected layout."""


@dataclass(frozen=True)
class Layout:
    """Where things sit in one state's bytes."""

    world_dim: int
    maze_dim: int
    grid_offset: int
    mouse_offset: int

    @property
    def margin(self) -> int:
        """Wall padding on each side of the inner maze, in tiles."""
        return (self.world_dim - self.maze_dim) // 2


def layout(state: bytes) -> Layout:
    """Locate the grid and the mouse in ``state``, checking it is a maze state of this build."""
    if len(state) < 64:
        raise StateError(f"state of {len(state)} bytes is too short to be a procgen maze state")
    (name_len,) = _INT.unpack_from(state, 4)
    if state[8:8 + name_len] != b"maze":
        raise StateError(f"state is from game {state[8:8 + min(name_len, 32)]!r}, not 'maze'")
    maze_dim, world_dim, trailer = struct.unpack_from("<iiI", state, len(state) - 12)
    if trailer != _TRAILER:
        raise StateError("state does not end with procgen's 0xCAFECAFE trailer; it is truncated "
                         "or comes from another procgen build")
    truncated = StateError(f"state of {len(state)} bytes is truncated or corrupt: its fields run "
                           "past its end")
    cells = world_dim * world_dim
    grid_offset = len(state) - 12 - 4 * cells
    if not 0 < world_dim <= 1024 or grid_offset < 12 + 8 + name_len:  # else offsets go negative
        raise truncated
    w, h, n = struct.unpack_from("<iii", state, grid_offset - 12)
    if (w, h, n) != (world_dim, world_dim, cells) or not 3 <= maze_dim <= world_dim:
        raise StateError(f"state grid header {(w, h, n)} does not match world_dim {world_dim}; "
                         "it is truncated or comes from another procgen build")
    offset = 8 + name_len + 4 * _OPTION_INTS
    for _ in range(2):  # level_seed_rand_gen, rand_gen: is_seeded, then the RNG as a string
        if offset + 8 > grid_offset:
            raise truncated
        (length,) = _INT.unpack_from(state, offset + 4)
        if length < 0:
            raise truncated
        offset += 8 + length
    if offset + _AFTER_RNG + 8 > grid_offset - 12:  # the mouse's (x, y) must lie before the grid
        raise truncated
    return Layout(world_dim, maze_dim, grid_offset, offset + _AFTER_RNG)


def grid(state: bytes, where: Layout | None = None) -> np.ndarray:
    """The world grid as a (world_dim, world_dim) int array indexed [y, x], y = 0 at the bottom."""
    where = where or layout(state)
    cells = where.world_dim * where.world_dim
    flat = np.frombuffer(state, dtype="<i4", count=cells, offset=where.grid_offset)
    return flat.reshape(where.world_dim, where.world_dim)


def inner_grid(state: bytes, where: Layout | None = None) -> np.ndarray:
    """The inner maze (maze_dim × maze_dim) indexed [y, x], y = 0 at the bottom."""
    where = where or layout(state)
    m, d = where.margin, where.maze_dim
    return grid(state, where)[m:m + d, m:m + d]


def mouse_square(state: bytes, where: Layout | None = None) -> tuple[int, int]:
    """The mouse's square (x, y) in inner-maze coordinates."""
    where = where or layout(state)
    x, y = struct.unpack_from("<ff", state, where.mouse_offset)
    return int(x) - where.margin, int(y) - where.margin


def cheese_square(state: bytes, where: Layout | None = None) -> tuple[int, int] | None:
    """The cheese's square (x, y) in inner-maze coordinates, or None if there is no cheese."""
    ys, xs = np.nonzero(inner_grid(state, where) == CHEESE)
    return (int(xs[0]), int(ys[0])) if len(xs) else None


def with_cheese_at(state: bytes, square: tuple[int, int], where: Layout | None = None) -> bytes:
    """A copy of ``state`` with the cheese moved to the open inner square ``square`` = (x, y)."""
    where = where or layout(state)
    _check_open(state, where, square)
    world = grid(state, where).copy()
    world[world == CHEESE] = EMPTY
    world[where.margin + square[1], where.margin + square[0]] = CHEESE
    return with_grid(state, where, world)


def with_mouse_at(state: bytes, square: tuple[int, int], where: Layout | None = None) -> bytes:
    """A copy of ``state`` with the mouse moved to the open inner square ``square`` = (x, y)."""
    where = where or layout(state)
    _check_open(state, where, square)
    return with_mouse_world(state, (where.margin + square[0], where.margin + square[1]), where)


def without_cheese(state: bytes, where: Layout | None = None) -> bytes:
    """A copy of ``state`` with no cheese in the maze."""
    where = where or layout(state)
    world = grid(state, where).copy()
    world[world == CHEESE] = EMPTY
    return with_grid(state, where, world)


def is_reflected(state: bytes, where: Layout | None = None) -> bool:
    """Whether the mouse sprite is drawn mirrored (it faces right after its last move right)."""
    where = where or layout(state)
    return bool(_INT.unpack_from(state, where.mouse_offset + _REFLECTED)[0])


def background(state: bytes, where: Layout | None = None) -> tuple[int, float]:
    """The level's background image index (0..8) and horizontal offset fraction ``bg_pct_x``."""
    where = where or layout(state)
    (index,) = _INT.unpack_from(state, where.mouse_offset + _BACKGROUND_INDEX)
    (pct,) = struct.unpack_from("<f", state, where.mouse_offset + _BACKGROUND_PCT)
    return index, pct


def with_looks(state: bytes, background_index: int, bg_pct_x: float, reflected: bool = False,
               where: Layout | None = None) -> bytes:
    """A copy of ``state`` with the given background and mouse orientation (what the RGB view shows)."""
    where = where or layout(state)
    if not 0 <= background_index < BACKGROUNDS:
        raise StateError(f"background index {background_index} is not one of procgen's 0..{BACKGROUNDS - 1}")
    out = bytearray(state)
    _INT.pack_into(out, where.mouse_offset + _BACKGROUND_INDEX, background_index)
    struct.pack_into("<f", out, where.mouse_offset + _BACKGROUND_PCT, bg_pct_x)
    _INT.pack_into(out, where.mouse_offset + _REFLECTED, int(reflected))
    return bytes(out)


def levels(template: bytes, worlds: np.ndarray, maze_dims: np.ndarray, backgrounds: np.ndarray,
           bg_pct_x: np.ndarray) -> list[bytes]:
    """Copies of ``template``, one per level: world grid (K, W, W) in procgen's codes, maze size, background
    and its offset, the mouse on the maze's start square facing left; written for all K at once."""
    where = layout(template)
    count, world = len(worlds), where.world_dim
    if worlds.shape[1:] != (world, world):
        raise StateError(f"level grids must be {world}×{world} like the template's world, got {worlds.shape[1:]}")
    if ((backgrounds < 0) | (backgrounds >= BACKGROUNDS)).any():
        raise StateError(f"background indices must be procgen's 0..{BACKGROUNDS - 1}")
    out = np.frombuffer(template, np.uint8)[None, :].repeat(count, 0)

    def put(offset: int, values: np.ndarray, dtype: str) -> None:
        raw = np.ascontiguousarray(values, dtype=dtype).view(np.uint8).reshape(count, -1)
        out[:, offset:offset + raw.shape[1]] = raw

    start = (world - maze_dims.astype(np.float32)) // 2 + 0.5  # the mouse starts at the maze's bottom-left
    put(where.mouse_offset, np.stack([start, start], 1), "<f4")
    put(where.mouse_offset + _REFLECTED, np.zeros(count), "<i4")
    put(where.mouse_offset + _BACKGROUND_INDEX, backgrounds, "<i4")
    put(where.mouse_offset + _BACKGROUND_PCT, bg_pct_x, "<f4")
    put(where.grid_offset, worlds.reshape(count, -1), "<i4")
    put(len(template) - 12, maze_dims, "<i4")  # maze_dim, before world_dim and the trailer
    return [row.tobytes() for row in out]


def with_mouse_world(state: bytes, square: tuple[int, int], where: Layout | None = None) -> bytes:
    """A copy of ``state`` with the mouse on world square ``square`` = (x, y), unchecked (for renders)."""
    where = where or layout(state)
    out = bytearray(state)
    struct.pack_into("<ff", out, where.mouse_offset, square[0] + 0.5, square[1] + 0.5)
    return bytes(out)


def with_mice(state: bytes, squares: list[tuple[int, int]], reflected: bool, where: Layout | None = None) -> bytes:
    """A copy of ``state`` with a copy of its mouse on each world square (x, y), all facing one way.
    Only for rendering (procgen draws every entity, the mouse it moves is the last); not playable."""
    where = where or layout(state)
    mouse = bytearray(state[where.mouse_offset:where.mouse_offset + _ENTITY_BYTES])
    _INT.pack_into(mouse, _REFLECTED, int(reflected))
    copies = []
    for x, y in squares:
        struct.pack_into("<ff", mouse, 0, x + 0.5, y + 0.5)
        copies.append(bytes(mouse))
    (count,) = _INT.unpack_from(state, where.mouse_offset - 4)
    if count != 1:
        raise StateError(f"state holds {count} entities; a maze state holds the mouse only")
    return (state[:where.mouse_offset - 4] + _INT.pack(len(squares)) + b"".join(copies)
            + state[where.mouse_offset + _ENTITY_BYTES:])


def with_mouse_hidden(state: bytes, where: Layout | None = None) -> bytes:
    """A copy of ``state`` whose mouse stands outside the picture: renders show the level without it.
    Only for rendering; such a state is not playable."""
    return with_mouse_world(state, (-11, -11), where)


def _check_open(state: bytes, where: Layout, square: tuple[int, int]) -> None:
    x, y = square
    d = where.maze_dim
    if not (0 <= x < d and 0 <= y < d):
        raise StateError(f"square {square} is outside the {d}×{d} maze")
    if inner_grid(state, where)[y, x] == WALL:
        raise StateError(f"square {square} is a wall; pick an open square")


def with_grid(state: bytes, where: Layout, world: np.ndarray) -> bytes:
    """A copy of ``state`` holding the world grid ``world``."""
    out = bytearray(state)
    out[where.grid_offset:where.grid_offset + world.size * 4] = world.astype("<i4").tobytes()
    return bytes(out)


def with_maze(template: bytes, inner: np.ndarray, mouse: tuple[int, int] = (0, 0)) -> bytes:
    """A copy of a procgen maze state whose world holds ``inner`` (centred) with the mouse at ``mouse``."""
    where = layout(template)
    size = inner.shape[0]
    if inner.shape != (size, size) or size % 2 == 0 or not 3 <= size <= where.world_dim:
        raise StateError(f"inner maze must be square with an odd side from 3 to {where.world_dim}, "
                         f"got shape {inner.shape}")
    if not (0 <= mouse[0] < size and 0 <= mouse[1] < size) or inner[mouse[1], mouse[0]] == WALL:
        raise StateError(f"mouse square {mouse} is a wall or outside the {size}×{size} maze")
    margin = (where.world_dim - size) // 2
    world = np.full((where.world_dim, where.world_dim), WALL, dtype="<i4")
    world[margin:margin + size, margin:margin + size] = inner
    out = bytearray(with_grid(template, where, world))
    _INT.pack_into(out, len(out) - 12, size)  # maze_dim (before world_dim and the trailer), which sets the margin
    return with_mouse_at(bytes(out), mouse)


@dataclass(frozen=True)
class MazeState:
    """A typed view of one procgen maze state; edits return new states, ``to_bytes`` serialises.

    The object keeps the state's bytes and writes each edited field at its offset, so an unedited
    state serialises back byte-for-byte and an edited one differs only in the edited fields.
    """

    raw: bytes

    @classmethod
    def from_bytes(cls, state: bytes) -> "MazeState":
        """Parse (and check) state bytes from ``get_state``."""
        layout(state)
        return cls(bytes(state))

    @property
    def layout(self) -> Layout:
        """Offsets and sizes."""
        return layout(self.raw)

    @property
    def maze_dim(self) -> int:
        """Side of the inner maze (odd, 3–25)."""
        return self.layout.maze_dim

    @property
    def world_dim(self) -> int:
        """Side of the world grid (15 in easy mode, 25 in hard mode)."""
        return self.layout.world_dim

    @property
    def padding(self) -> int:
        """Wall tiles on each side of the inner maze."""
        return self.layout.margin

    @property
    def grid(self) -> np.ndarray:
        """World grid [y, x] (y = 0 at the bottom), a copy."""
        return grid(self.raw).copy()

    @property
    def inner(self) -> np.ndarray:
        """Inner maze [y, x] (y = 0 at the bottom), a copy."""
        return inner_grid(self.raw).copy()

    @property
    def mouse(self) -> tuple[int, int]:
        """Mouse square (x, y)."""
        return mouse_square(self.raw)

    @property
    def cheese(self) -> tuple[int, int] | None:
        """Cheese square (x, y), or None."""
        return cheese_square(self.raw)

    def with_cheese(self, square: tuple[int, int]) -> "MazeState":
        """The cheese moved to ``square``."""
        return MazeState(with_cheese_at(self.raw, square))

    def with_mouse(self, square: tuple[int, int]) -> "MazeState":
        """The mouse moved to ``square``."""
        return MazeState(with_mouse_at(self.raw, square))

    def without_cheese(self) -> "MazeState":
        """The cheese removed."""
        return MazeState(without_cheese(self.raw))

    def to_bytes(self) -> bytes:
        """State bytes for ``set_state``."""
        return self.raw
