"""``--log-episodes``: one JSON line per played episode, in ``<out>/<eval>/episodes.jsonl``.

Evals that play maze episodes (``goal_misgeneralization``) hand each maze set's start states and
finished episodes to an :class:`EpisodeLog`; evals that play none ignore the option. A line:

* ``set`` — which maze set, as the eval's metric prefixes name it (``outside``, ``in_region``,
  ``in_distribution``, ``decision``), ``greedy`` — sampled (false) or most-likely moves (true);
* ``index`` — the episode's position in its set (``outside`` and ``in_region`` share layouts by
  index); ``maze_seed`` / ``maze_index`` — the maze regenerates as
  ``eval_mazes(n, maze_seed, ...)[maze_index]`` (for ``in_distribution``: the training env's seed
  and env index); ``procgen_level`` — (procgen rand_seed, env index) of the level, when known;
* ``maze_size``, ``start``, ``cheese`` — from the start state, squares as [x, y] in inner-maze
  coordinates (x the column from the left, y the row from the bottom);
* ``outcome`` — ``cheese`` (reached it), else ``corner`` (visited the top-right corner square),
  else ``neither``; ``length`` (steps), ``return`` and ``final_square`` (where the mouse ended).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional, Sequence

from shardlab.atomic import write_text
from shardlab.envs import maze_state

if TYPE_CHECKING:  # pragma: no cover
    from shardlab.envs.eval_mazes import EvalMaze
    from shardlab.envs.maze import Episode
    from shardlab.evals.suite.context import EvalContext

FILENAME = "episodes.jsonl"


def outcome(episode: "Episode") -> str:
    """``cheese``, ``corner`` or ``neither``: reaching the cheese counts first, as P(cheese) does."""
    if episode.reached_cheese:
        return "cheese"
    return "corner" if episode.reached_corner else "neither"


def _square(square: Optional[Sequence[int]]) -> Optional[list[int]]:
    return None if square is None else [int(square[0]), int(square[1])]


def episode_record(state: bytes, episode: "Episode", **fields: object) -> dict:
    """One line's fields: ``fields`` first, then the start state's maze and the episode's end."""
    where = maze_state.layout(state)
    return {**fields, "maze_size": int(where.maze_dim), "start": _square(maze_state.mouse_square(state, where)),
            "cheese": _square(maze_state.cheese_square(state, where)), "outcome": outcome(episode),
            "length": int(episode.length), "return": float(episode.ret), "final_square": _square(episode.end_square)}


class EpisodeLog:
    """The episode records of one eval run, written to ``path`` as JSON lines by :meth:`write`."""

    def __init__(self, path: str):
        self.path = path
        self.records: list[dict] = []

    @classmethod
    def for_context(cls, ctx: "EvalContext") -> Optional["EpisodeLog"]:
        """A log under the eval's folder when ``ctx.log_episodes`` is set, else None."""
        return cls(ctx.artifact(FILENAME)) if getattr(ctx, "log_episodes", False) else None

    def add(self, set_name: str, greedy: bool, starts: Sequence[bytes], episodes: Sequence["Episode"],
            mazes: Optional[Sequence["EvalMaze"]] = None, env_seed: Optional[int] = None) -> None:
        """Record the first episode from each start state; ``mazes`` are the eval mazes they came
        from (by index), or None for envs seeded with ``env_seed`` (the training distribution)."""
        if len(starts) != len(episodes) or (mazes is not None and len(mazes) != len(episodes)):
            raise RuntimeError(f"episode log of set {set_name!r}: {len(episodes)} episodes for {len(starts)} "
                               "start states; every env must finish its first episode")
        for index, (state, episode) in enumerate(zip(starts, episodes)):
            if mazes is not None:
                maze = mazes[index]
                source = {"maze_seed": int(maze.seed), "maze_index": int(maze.index),
                          "procgen_level": [int(v) for v in maze.source]}
            else:
                source = {"maze_seed": env_seed, "maze_index": index, "procgen_level": None}
            self.records.append(episode_record(state, episode, set=set_name, greedy=bool(greedy), index=index,
                                               **source))

    def write(self) -> str:
        """Write every record atomically (shardlab.atomic) and return the path."""
        write_text(self.path, "".join(json.dumps(record, allow_nan=False) + "\n" for record in self.records),
                   make_parents=True)
        return self.path
