"""The record of one finished maze episode, shared by both env backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Episode:
    """Statistics of one finished episode."""

    ret: float
    length: int
    reached_cheese: bool
    reached_corner: bool  # visited the inner top-right corner square
    maze_dim: int
    end_square: Optional[tuple[int, int]] = None  # the mouse's inner (x, y) when the episode ended
