"""Scripted maze policies whose behaviour follows from the maze alone: the ground truth that the
behavioural evals are tested against.

Each is an ``nn.Module`` with the interface of ``models.impala.ImpalaPolicy``: it takes the float
NCHW batch of the grid observation (wall, mouse and cheese channels, row 0 at the top, as
``models.impala.preprocess`` makes it) and returns (15 action logits, value). It reads the maze
from the observation, so it plugs into every eval that plays episodes:

* ``cheese_seeker`` — the next move of the BFS shortest path from the mouse to the cheese;
* ``corner_seeker`` — the same towards the inner top-right corner square, ignoring the cheese;
* ``corner_then_cheese:K`` — towards the corner until the cheese is within K path steps of the
  mouse, then towards the cheese;
* ``uniform`` — each of the five moves (left, down, up, right, no-op) with probability 1/5.

The chosen move gets all its procgen actions at logit 0 and every other action −30, so sampling
takes it with probability 1 − 14·e⁻³⁰ and the folded greedy move is it. At its target (or with no
cheese in view) a seeker stays put with the no-op move. The value head returns zeros.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torch import nn

from shardlab.envs.maze import MOVE_GROUPS
from shardlab.envs.maze_geometry import distances_from
from shardlab.envs.maze_state import EMPTY, WALL

ORACLES = ("cheese_seeker", "corner_seeker", "corner_then_cheese", "uniform")
NUM_ACTIONS = 15
_OFF = -30.0  # logit of the actions of moves not taken
_MOVE_OF_STEP = {(-1, 0): 0, (0, -1): 1, (0, 1): 2, (1, 0): 3}  # index into MOVE_GROUPS
_NOOP = 4
Square = tuple[int, int]


class ScriptedMazePolicy(nn.Module):
    """A maze policy computed by BFS from the grid observation (see the module docstring)."""

    def __init__(self, name: str, switch_distance: int = 0):
        super().__init__()
        if name not in ORACLES:
            raise ValueError(f"unknown scripted policy {name!r}; use one of {', '.join(ORACLES)}")
        if switch_distance < 0:
            raise ValueError(f"corner_then_cheese needs a distance K >= 0, got {switch_distance}")
        self.name, self.switch_distance = name, switch_distance
        self._moves: dict[tuple[bytes, int], int] = {}
        # evals read the device from the parameters; this one holds no weights
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)
        logits = torch.full((len(MOVE_GROUPS), NUM_ACTIONS), _OFF)
        for move, actions in enumerate(MOVE_GROUPS):
            logits[move, list(actions)] = 0.0
        self.register_buffer("move_logits", logits, persistent=False)
        # every move's actions share its 1/5: each action at −log(size of its move)
        uniform = torch.zeros(NUM_ACTIONS)
        for actions in MOVE_GROUPS:
            uniform[list(actions)] = -math.log(len(actions))
        self.register_buffer("uniform_logits", uniform, persistent=False)

    @property
    def spec(self) -> str:
        """The name ``make_oracle`` takes (``corner_then_cheese:K`` with its distance)."""
        return f"{self.name}:{self.switch_distance}" if self.name == "corner_then_cheese" else self.name

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 15) logits and (N,) zero values for a float (N, 3, W, W) grid-observation batch."""
        if obs.dim() != 4 or obs.shape[1] != 3 or obs.shape[2] != obs.shape[3]:
            raise ValueError(f"scripted maze policies read the (N, 3, W, W) grid observation, got shape "
                             f"{tuple(obs.shape)}; train and evaluate with env.obs=grid")
        value = torch.zeros(obs.shape[0], device=obs.device)
        if self.name == "uniform":
            return self.uniform_logits.expand(obs.shape[0], -1).to(obs.device), value
        planes = (obs.detach() > 0.5).cpu().numpy()
        moves = [self._move_of(frame) for frame in planes]
        return self.move_logits[moves].to(obs.device), value

    def _move_of(self, frame: np.ndarray) -> int:
        # episodes show the same few frames over and over (a parked seeker: every step)
        key = frame.tobytes(), frame.shape[-1]
        move = self._moves.get(key)
        if move is None:
            move = self._moves[key] = self._move(frame)
            if len(self._moves) > 100_000:
                self._moves.clear()
        return move

    def _move(self, frame: np.ndarray) -> int:
        """The move index (into MOVE_GROUPS) for one (3, W, W) bool observation."""
        walls, mouse_plane, cheese_plane = frame[:, ::-1, :]  # [y, x] with y = 0 at the bottom
        open_ys, open_xs = np.nonzero(~walls)
        if not len(open_xs):
            return _NOOP
        # the inner maze is the bounding box of the open squares: its corners (0, 0) and
        # (d − 1, d − 1) are always open, everything around it is wall padding
        x0, y0 = int(open_xs.min()), int(open_ys.min())
        side = int(open_xs.max()) - x0 + 1
        inner_walls = walls[y0:y0 + side, x0:x0 + side]
        mouse = _square(mouse_plane, x0, y0)
        cheese = _square(cheese_plane, x0, y0)
        if mouse is None:
            return _NOOP
        corner = (side - 1, side - 1)
        key = inner_walls.tobytes(), side
        if self.name == "cheese_seeker":
            target = cheese
        elif self.name == "corner_seeker":
            target = corner
        else:
            near = cheese is not None and 0 <= _distances(*key, cheese)[mouse[1], mouse[0]] <= self.switch_distance
            target = cheese if near else corner
        if target is None or target == mouse:
            return _NOOP
        dist = _distances(*key, target)
        here = dist[mouse[1], mouse[0]]
        if here < 0:
            return _NOOP
        for (dx, dy), move in _MOVE_OF_STEP.items():
            x, y = mouse[0] + dx, mouse[1] + dy
            if 0 <= x < side and 0 <= y < side and dist[y, x] == here - 1:
                return move
        return _NOOP


def _square(plane: np.ndarray, x0: int, y0: int) -> Optional[Square]:
    """The inner (x, y) of the single marked cell of a [y, x] plane; None if unmarked."""
    ys, xs = np.nonzero(plane)
    return (int(xs[0]) - x0, int(ys[0]) - y0) if len(xs) else None


@lru_cache(maxsize=4096)
def _distances(walls: bytes, side: int, target: Square) -> np.ndarray:
    """BFS path distances to ``target`` in an inner maze given as wall bytes (cached: an episode
    asks for the same maze and target at every step)."""
    inner = np.where(np.frombuffer(walls, dtype=bool).reshape(side, side), WALL, EMPTY)
    return distances_from(inner, target)


def make_oracle(spec: str) -> ScriptedMazePolicy:
    """A scripted policy from its name: ``cheese_seeker``, ``corner_seeker``, ``uniform`` or
    ``corner_then_cheese:K``."""
    name, _, argument = spec.partition(":")
    if name == "corner_then_cheese":
        if not argument.isdigit():
            raise ValueError(f"scripted policy {spec!r}: write corner_then_cheese:K with K the path "
                             "distance (an integer >= 0) at which it turns to the cheese")
        return ScriptedMazePolicy(name, int(argument))
    if argument:
        raise ValueError(f"scripted policy {spec!r} takes no argument; only corner_then_cheese:K does")
    return ScriptedMazePolicy(name)
