"""Play a decision transformer online in batched, seeded MiniGrid envs, conditioned on target returns.

Env i starts from seed ``seed + i`` and plays its first episode with target return ``targets[i]``;
the evals take ``seed`` from :func:`evaluation_seed`, so that no seed is one the training data
recorded (``spec.level_seeds``) and the model is never scored on a level it was trained on. The
return-to-go fed to the model starts at the target and is decremented by each reward, as in the DT
paper. The model sees the last ``context`` timesteps (left-padded while the episode is
shorter). Actions are the argmax (``greedy``) or sampled with a seeded generator, so a rollout is
reproducible. Activation edits (``models.hooks`` edits by name) apply to every forward pass, which
is how steering vectors are tested online.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from shardlab.bars import progress_kwargs
from shardlab.envs.minigrid import MiniGridEnv
from shardlab.envs.minigrid_config import spec_env_config
from shardlab.envs.rollout import rollout
from shardlab.evals.minigrid.minigrid_return import LEVEL_OFFSET
from shardlab.evals.suite import stats
from shardlab.models.decision_transformer import DecisionTransformer
from shardlab.models.hooks import Edit, hooked
from shardlab.trainers.dt_data import WindowBatch


@dataclass
class PlayedEpisode:
    """One first episode: its conditioning target, outcome and (optionally) its steps."""

    target: float
    ret: float
    length: int
    success: bool
    truncated: bool
    mission: str
    states: Optional[np.ndarray] = None  # (T, *obs_shape) uint8
    actions: Optional[np.ndarray] = None  # (T,)
    returns_to_go: Optional[np.ndarray] = None  # (T,) the RTG the model was given
    timesteps: Optional[np.ndarray] = None  # (T,)
    seed: int = -1  # the level: the first episode of env.reset(seed=seed)


def free_block(ranges: Sequence[Sequence[int]], start: int, n: int) -> int:
    """The smallest ``s >= start`` whose ``n`` seeds ``s … s+n-1`` miss every inclusive ``[first, last]`` range."""
    for first, last in sorted((int(a), int(b)) for a, b in ranges):
        if last >= start and first < start + n:  # overlaps the block: move the block past the range
            start = last + 1
    return start


def evaluation_seed(spec: Any, seed: int, n: int, name: str) -> int:
    """The first of ``n`` consecutive level seeds eval ``name`` plays: from ``LEVEL_OFFSET + seed``,
    moved past every level seed the training data recorded; a ValueError if it recorded none."""
    ranges = list(spec.get("level_seeds") or [])
    if not ranges:
        raise ValueError(f"{name}: the checkpoint's training data recorded no level seeds (spec.level_seeds is "
                         "empty: a schema-1 dataset, or a checkpoint from before datasets recorded them), so its "
                         "evaluation levels could be training levels; re-collect the data and retrain")
    return free_block(ranges, LEVEL_OFFSET + seed, n)


def play(model: DecisionTransformer, spec: DictConfig, targets: Sequence[float], seed: int,
         greedy: bool = True, edits: Optional[dict[str, Edit]] = None, record: bool = False,
         progress: bool = False, desc: str = "episodes", max_steps: Optional[int] = None) -> list[PlayedEpisode]:
    """The first episodes (in env order) of ``len(targets)`` envs (seeds ``seed + i``), env i conditioned on ``targets[i]``."""
    n, K = len(targets), model.context
    env = MiniGridEnv(spec_env_config(spec, num_envs=n, seed=seed, max_steps=max_steps))
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    obs = env.reset()
    missions = env.missions
    mission_tokens = model.tokenize_missions(missions).to(device) if model.max_mission_tokens else None
    states = torch.zeros((n, K, *obs.shape[1:]), dtype=torch.uint8)
    actions = torch.zeros((n, K), dtype=torch.long)
    rtg = torch.zeros((n, K))
    timesteps = torch.zeros((n, K), dtype=torch.long)
    returns_to_go = torch.tensor(list(targets), dtype=torch.float32)
    active = torch.ones(n, dtype=torch.bool)
    history: list[list[tuple]] = [[] for _ in range(n)]
    outcome: list[Optional[PlayedEpisode]] = [None] * n
    clock = [0]  # the step being played

    def act(obs: torch.Tensor) -> torch.Tensor:
        t = clock[0]
        # shift the windows one step left and append the current step (action not chosen yet)
        for buffer in (states, actions, rtg, timesteps):
            buffer[:, :-1] = buffer[:, 1:].clone()
        states[:, -1], actions[:, -1], rtg[:, -1], timesteps[:, -1] = obs, 0, returns_to_go, t
        mask = (torch.arange(K) >= K - 1 - t).expand(n, K)
        rows = torch.nonzero(active).flatten()
        batch = WindowBatch(states[rows], actions[rows], rtg[rows], timesteps[rows], mask[rows],
                            None if mission_tokens is None else mission_tokens[rows.to(device)]).to(device)
        logits = model(**batch.inputs())[:, -1].float().cpu()
        chosen = logits.argmax(-1) if greedy else torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
        step_actions = torch.zeros(n, dtype=torch.long)
        step_actions[rows] = chosen
        actions[:, -1] = step_actions
        return step_actions

    def on_step(t: int, obs: torch.Tensor, step_actions: torch.Tensor, reward: torch.Tensor, *_) -> None:
        if record:
            for row in torch.nonzero(active).flatten().tolist():
                history[row].append((obs[row].numpy(), int(step_actions[row]), float(returns_to_go[row]), t))
        returns_to_go.sub_(reward)
        clock[0] = t + 1

    def on_episode(index: int, episode) -> None:
        active[index] = False
        outcome[index] = PlayedEpisode(float(targets[index]), episode.ret, episode.length,
                                       episode.success, episode.truncated, episode.mission, seed=seed + index)
        bar.update(1)

    bar = tqdm(total=n, desc=desc, disable=not progress, leave=False, **progress_kwargs())
    try:
        with torch.inference_mode(), hooked(model, edits or {}):
            rollout(env, act, obs=obs, on_step=on_step, on_episode=on_episode)
    finally:
        bar.close()
        env.close()
    if record:
        for episode, steps in zip(outcome, history):
            episode.states = np.stack([s[0] for s in steps])
            episode.actions = np.array([s[1] for s in steps], dtype=np.int64)
            episode.returns_to_go = np.array([s[2] for s in steps], dtype=np.float32)
            episode.timesteps = np.array([s[3] for s in steps], dtype=np.int64)
    return outcome


def episode_windows(model: DecisionTransformer, episode: PlayedEpisode, ends: Sequence[int],
                    rtg: Optional[float] = None) -> WindowBatch:
    """Windows of a recorded episode ending at each step of ``ends``; ``rtg`` replaces every RTG."""
    K = model.context
    index = torch.tensor(list(ends))[:, None] + torch.arange(K) - (K - 1)
    mask = index >= 0
    index = index.clamp_min(0)
    returns = torch.from_numpy(episode.returns_to_go)[index]
    if rtg is not None:
        returns = torch.full_like(returns, rtg)
    missions = model.tokenize_missions([episode.mission] * len(ends)) if model.max_mission_tokens else None
    return WindowBatch(torch.from_numpy(episode.states)[index], torch.from_numpy(episode.actions)[index], returns,
                       torch.from_numpy(episode.timesteps)[index], mask, missions)


def recorded_windows(model: DecisionTransformer, episodes: list[PlayedEpisode], limit: int, seed: int
                     ) -> list[tuple[PlayedEpisode, list[int]]]:
    """Up to ``limit`` (episode, step) window ends drawn (seeded) from every step of the episodes."""
    pairs = [(i, t) for i, e in enumerate(episodes) for t in range(e.length)]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(pairs), size=min(limit, len(pairs)), replace=False).tolist())
    by_episode: dict[int, list[int]] = {}
    for index in chosen:
        episode, step = pairs[index]
        by_episode.setdefault(episode, []).append(step)
    return [(episodes[i], steps) for i, steps in by_episode.items()]


def summarise(episodes: list[PlayedEpisode]) -> dict[str, stats.Estimate]:
    """Success rate, mean return, mean length and truncation rate over the episodes' levels (one
    independent unit each); episodes of several runs on the same levels are clustered by level."""
    seeds = np.array([e.seed for e in episodes])
    columns = {"success_rate": [e.success for e in episodes], "mean_return": [e.ret for e in episodes],
               "mean_length": [e.length for e in episodes], "truncation_rate": [e.truncated for e in episodes]}
    if len(np.unique(seeds)) == len(seeds):  # one episode per level
        return {name: stats.proportion(values, unit="levels") if name.endswith("rate") else
                stats.mean(values, "levels") for name, values in columns.items()}
    return {name: stats.cluster_mean(values, seeds, "levels") for name, values in columns.items()}
