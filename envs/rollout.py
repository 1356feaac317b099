"""One loop that plays a :class:`envs.batched.BatchedEnv` with a policy, for training, evals and scripts.

Two patterns share it:

- ``until="first_episode"``: play until every env has finished its first episode (or ``steps``
  steps, when given) and return those episodes in env order; envs that finish early keep being
  stepped (batched envs cannot pause) but their later episodes are not returned. ``quota`` asks
  for the first ``quota[i]`` episodes of env ``i`` instead (returned env by env).
- ``until="steps"``: play exactly ``steps`` steps (collecting observations, filling buffers); the
  first episodes finished within them are returned the same way.

Hooks see everything else: ``on_step(t, obs, actions, reward, done, finished)`` after each step
with the observations the actions were chosen on (record states, activations, rewards), and
``on_episode(index, episode)`` once per counted episode (the first, or the first ``quota[i]``):
progress bars, outcomes. ``stop()``, when given, is asked after each step's hooks and ends the
rollout early when true (say, once every env reached a target square). ``on_end(obs)`` receives the
observation the rollout stopped at, the one the next action would be chosen on: PPO training
(``trainers.ppo.PPOModule._collect``) bootstraps its value from it and starts the next iteration
there. The caller owns the env (closes it) and any ``torch.inference_mode``/hook context.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence

import torch

from shardlab.envs.batched import BatchedEnv

StepHook = Callable[[int, Any, Any, Any, Any, list], None]
EpisodeHook = Callable[[int, Any], None]


def rollout(env: BatchedEnv, act: Callable[[Any], Any], *, obs: Any = None, steps: Optional[int] = None,
            until: Literal["first_episode", "steps"] = "first_episode", on_step: Optional[StepHook] = None,
            on_episode: Optional[EpisodeHook] = None, quota: Optional[Sequence[int]] = None,
            stop: Optional[Callable[[], bool]] = None, on_end: Optional[Callable[[Any], None]] = None) -> list:
    """Step ``env`` with ``act(obs) -> actions`` from ``obs`` (``env.reset()`` when None).

    Returns the first episode of each env that finished one, in env order. ``until="first_episode"``
    stops once every env has (or after ``steps`` steps, if given; None plays on until they all have);
    ``until="steps"`` plays exactly ``steps`` steps. ``quota`` (one count per env, zero allowed)
    counts env ``i``'s first ``quota[i]`` episodes instead of its first one. ``stop()`` true after a
    step ends the rollout there; ``on_end(obs)`` then gets the observation it ended on.
    """
    if until not in ("first_episode", "steps"):
        raise ValueError(f"until must be 'first_episode' or 'steps', got {until!r}")
    if until == "steps" and steps is None:
        raise ValueError("until='steps' needs steps")
    if obs is None:
        obs = env.reset()
    wanted = [1] * env.num_envs if quota is None else [int(q) for q in quota]
    if len(wanted) != env.num_envs or min(wanted, default=0) < 0:
        raise ValueError(f"quota needs one count >= 0 per env ({env.num_envs}), got {quota!r}")
    counted: list[list[Any]] = [[] for _ in range(env.num_envs)]
    remaining = sum(wanted)
    t = 0
    while steps is None or t < steps:
        if until == "first_episode" and remaining == 0:
            break
        actions = act(obs)
        next_obs, reward, done, finished = env.step(actions)
        if on_step is not None:
            on_step(t, obs, actions, reward, done, finished)
        for index, episode in zip(torch.as_tensor(done).nonzero().flatten().tolist(), finished):
            if len(counted[index]) < wanted[index]:  # later episodes of a finished env do not count
                counted[index].append(episode)
                remaining -= 1
                if on_episode is not None:
                    on_episode(index, episode)
        obs = next_obs
        t += 1
        if stop is not None and stop():
            break
    if on_end is not None:
        on_end(obs)
    return [episode for per_env in counted for episode in per_env]
