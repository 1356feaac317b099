"""Vector fields of a maze policy: its action distribution with the mouse on every open square.

The 15 procgen actions fold into five moves (left, down, up, right, noop) by the move each makes in
the maze (``envs.maze.ACTION_DX``/``ACTION_DY``; maze drops the vertical part of diagonals). A
field is drawn as one arrow per square with components (right − left, up − down), see
``evals.maze.render.plot_vector_field``. Squares are (x, y) in inner-maze coordinates, y = 0 at the
bottom.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from shardlab.envs import maze_state
from shardlab.envs.maze import MOVE_GROUPS
from shardlab.models.impala import NUM_ACTIONS, preprocess
from shardlab.models.impala_local import local_forward

Square = tuple[int, int]
FOLDED_ACTIONS = ("left", "down", "up", "right", "noop")
OBSERVATIONS = ("rgb", "grid")
# the procgen actions of each folded move, from the env's own move table so they cannot drift
ACTION_GROUPS: tuple[tuple[int, ...], ...] = MOVE_GROUPS
assert sorted(a for group in ACTION_GROUPS for a in group) == list(range(NUM_ACTIONS)), \
    "every procgen action must fold into exactly one move"
LEFT, DOWN, UP, RIGHT, NOOP = range(5)


def fold_actions(probs: torch.Tensor) -> torch.Tensor:
    """Fold (..., 15) procgen action probabilities into (..., 5) (left, down, up, right, noop)."""
    if probs.shape[-1] != NUM_ACTIONS:
        raise ValueError(f"expected {NUM_ACTIONS} action probabilities in the last dim, "
                         f"got shape {tuple(probs.shape)}")
    return torch.stack([probs[..., list(group)].sum(-1) for group in ACTION_GROUPS], -1)


@dataclass(frozen=True)
class VectorField:
    """Folded action probabilities (K, 5) of a policy with the mouse on each of K squares."""

    inner: np.ndarray  # inner maze [y, x], y = 0 at the bottom (maze_state codes)
    squares: list[Square]  # the K mouse squares, (x, y)
    probs: np.ndarray  # (K, 5) float, columns FOLDED_ACTIONS; differences for vector_field_diff
    state: Optional[bytes] = None  # the state the field was computed from, if any
    obs: str = "rgb"

    def __post_init__(self) -> None:
        if self.probs.shape != (len(self.squares), len(FOLDED_ACTIONS)):
            raise ValueError(f"probs has shape {self.probs.shape}, expected "
                             f"({len(self.squares)}, {len(FOLDED_ACTIONS)})")

    @property
    def arrows(self) -> np.ndarray:
        """(K, 2) arrow components: (right − left, up − down), y pointing up."""
        return np.stack([self.probs[:, RIGHT] - self.probs[:, LEFT],
                         self.probs[:, UP] - self.probs[:, DOWN]], 1)

    @property
    def noop(self) -> np.ndarray:
        """(K,) probability (or difference) of not moving."""
        return self.probs[:, NOOP]

    @property
    def cheese(self) -> Optional[Square]:
        """The cheese square of the inner maze, or None."""
        ys, xs = np.nonzero(self.inner == maze_state.CHEESE)
        return (int(xs[0]), int(ys[0])) if len(xs) else None

    def at(self, square: Square) -> np.ndarray:
        """The (5,) folded probabilities with the mouse on ``square``."""
        try:
            return self.probs[self.squares.index(tuple(square))]
        except ValueError:
            raise KeyError(f"square {square} is not in this field") from None


def mouse_squares(inner: np.ndarray, include_cheese: bool = False) -> list[Square]:
    """Open squares of an inner maze, row by row from the bottom; the cheese square only if asked."""
    blocked = inner == maze_state.WALL
    if not include_cheese:
        blocked = blocked | (inner == maze_state.CHEESE)
    return [(x, y) for y in range(inner.shape[0]) for x in range(inner.shape[1]) if not blocked[y, x]]


def observations(states: Sequence[bytes], obs: str = "rgb") -> np.ndarray:
    """(K, H, W, 3) uint8 observations of ``states``: procgen's image or the symbolic grid."""
    # imported here: maze_views creates procgen renderers, which only the observations need
    from shardlab.envs import maze_views
    if obs == "rgb":
        return maze_views.render_rgb(states)
    if obs == "grid":
        return maze_views.grid_observations(states)
    raise ValueError(f"obs must be one of {OBSERVATIONS}, got {obs!r}")


def _policy_device_dtype(policy: nn.Module) -> tuple[torch.device, Optional[torch.dtype]]:
    for tensor in (*policy.parameters(), *policy.buffers()):
        return tensor.device, (tensor.dtype if tensor.is_floating_point() else None)
    return torch.device("cpu"), None


