"""Play whole episodes with a policy (or uniformly random actions) and summarise them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.envs.maze import Episode, MazeEnvConfig, greedy_move_actions, make
from shardlab.envs.rollout import rollout
from shardlab.models.impala import ImpalaPolicy, preprocess

MAX_EPISODE_STEPS = 500  # procgen maze's own time limit


@dataclass(frozen=True)
class Summary:
    """Mean statistics of a set of episodes, with the standard error of the mean return."""

    episodes: int
    mean_return: float
    return_stderr: float
    cheese_rate: float
    corner_rate: float
    mean_length: float


def actor(policy: Optional[ImpalaPolicy], num_envs: int, generator: torch.Generator, greedy: bool = False,
          channels_last: bool = True, groups: Optional[Sequence[int]] = None,
          active: Optional[torch.Tensor] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The act function every maze episode uses: the greedy move, or an action sampled with the
    seeded ``generator`` (reproducible evaluations); ``policy=None`` acts uniformly at random.

    ``groups`` (sizes summing to ``num_envs``) splits the envs into consecutive groups, each
    sampling from its own generator in the state ``generator`` starts in: one forward for the whole
    batch, and each group draws what it would draw played alone.

    ``active`` (a (num_envs,) bool tensor the caller updates) names the envs whose actions matter:
    the policy sees only those rows, and the others get uniformly random actions. The active rows
    draw exactly what they would with every row forwarded: torch samples one action per row from
    its own exponential draws (``multinomial`` with one sample), whatever the other rows hold."""
    sizes = [num_envs] if groups is None else [int(size) for size in groups]
    if sum(sizes) != num_envs:
        raise ValueError(f"groups {list(sizes)} must add up to the {num_envs} envs")
    streams = [generator] + [torch.Generator().set_state(generator.get_state()) for _ in sizes[1:]]

    def sample(draw: Callable[[int, Optional[torch.Tensor], torch.Generator], torch.Tensor],
               probs: Optional[torch.Tensor] = None) -> torch.Tensor:
        parts, start = [], 0
        for size, stream in zip(sizes, streams):
            if size:  # an empty group draws nothing (torch.multinomial refuses an empty batch)
                parts.append(draw(size, None if probs is None else probs[start:start + size], stream))
            start += size
        return parts[0] if len(parts) == 1 else torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def act(obs: torch.Tensor) -> torch.Tensor:
        if policy is None:
            return sample(lambda size, _, stream: torch.randint(0, 15, (size,), generator=stream))
        device = next(policy.parameters()).device
        if active is None or bool(active.all()):
            logits, _ = policy(preprocess(obs.to(device), channels_last))
        else:  # envs past the episode that counts: no forward for them
            rows = active.nonzero().flatten()
            part, _ = policy(preprocess(obs[rows].to(device), channels_last))
            logits = torch.zeros((num_envs, part.shape[-1]), dtype=part.dtype, device=part.device)
            logits[rows.to(part.device)] = part
        if greedy:
            return greedy_move_actions(logits).cpu()
        return sample(lambda size, probs, stream: torch.multinomial(probs, 1, generator=stream).squeeze(-1),
                      logits.float().softmax(-1).cpu())
    return act


def first_episodes(policy: Optional[ImpalaPolicy], env_cfg: MazeEnvConfig, greedy: bool = False,
                   channels_last: bool = True, progress: bool = False,
                   states: Optional[Sequence[bytes]] = None, starts: Optional[list] = None,
                   groups: Optional[Sequence[int]] = None) -> list[Episode]:
    """The first episode of each of ``env_cfg.num_envs`` seeded envs; ``policy=None`` acts randomly.

    Two calls with the same ``env_cfg`` play the same mazes with the same cheese squares, so
    policies can be compared episode for episode. With ``states`` (one per env) the episodes start
    from those states instead. A ``starts`` list receives each env's start state, in env order.
    ``groups`` (sizes of consecutive sets of ``states``) plays several sets in one batch, each
    sampling its actions as it would alone (see :func:`actor`): one forward per step, not one per set.
    The env is ``env_cfg.backend``'s (:func:`envs.maze.make`).
    """
    if starts is not None and states is None and env_cfg.backend != "procgen":
        raise ValueError("the start states of fresh mazes are procgen state bytes: play them with "
                         "env.backend: procgen, or pass states")
    env = make(env_cfg)
    generator = torch.Generator().manual_seed(env_cfg.seed)
    obs = env.reset() if states is None else env.load_states(states)
    if starts is not None:  # procgen reads a loaded state back byte for byte, so loaded states are the starts
        starts.extend(states if states is not None else (env.get_state(index) for index in range(env.num_envs)))

    # an env's first episode is the one that counts: once it is over, the policy stops seeing that env
    active = torch.ones(env.num_envs, dtype=torch.bool)
    act = actor(policy, env.num_envs, generator, greedy, channels_last, groups, active)
    bar = tqdm(total=env.num_envs, desc="episodes", disable=not progress, **progress_kwargs())

    def finished(index: int, _episode: Episode) -> None:
        active[index] = False
        bar.update(1)
    try:
        with torch.inference_mode():
            return rollout(env, act, obs=obs, steps=MAX_EPISODE_STEPS + 1, on_episode=finished)
    finally:
        bar.close()
        env.close()


def summarise(episodes: list[Episode]) -> Summary:
    """Means over episodes (rates are fractions in [0, 1])."""
    n = len(episodes)
    returns = torch.tensor([e.ret for e in episodes], dtype=torch.float64)
    stderr = float(returns.std() / math.sqrt(n)) if n > 1 else float("nan")
    mean = lambda values: sum(values) / n
    return Summary(n, float(returns.mean()), stderr, mean([e.reached_cheese for e in episodes]),
                   mean([e.reached_corner for e in episodes]), mean([e.length for e in episodes]))
