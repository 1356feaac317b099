"""Batched, seeded MiniGrid and BabyAI environments returning torch tensors.

The step interface matches :class:`envs.maze.MazeEnv`: ``reset() -> obs`` once, then
``step(actions) -> (obs, reward, done, finished_episodes)`` with finished envs reset automatically
(the returned observation is the new episode's first). Observations are uint8 tensors
``(num_envs, *observation_shape(cfg))``:

- ``image``: the agent's partial 7×7 view in MiniGrid's (object, colour, state) index encoding;
- ``onehot``: the same view one-hot encoded (object, colour and state one-hots concatenated, 20 channels);
- ``full``: the whole grid in index encoding (the agent cell holds (10, 0, direction)).

MiniGrid pays ``1 − 0.9·steps/max_steps`` on success and 0 otherwise.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Optional

import gymnasium as gym
import minigrid  # noqa: F401  (importing registers the MiniGrid-* and BabyAI-* ids)
import numpy as np
import torch
from minigrid.wrappers import FullyObsWrapper, ImgObsWrapper, OneHotPartialObsWrapper

from shardlab.envs.seeding import RANK_SEED_STRIDE

OBSERVATIONS = ("image", "onehot", "full")
FAMILIES = ("MiniGrid-", "BabyAI-")


@dataclass
class MiniGridEnvConfig:
    """A registered MiniGrid/BabyAI env id, how many copies to step together, and what they observe."""

    env_id: str = "MiniGrid-DoorKey-5x5-v0"
    num_envs: int = 16
    obs: str = "image"  # image: partial 7×7×3 indices; onehot: partial 7×7×20; full: whole grid indices
    seed: int = 0  # env i of rank r starts from seed + i + RANK_SEED_STRIDE·r
    max_steps: Optional[int] = None  # episode time limit; null keeps the env's own


@dataclass(frozen=True)
class Episode:
    """Statistics of one finished episode."""

    ret: float
    length: int
    success: bool  # terminated with a positive reward (reached the goal / did the mission)
    terminated: bool
    truncated: bool  # hit max_steps
    mission: str


def env_ids() -> list[str]:
    """The registered MiniGrid and BabyAI env ids."""
    return sorted(name for name in gym.registry if name.startswith(FAMILIES))


def check_config(cfg: MiniGridEnvConfig) -> None:
    """Raise ValueError with a one-line message if ``cfg`` cannot make an env."""
    if cfg.env_id not in gym.registry or not cfg.env_id.startswith(FAMILIES):
        close = difflib.get_close_matches(cfg.env_id, env_ids(), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "e.g. MiniGrid-DoorKey-5x5-v0 or BabyAI-GoToLocal-v0"
        raise ValueError(f"env.env_id {cfg.env_id!r} is not a registered MiniGrid/BabyAI env; {hint}")
    if cfg.obs not in OBSERVATIONS:
        raise ValueError(f"env.obs must be one of {', '.join(OBSERVATIONS)}, got {cfg.obs!r}")
    if cfg.num_envs < 1:
        raise ValueError(f"env.num_envs must be >= 1, got {cfg.num_envs}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise ValueError(f"env.max_steps must be >= 1 or null, got {cfg.max_steps}")
    if cfg.seed < 0:
        raise ValueError(f"env.seed must be >= 0 (gymnasium seeds are non-negative), got {cfg.seed}")


def make_single(cfg: MiniGridEnvConfig) -> gym.Env:
    """One wrapped env whose observations are the uint8 arrays ``cfg.obs`` names."""
    kwargs = {} if cfg.max_steps is None else {"max_steps": cfg.max_steps}
    try:  # the passive checker re-validates every step; the wrappers below are all we need
        env = gym.make(cfg.env_id, disable_env_checker=True, **kwargs)
    except TypeError as exc:
        raise ValueError(f"env {cfg.env_id} does not take env.max_steps ({exc}); set env.max_steps=null") from None
    if cfg.obs == "onehot":
        env = OneHotPartialObsWrapper(env)
    elif cfg.obs == "full":
        env = FullyObsWrapper(env)
    return ImgObsWrapper(env)


def observation_shape(cfg: MiniGridEnvConfig) -> tuple[int, ...]:
    """(H, W, C) of one observation."""
    env = make_single(cfg)
    shape = tuple(int(n) for n in env.observation_space.shape)
    env.close()
    return shape


def num_actions(cfg: MiniGridEnvConfig) -> int:
    """Size of the env's discrete action space (7 for MiniGrid and BabyAI)."""
    env = make_single(cfg)
    count = int(env.action_space.n)
    env.close()
    return count


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
