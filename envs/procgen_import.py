"""procgen, imported once with the notice of the unmaintained gym it imports silenced (it prints
a long one to stderr). envs/maze.py and envs/maze_views.py take ProcgenGym3Env from here."""

from __future__ import annotations

import contextlib
import io
import warnings

with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")
    from procgen import ProcgenGym3Env
    from procgen.env import MAX_STATE_SIZE

__all__ = ["ProcgenGym3Env", "MAX_STATE_SIZE"]