def policy_probs(policy: Callable[[torch.Tensor], object], obs: np.ndarray,
                 device: Union[str, torch.device, None] = None, *, one_maze: bool = False) -> np.ndarray:
    """(K, 5) folded action probabilities of ``policy`` on uint8 NHWC ``obs``, in one forward pass.

    ``one_maze``: the images are one maze with the mouse moved, so an IMPALA policy recomputes its
    first layers only around each mouse (:func:`models.impala_local.local_forward`, same numbers).
    """
    own_device, dtype = (_policy_device_dtype(policy) if isinstance(policy, nn.Module)
                         else (torch.device("cpu"), None))
    device = torch.device(device) if device is not None else own_device
    was_training = getattr(policy, "training", None)
    if was_training:
        policy.eval()  # no dropout / batch statistics in a measurement; restored below
    try:
        with torch.inference_mode():
            x = preprocess(torch.from_numpy(np.ascontiguousarray(obs)).to(device))
            if dtype is not None and dtype != x.dtype:
                x = x.to(dtype)
            out = local_forward(policy, x) if one_maze else policy(x)
            logits = out[0] if isinstance(out, (tuple, list)) else out
            # softmax in float32 at least, so half-precision policies still sum to 1
            probs = torch.softmax(logits.float(), -1)
            return fold_actions(probs).cpu().numpy()
    finally:
        if was_training:
            policy.train()


def vector_field(policy: Callable[[torch.Tensor], object],
                 state: Union[bytes, maze_state.MazeState], obs: str = "rgb",
                 device: Union[str, torch.device, None] = None, *,
                 include_cheese: bool = False, images: Optional[np.ndarray] = None) -> VectorField:
    """The policy's folded action probabilities with the mouse on every open square of ``state``.

    The cheese square is left out unless ``include_cheese``: reaching it ends the episode, so the
    policy never sees the mouse there. All K observations go through the policy as one batch;
    ``images`` are those observations when already rendered (:func:`field_observations`).
    """
    if obs not in OBSERVATIONS:
        raise ValueError(f"obs must be one of {OBSERVATIONS}, got {obs!r}")
    state = state.to_bytes() if isinstance(state, maze_state.MazeState) else bytes(state)
    where = maze_state.layout(state)
    inner = maze_state.inner_grid(state, where).copy()
    squares = mouse_squares(inner, include_cheese)
    if not squares:
        raise ValueError("the maze has no open square to put the mouse on")
    if images is None:
        images = _mouse_observations(state, where, squares, obs)
    elif len(images) != len(squares):
        raise ValueError(f"images holds {len(images)} observations, the maze has {len(squares)} mouse squares")
    probs = policy_probs(policy, images, device, one_maze=True)
    return VectorField(inner, squares, probs, state, obs)


def field_observations(state: bytes, obs: str = "rgb", include_cheese: bool = False) -> np.ndarray:
    """The (K, H, W, 3) observations :func:`vector_field` feeds the policy for ``state``, to render once
    and reuse across fields of the same maze (steering, retargeting)."""
    where = maze_state.layout(state)
    squares = mouse_squares(maze_state.inner_grid(state, where).copy(), include_cheese)
    return _mouse_observations(state, where, squares, obs)


def _mouse_observations(state: bytes, where: maze_state.Layout, squares: list[Square], obs: str) -> np.ndarray:
    """Observations of ``state`` with the mouse on each of ``squares``; RGB ones from one procgen render of
    the level and the sprite composited per square (envs/maze_native_rgb.py: the same bytes, ~20× faster)."""
    if obs == "rgb":
        from shardlab.envs.maze_native_rgb import mouse_frames  # imports procgen, needed only here

        return mouse_frames(state, squares)  # squares from mouse_squares: open, inside the maze
    return observations([maze_state.with_mouse_at(state, square, where) for square in squares], obs)


def vector_field_diff(a: VectorField, b: VectorField) -> VectorField:
    """Per-square ``a − b`` on the squares both fields cover (in ``a``'s order), e.g. steered − original."""
    if a.inner.shape != b.inner.shape or not np.array_equal(a.inner == maze_state.WALL,
                                                             b.inner == maze_state.WALL):
        raise ValueError("vector fields of different mazes cannot be compared square by square")
    rows_b = {square: row for row, square in enumerate(b.squares)}
    shared = [(row, rows_b[square]) for row, square in enumerate(a.squares) if square in rows_b]
    rows_a = [row for row, _ in shared]
    diff = a.probs[rows_a] - b.probs[[row for _, row in shared]]
    return replace(a, squares=[a.squares[row] for row in rows_a], probs=diff)
