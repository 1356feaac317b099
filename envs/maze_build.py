"""Build maze states from arbitrary inner mazes, including ASCII art.

ASCII mazes are written top row first: ``#`` wall, ``.`` open, ``M`` the mouse, ``C`` the cheese;
the maze is square with an odd side from 3 to 25. Squares are (x, y) with y = 0 at the bottom.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from shardlab.envs import maze_state
from shardlab.envs.maze_state import CHEESE, EMPTY, WALL, StateError

Square = tuple[int, int]
_CODES = {"#": WALL, ".": EMPTY, "M": EMPTY, "C": CHEESE}

if TYPE_CHECKING:
    from shardlab.envs.maze import MazeEnv


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
    out = bytearray(maze_state.with_grid(template, where, world))
    struct.pack_into("<i", out, len(out) - 12, size)  # maze_dim, which sets the margin
    return maze_state.with_mouse_at(bytes(out), mouse)


# -- hand-made mazes in files and envs ----------------------------------------------------------
_FILE_KEYS = {"maze", "mode"}


@dataclass(frozen=True)
class MazeFile:
    """A maze read from a YAML file: the inner grid [y, x] (y = 0 at the bottom), mouse and mode."""

    path: str
    inner: np.ndarray
    mouse: Square
    mode: str  # procgen distribution mode: "hard" (25×25 world) or "easy" (15×15)

    @property
    def cheese(self) -> Square | None:
        """The cheese square (x, y), or None if the maze has no C."""
        ys, xs = np.nonzero(self.inner == CHEESE)
        return (int(xs[0]), int(ys[0])) if len(xs) else None


def load_maze_file(path: str | os.PathLike) -> MazeFile:
    """Read a YAML file with ``maze: |`` (ASCII art, see :func:`parse_ascii`) and optional
    ``mode: hard|easy`` (default hard); StateError naming the file and the problem if it is bad."""
    import yaml  # only needed here; keeps the module import light
    from shardlab.envs.maze import WORLD_DIM  # envs.maze imports this module, so import at call time

    path = os.fspath(path)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StateError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or "maze" not in data:
        raise StateError(f"{path}: expected a YAML mapping with a 'maze: |' block of ASCII art")
    unknown = sorted(set(map(str, data)) - _FILE_KEYS)
    if unknown:
        raise StateError(f"{path}: unknown keys {unknown}; a maze file holds 'maze' and optional 'mode'")
    mode = data.get("mode", "hard")
    if mode not in WORLD_DIM:
        raise StateError(f"{path}: mode must be one of {sorted(WORLD_DIM)}, got {mode!r}")
    if not isinstance(data["maze"], str):
        raise StateError(f"{path}: 'maze' must be a block of ASCII art (write 'maze: |'), "
                         f"got {type(data['maze']).__name__}")
    try:
        inner, mouse = parse_ascii(data["maze"])
    except StateError as exc:
        raise StateError(f"{path}: {exc}") from None
    if inner.shape[0] > WORLD_DIM[mode]:
        raise StateError(f"{path}: a {inner.shape[0]}×{inner.shape[0]} maze does not fit the "
                         f"{WORLD_DIM[mode]}×{WORLD_DIM[mode]} world of mode {mode!r}")
    return MazeFile(path, inner, mouse, mode)


def make_env_from_maze(inner: np.ndarray, mouse: Square = (0, 0), cheese: Square | None = None,
                       mode: str = "hard", obs: str = "rgb") -> "MazeEnv":
    """A one-env MazeEnv whose current episode is played in ``inner`` (cheese moved to ``cheese``
    if given, else where ``inner`` has it).

    The env places nothing itself (``rand_region=None``, no ``max_maze_size``), so ``reset()``
    re-reads the loaded state and keeps the maze; once the episode ends procgen moves on to its
    own levels. ``env.load_states([state])`` restarts it in the same maze.
    """
    from shardlab.envs.maze import MazeEnv, MazeEnvConfig  # envs.maze imports this module

    env = MazeEnv(MazeEnvConfig(num_envs=1, distribution_mode=mode, rand_region=None, obs=obs))
    try:
        state = with_maze(env.get_state(0), np.asarray(inner, dtype=np.int32), mouse)
        if cheese is not None:
            state = maze_state.with_cheese_at(state, cheese)
        env.load_states([state])
    except BaseException:
        env.close()
        raise
    return env
