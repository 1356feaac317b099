"""procgen, imported once with the notice of the unmaintained gym it imports silenced (gym prints
a long one to stderr when first imported). envs/maze.py and envs/maze_views.py take
ProcgenGym3Env from here; torchrl imports gym too, so trainers/ppo.py imports it inside
:func:`gym_notice_silenced`."""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Iterator

__all__ = ["ProcgenGym3Env", "MAX_STATE_SIZE", "gym_notice_silenced"]


@contextlib.contextmanager
def gym_notice_silenced() -> Iterator[None]:
    """Run imports that may import gym first without its stderr notice and warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


with gym_notice_silenced():
    from procgen import ProcgenGym3Env
    from procgen.env import MAX_STATE_SIZE
