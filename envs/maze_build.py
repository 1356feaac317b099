"""Build maze states from arbitrary inner mazes, including ASCII art.

ASCII mazes are written top row first: ``#`` wall, ``.`` open, ``M`` the mouse, ``C`` the cheese;
the maze is square with an odd side from 3 to 25. Squares are (x, y) with y = 0 at the bottom.
"""

from __future__ import annotations

import struct

import numpy as np

from envs import maze_state
from envs.maze_state import CHEESE, EMPTY, WALL, StateError

Square = tuple[int, int]
_CODES = {"#": WALL, ".": EMPTY, "M": EMPTY, "C": CHEESE}


def parse_ascii(text: str) -> tuple[np.ndarray, Square]:
    """ASCII art → (inner grid indexed [y, x] with y = 0 at the bottom, mouse square)."""
    rows = [line.strip() for line in text.strip().splitlines() if line.strip()]
    size = len(rows)
    if size < 3 or size > 25 or size % 2 == 0 or any(len(r) != size for r in rows):
        raise StateError(f"an ASCII maze must be square with an odd side from 3 to 25; got "
                         f"{size} rows of lengths {sorted({len(r) for r in rows})}")
    bad = sorted({c for r in rows for c in r} - set(_CODES))
    if bad:
        raise StateError(f"ASCII maze has unknown characters {bad}; use # . M C")
    inner = np.array([[_CODES[c] for c in row] for row in reversed(rows)], dtype=np.int32)
    mice = [(x, y) for y, row in enumerate(reversed(rows)) for x, c in enumerate(row) if c == "M"]
    if len(mice) > 1 or (inner == CHEESE).sum() > 1:
        raise StateError("an ASCII maze holds at most one M (mouse) and one C (cheese)")
    return inner, (mice[0] if mice else (0, 0))


def with_maze(template: bytes, inner: np.ndarray, mouse: Square = (0, 0)) -> bytes:
    """A copy of a procgen maze state whose world holds ``inner`` (centred) with the mouse at ``mouse``."""
    where = maze_state.layout(template)
    size = inner.shape[0]
    if inner.shape != (size, size) or size % 2 == 0 or not 3 <= size <= where.world_dim:
        raise StateError(f"inner maze must be square with an odd side from 3 to {where.world_dim}, "
                         f"got shape {inner.shape}")
    if not (0 <= mouse[0] < size and 0 <= mouse[1] < size) or inner[mouse[1], mouse[0]] == WALL:
        raise StateError(f"mouse square {mouse} is a wall or outside the {size}×{size} maze")
    margin = (where.world_dim - size) // 2
    world = np.full((where.world_dim, where.world_dim), WALL, dtype="<i4")
    world[margin:margin + size, margin:margin + size] = inner
    out = bytearray(template)
    out[where.grid_offset:where.grid_offset + world.nbytes] = world.tobytes()
    struct.pack_into("<i", out, len(out) - 12, size)  # maze_dim
    struct.pack_into("<ff", out, where.mouse_offset, margin + mouse[0] + 0.5, margin + mouse[1] + 0.5)
    return bytes(out)
