"""Procgen maze's 15 actions as moves, and the most likely move of a policy's logits."""

from __future__ import annotations

import numpy as np
import torch

# the move of each of the 15 actions; maze drops the vertical part of diagonal moves
ACTION_DX = np.array([-1, -1, -1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0])
ACTION_DY = np.array([0, 0, 0, -1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])
# each move's procgen actions: left and right have three each, up and down one, noop seven
MOVE_GROUPS: tuple[tuple[int, ...], ...] = tuple(
    tuple(int(a) for a in np.flatnonzero((ACTION_DX == dx) & (ACTION_DY == dy)))
    for dx, dy in ((-1, 0), (0, -1), (0, 1), (1, 0), (0, 0)))


def greedy_move_actions(logits: torch.Tensor) -> torch.Tensor:
    """The most likely *move* per row, as one of its procgen actions.

    An argmax over the 15 raw actions favours up and down, whose probability sits on one action
    each, over left and right, whose probability is split over three; a policy sure of "right"
    at 0.5 (0.17 per action) would go up at 0.3.
    """
    probs = logits.float().softmax(-1)
    moves = torch.stack([probs[..., list(group)].sum(-1) for group in MOVE_GROUPS], -1)
    representative = torch.tensor([group[0] for group in MOVE_GROUPS], device=logits.device)
    return representative[moves.argmax(-1)]
