"""Batched, seeded MiniGrid and BabyAI environments returning torch tensors.

Implements :class:`envs.batched.BatchedEnv`, like :class:`envs.maze.MazeEnv`: ``reset() -> obs`` once, then
``step(actions) -> (obs, reward, done, finished_episodes)`` with finished envs reset automatically
(the returned observation is the new episode's first). Observations are uint8 tensors
``(num_envs, *observation_shape(cfg))``:

- ``image``: the agent's partial 7×7 view in MiniGrid's (object, colour, state) index encoding;
- ``onehot``: the same view one-hot encoded (object, colour and state one-hots concatenated, 20 channels);
- ``full``: the whole grid in index encoding (the agent cell holds (10, 0, direction)).

MiniGrid pays ``1 − 0.9·steps/max_steps`` on success and 0 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from shardlab.envs.minigrid_config import MiniGridEnvConfig
from shardlab.envs.minigrid_registry import check_config, make_single, num_actions, observation_shape
from shardlab.envs.seeding import RANK_SEED_STRIDE

__all__ = ["MiniGridEnvConfig", "Episode", "MiniGridEnv", "check_config", "make_single", "num_actions",
           "observation_shape"]


@dataclass(frozen=True)
class Episode:
    """Statistics of one finished episode."""

    ret: float
    length: int
    success: bool  # terminated with a positive reward (reached the goal / did the mission)
    terminated: bool
    truncated: bool  # hit max_steps
    mission: str


class MiniGridEnv:
    """``num_envs`` copies of one MiniGrid/BabyAI env stepped together; uint8 observation tensors."""

    def __init__(self, cfg: MiniGridEnvConfig, rank: int = 0):
        check_config(cfg)
        self.cfg = cfg
        self.num_envs = cfg.num_envs
        self.seed = cfg.seed + RANK_SEED_STRIDE * rank
        self.envs = [make_single(cfg) for _ in range(cfg.num_envs)]
        self.num_actions = int(self.envs[0].action_space.n)
        self.observation_shape = tuple(int(n) for n in self.envs[0].observation_space.shape)
        self._return = np.zeros(cfg.num_envs, np.float64)
        self._length = np.zeros(cfg.num_envs, np.int64)
        self._missions = [""] * cfg.num_envs
        self._obs = np.zeros((cfg.num_envs, *self.observation_shape), np.uint8)
        self.last_terminated = np.zeros(cfg.num_envs, bool)
        self.last_truncated = np.zeros(cfg.num_envs, bool)

    def reset(self) -> torch.Tensor:
        """Start every env's first episode from its seed and return the observations."""
        for i, env in enumerate(self.envs):
            self._obs[i], _ = env.reset(seed=self.seed + i)  # later resets continue the env's RNG
            self._missions[i] = env.unwrapped.mission
        self._return[:] = 0.0
        self._length[:] = 0
        return torch.from_numpy(self._obs.copy())

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Episode]]:
        """Act in every env; returns (obs, reward, done, finished episodes). Done envs auto-reset."""
        action = np.asarray(torch.as_tensor(actions).detach().cpu(), dtype=np.int64).reshape(self.num_envs)
        reward = np.zeros(self.num_envs, np.float32)
        finished: list[Episode] = []
        for i, env in enumerate(self.envs):
            obs, reward[i], terminated, truncated, _ = env.step(int(action[i]))
            self._return[i] += reward[i]
            self._length[i] += 1
            self.last_terminated[i], self.last_truncated[i] = terminated, truncated
            if terminated or truncated:
                finished.append(Episode(float(self._return[i]), int(self._length[i]),
                                        bool(terminated and reward[i] > 0), bool(terminated), bool(truncated),
                                        self._missions[i]))
                obs, _ = env.reset()
                self._missions[i] = env.unwrapped.mission
                self._return[i], self._length[i] = 0.0, 0
            self._obs[i] = obs
        done = self.last_terminated | self.last_truncated
        return torch.from_numpy(self._obs.copy()), torch.from_numpy(reward), torch.from_numpy(done), finished

    def rng_state(self) -> list[dict]:
        """Every env's generator state (layouts of later episodes), for checkpoints."""
        return [env.unwrapped.np_random.bit_generator.state for env in self.envs]

    def set_rng_state(self, states: list[dict]) -> None:
        """Restore the generators saved by :meth:`rng_state`."""
        if len(states) != self.num_envs:
            raise ValueError(f"rng state for {len(states)} envs, this env has {self.num_envs}")
        for env, state in zip(self.envs, states):
            env.unwrapped.np_random.bit_generator.state = state

    @property
    def missions(self) -> list[str]:
        """The current episode's mission string of every env."""
        return list(self._missions)

    def close(self) -> None:
        """Close every env."""
        for env in self.envs:
            env.close()


def make(cfg: MiniGridEnvConfig, rank: int = 0) -> MiniGridEnv:
    """Build the batched env for DDP rank ``rank`` (each rank gets distinct seeds)."""
    return MiniGridEnv(cfg, rank)
