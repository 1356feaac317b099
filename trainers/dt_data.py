"""Context windows for decision-transformer training, cut from a trajectory dataset.

A window is the K timesteps ending at one step of one episode. Windows that would reach before the
episode's start are left-padded: ``step_mask`` is False there and the padded positions repeat the
episode's first step (any value would do; the model masks and zeroes them). Sampling picks the
window's last step uniformly among all steps of the chosen episodes, so every step is the newest
one of a window equally often, and is seeded by the caller's generator.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterator, Optional

import numpy as np
import torch

from shardlab.trainers.trajectories import Trajectories


@dataclass
class WindowBatch:
    """B windows of K timesteps, the decision transformer's inputs plus the action targets."""

    states: torch.Tensor  # (B, K, *obs_shape) uint8
    actions: torch.Tensor  # (B, K) long, also the targets
    returns_to_go: torch.Tensor  # (B, K) float
    timesteps: torch.Tensor  # (B, K) long
    step_mask: torch.Tensor  # (B, K) bool, True at real steps
    missions: Optional[torch.Tensor] = None  # (B, M) long word indices, or None

    def inputs(self) -> dict[str, Optional[torch.Tensor]]:
        """Keyword arguments of DecisionTransformer.forward."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to(self, device: torch.device) -> "WindowBatch":
        """The same batch on ``device``."""
        return WindowBatch(**{k: None if v is None else v.to(device, non_blocking=True) for k, v in self.inputs().items()})


def split_episodes(num_episodes: int, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) episode indices: a seeded random ``validation_fraction`` is held out."""
    order = np.random.default_rng(seed).permutation(num_episodes)
    held_out = int(round(validation_fraction * num_episodes))
    if validation_fraction > 0 and num_episodes > 1:
        held_out = min(max(held_out, 1), num_episodes - 1)  # both parts keep at least one episode
    else:
        held_out = 0
    return np.sort(order[held_out:]), np.sort(order[:held_out])


class EpisodeWindows:
    """The windows of a subset of a dataset's episodes, as tensors (move them with :meth:`to`)."""

    def __init__(self, traj: Trajectories, episodes: np.ndarray, context: int,
                 mission_tokens: Optional[torch.Tensor] = None):
        self.context = context
        self.states = torch.from_numpy(np.ascontiguousarray(traj.observations))
        self.actions = torch.from_numpy(traj.actions.astype(np.int64))
        self.returns_to_go = torch.from_numpy(traj.returns_to_go.astype(np.float32))
        self.timesteps = torch.from_numpy(traj.timesteps.astype(np.int64))
        lengths = traj.episode_lengths.astype(np.int64)
        self.step_episode = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths))
        self.step_start = torch.from_numpy(np.repeat(traj.episode_starts.astype(np.int64), lengths))
        self.mission_tokens = mission_tokens  # (E, M) for all episodes of the dataset, or None
        episodes = np.asarray(episodes, dtype=np.int64)
        ends = [np.arange(traj.episode_starts[e], traj.episode_starts[e] + lengths[e]) for e in episodes]
        self.ends = torch.from_numpy(np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64))
        self.num_episodes = len(episodes)

    def __len__(self) -> int:
        """Number of distinct windows (one per step of the chosen episodes)."""
        return len(self.ends)

    def to(self, device: torch.device) -> "EpisodeWindows":
        """Move the arrays to ``device`` (in place) and return self."""
        for name in ("states", "actions", "returns_to_go", "timesteps", "step_episode", "step_start", "ends",
                     "mission_tokens"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def gather(self, ends: torch.Tensor) -> WindowBatch:
        """The windows whose newest step is each of ``ends`` (global step indices)."""
        ends = ends.to(self.actions.device)
        offsets = torch.arange(self.context, device=ends.device) - (self.context - 1)
        index = ends[:, None] + offsets  # (B, K)
        start = self.step_start[ends][:, None]
        mask = index >= start
        index = torch.where(mask, index, start)
        missions = None if self.mission_tokens is None else self.mission_tokens[self.step_episode[ends]]
        return WindowBatch(self.states[index], self.actions[index], self.returns_to_go[index],
                           self.timesteps[index], mask, missions)

    def sample(self, batch_size: int, generator: torch.Generator) -> WindowBatch:
        """``batch_size`` windows with uniformly random newest steps (seeded by ``generator``, a CPU one)."""
        picks = torch.randint(len(self.ends), (batch_size,), generator=generator)
        return self.gather(self.ends[picks.to(self.ends.device)])

    def fixed_ends(self, limit: int, seed: int) -> torch.Tensor:
        """Up to ``limit`` distinct newest steps chosen once with ``seed`` (a stable validation set)."""
        if len(self.ends) <= limit:
            return self.ends
        picks = torch.randperm(len(self.ends), generator=torch.Generator().manual_seed(seed))[:limit]
        return self.ends[picks.sort().values.to(self.ends.device)]

    def batches(self, ends: torch.Tensor, batch_size: int) -> Iterator[WindowBatch]:
        """The windows ending at ``ends`` in batches of ``batch_size``."""
        for first in range(0, len(ends), batch_size):
            yield self.gather(ends[first:first + batch_size])
