"""Hand-made mazes: ASCII art, maze files, and one-env MazeEnvs playing them.

States are built from inner mazes by :func:`with_maze` (in envs/maze_state.py, the module that
knows procgen's byte layout; importable from here too). ASCII mazes are written top row first: ``#`` wall, ``.`` open, ``M`` the mouse, ``C`` the cheese;
the maze is square with an odd side from 3 to 25. Squares are (x, y) with y = 0 at the bottom.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from shardlab.envs import maze_state
from shardlab.envs.maze import MazeEnv
from shardlab.envs.maze_config import WORLD_DIM, MazeEnvConfig
from shardlab.envs.maze_state import CHEESE, EMPTY, WALL, StateError, with_maze

__all__ = ["parse_ascii", "to_ascii", "with_maze", "MazeFile", "load_maze_file", "make_env_from_maze"]

Square = tuple[int, int]
_CODES = {"#": WALL, ".": EMPTY, "M": EMPTY, "C": CHEESE}
_CHARACTERS = {WALL: "#", EMPTY: ".", CHEESE: "C"}


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


def to_ascii(state: bytes) -> str:
    """The ASCII art of a maze state, :func:`parse_ascii`'s inverse; StateError when the state holds
    something ASCII cannot show."""
    where = maze_state.layout(state)
    inner = maze_state.inner_grid(state, where)
    unknown = sorted({int(code) for code in np.unique(inner)} - set(_CHARACTERS))
    if unknown:
        raise StateError(f"the maze holds tile codes {unknown[:5]} that are not wall, open or cheese")
    if int((inner == CHEESE).sum()) > 1:
        raise StateError("the maze holds more than one cheese; ASCII mazes hold at most one")
    try:
        mouse = maze_state.mouse_square(state, where)
    except (ValueError, OverflowError):  # NaN or infinite coordinates in damaged bytes
        raise StateError("the state's mouse position is not a number") from None
    size = where.maze_dim
    if not (0 <= mouse[0] < size and 0 <= mouse[1] < size) or inner[mouse[1], mouse[0]] == WALL:
        raise StateError(f"the state's mouse {list(mouse)} is outside the maze or on a wall")
    if inner[mouse[1], mouse[0]] == CHEESE:
        raise StateError("the state's mouse stands on the cheese; ASCII cannot show both on one square")
    rows = [[_CHARACTERS[int(code)] for code in inner[y]] for y in range(size)]
    rows[mouse[1]][mouse[0]] = "M"
    return "\n".join("".join(row) for row in reversed(rows))


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
                       mode: str = "hard", obs: str = "rgb") -> MazeEnv:
    """A one-env MazeEnv whose current episode is played in ``inner`` (cheese moved to ``cheese``
    if given, else where ``inner`` has it).

    The env places nothing itself (``rand_region=None``, no ``max_maze_size``), so ``reset()``
    re-reads the loaded state and keeps the maze; once the episode ends procgen moves on to its
    own levels. ``env.load_states([state])`` restarts it in the same maze.
    """
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
