"""The batched-env protocol that :class:`envs.maze.MazeEnv` and :class:`envs.minigrid.MiniGridEnv` implement.

``num_envs`` copies of an environment stepped together. Torch-free on purpose (observations,
actions, rewards and done flags are whatever the env uses; both envs here use torch tensors):

- ``reset() -> obs``: begin, returning the first observations, shape ``(num_envs, ...)``; call once.
- ``step(actions) -> (obs, reward, done, finished)``: act in every env. ``reward`` and ``done`` have
  shape ``(num_envs,)``; an env that is done resets itself, so ``obs`` holds its new episode's first
  observation. ``finished`` lists one episode record per done env, in env order (the order of
  ``nonzero(done)``). Each call returns a fresh observation array: later steps must not overwrite
  it, since the rollout's step hook sees it after the step.
- ``close()``: release the envs.

:func:`envs.rollout.rollout` plays any env of this shape.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable


@runtime_checkable
class BatchedEnv(Protocol):
    """``num_envs`` auto-resetting envs stepped together (see the module docstring)."""

    num_envs: int

    def reset(self) -> Any:
        """Start and return the first observations, one row per env."""
        ...

    def step(self, actions: Any) -> tuple[Any, Any, Any, Sequence[Any]]:
        """Act in every env; (obs, reward, done, finished episodes of the done envs in env order)."""
        ...

    def close(self) -> None:
        """Release the envs."""
        ...
