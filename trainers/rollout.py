"""One loop that plays a :class:`envs.batched.BatchedEnv` with a policy, for training, evals and scripts.

Two patterns share it:

- ``until="first_episode"``: play until every env has finished its first episode (or ``steps``
  steps, when given) and return those episodes in env order; envs that finish early keep being
  stepped (batched envs cannot pause) but their later episodes are not returned.
- ``until="steps"``: play exactly ``steps`` steps (collecting observations, filling buffers); the
  first episodes finished within them are returned the same way.

Hooks see everything else: ``on_step(t, obs, actions, reward, done, finished)`` after each step with
the observations the actions were chosen on (record states, activations, rewards), and
``on_episode(index, episode)`` once per env when its first episode ends (progress bars, outcomes).
The caller owns the env (closes it) and any ``torch.inference_mode``/hook context.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import torch

from shardlab.envs.batched import BatchedEnv

StepHook = Callable[[int, Any, Any, Any, Any, list], None]
EpisodeHook = Callable[[int, Any], None]


def rollout(env: BatchedEnv, act: Callable[[Any], Any], *, obs: Any = None, steps: Optional[int] = None,
            until: Literal["first_episode", "steps"] = "first_episode", on_step: Optional[StepHook] = None,
            on_episode: Optional[EpisodeHook] = None) -> list:
    """Step ``env`` with ``act(obs) -> actions`` from ``obs`` (``env.reset()`` when None).

    Returns the first episode of each env that finished one, in env order. ``until="first_episode"``
    stops once every env has (or after ``steps`` steps, if given; None plays on until they all have);
    ``until="steps"`` plays exactly ``steps`` steps.
    """
    if until not in ("first_episode", "steps"):
        raise ValueError(f"until must be 'first_episode' or 'steps', got {until!r}")
    if until == "steps" and steps is None:
        raise ValueError("until='steps' needs steps")
    if obs is None:
        obs = env.reset()
    first: list[Any] = [None] * env.num_envs
    remaining = env.num_envs
    t = 0
    while steps is None or t < steps:
        if until == "first_episode" and remaining == 0:
            break
        actions = act(obs)
        next_obs, reward, done, finished = env.step(actions)
        if on_step is not None:
            on_step(t, obs, actions, reward, done, finished)
        for index, episode in zip(torch.as_tensor(done).nonzero().flatten().tolist(), finished):
            if first[index] is None:  # later episodes of a finished env do not count
                first[index] = episode
                remaining -= 1
                if on_episode is not None:
                    on_episode(index, episode)
        obs = next_obs
        t += 1
    return [episode for episode in first if episode is not None]
