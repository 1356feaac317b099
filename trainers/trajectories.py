"""On-disk trajectory datasets (schema 2): episodes of (observation, action, reward) for offline RL.

One ``.npz`` file written by ``np.savez_compressed`` and read with ``allow_pickle=False``. Steps of
all episodes are stored back to back; per-episode arrays give the offsets. Arrays:

=================  ========================  =====================================================
name               shape, dtype              meaning
=================  ========================  =====================================================
schema_version     (), int64                 2 (1: no level_seeds/level_indices; still read)
metadata           (), unicode               JSON: env_id, obs, obs_shape, num_actions, policy,
                                             seeds, return_stats, episodes, steps, created, ...
observations       (T, *obs_shape), uint8    observation the action was chosen from
actions            (T,), int64               action taken
rewards            (T,), float32             reward received for that action
returns_to_go      (T,), float32             undiscounted sum of rewards from this step to the end
timesteps          (T,), int64               step index within the episode (0 at its start)
episode_starts     (E,), int64               offset of each episode's first step
episode_lengths    (E,), int64               steps per episode (>= 1)
episode_returns    (E,), float32             sum of the episode's rewards
terminated         (E,), bool                ended by the environment (success or failure)
truncated          (E,), bool                cut by the time limit
missions           (E,), unicode             the episode's mission string
level_seeds        (E,), int64               the seed of the env the episode was played in (-1:
                                             not recorded)
level_indices      (E,), int64               0: the level ``env.reset(seed=level_seeds[e])`` gives;
                                             k: the k-th later level of that env's generator
                                             (``shardlab collect`` plays several episodes per
                                             env); -1: not recorded
=================  ========================  =====================================================

The level arrays let evals play levels a model was not trained on (``level_seed_ranges``); a schema-1
file loads with every level unrecorded (-1), and the decision-transformer evals refuse such data.

Writes are atomic (``shardlab.atomic``: temp file, fsync, rename), so a crash never leaves a half-written dataset.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
import zlib
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import numpy as np

from shardlab.atomic import atomic_write

SCHEMA_VERSION = 2  # 2: level_seeds and level_indices
READABLE_SCHEMAS = (1, 2)  # a schema-1 file loads with its levels unrecorded (-1)
UNRECORDED = -1  # level_seeds / level_indices of an episode whose level was not recorded
STEP_ARRAYS = ("observations", "actions", "rewards", "returns_to_go", "timesteps")
LEVEL_ARRAYS = ("level_seeds", "level_indices")
EPISODE_ARRAYS = ("episode_starts", "episode_lengths", "episode_returns", "terminated", "truncated",
                  "missions", *LEVEL_ARRAYS)
# dtype kind each array must have: u = unsigned int, i = signed int, f = float, b = bool, U = str
_KINDS = {"observations": "u", "actions": "i", "rewards": "f", "returns_to_go": "f", "timesteps": "i",
          "episode_starts": "i", "episode_lengths": "i", "episode_returns": "f", "terminated": "b",
          "truncated": "b", "missions": "U", "level_seeds": "i", "level_indices": "i"}
_DTYPES = {"observations": np.uint8, "actions": np.int64, "rewards": np.float32,
           "returns_to_go": np.float32, "timesteps": np.int64, "episode_starts": np.int64,
           "episode_lengths": np.int64, "episode_returns": np.float32, "terminated": np.bool_,
           "truncated": np.bool_, "missions": np.str_, "level_seeds": np.int64, "level_indices": np.int64}
# metadata keys that must agree when two datasets are concatenated
_SAME_KEYS = ("env_id", "obs", "obs_shape", "num_actions", "max_steps")
# metadata keys of one collection run, kept per part in a concatenated dataset's "parts" list
_PART_KEYS = ("policy", "source", "seeds", "epsilon", "temperature", "bot_failures", "episodes",
              "steps", "return_stats", "created")


class DatasetError(ValueError):
    """A trajectory file that is missing, damaged or inconsistent; the message names the file."""


@dataclass(frozen=True)
class EpisodeSteps:
    """One episode's slices of a :class:`Trajectories` (views, not copies)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    returns_to_go: np.ndarray
    timesteps: np.ndarray
    episode_return: float
    terminated: bool
    truncated: bool
    mission: str
    level_seed: int = UNRECORDED
    level_index: int = UNRECORDED


@dataclass
class Trajectories:
    """A trajectory dataset in memory: the arrays of the file format plus its metadata dict."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    returns_to_go: np.ndarray
    timesteps: np.ndarray
    episode_starts: np.ndarray
    episode_lengths: np.ndarray
    episode_returns: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    missions: np.ndarray
    metadata: dict = field(default_factory=dict)
    level_seeds: Optional[np.ndarray] = None  # None: every episode's level unrecorded (-1)
    level_indices: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        for name in LEVEL_ARRAYS:
            if getattr(self, name) is None:
                setattr(self, name, np.full(len(self.episode_lengths), UNRECORDED, np.int64))

    @property
    def num_episodes(self) -> int:
        """Number of episodes E."""
        return len(self.episode_lengths)

    @property
    def num_steps(self) -> int:
        """Number of steps T over all episodes."""
        return len(self.actions)

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""
        return tuple(self.observations.shape[1:])

    def episode(self, i: int) -> EpisodeSteps:
        """The steps of episode ``i`` (negative indices count from the end)."""
        if not -self.num_episodes <= i < self.num_episodes:
            raise IndexError(f"episode {i} out of range for {self.num_episodes} episodes")
        i = i % self.num_episodes
        start = int(self.episode_starts[i])
        part = slice(start, start + int(self.episode_lengths[i]))
        return EpisodeSteps(self.observations[part], self.actions[part], self.rewards[part],
                            self.returns_to_go[part], self.timesteps[part], float(self.episode_returns[i]),
                            bool(self.terminated[i]), bool(self.truncated[i]), str(self.missions[i]),
                            int(self.level_seeds[i]), int(self.level_indices[i]))

    def arrays(self) -> dict[str, np.ndarray]:
        """The data arrays by file name (no metadata, no schema_version)."""
        return {name: getattr(self, name) for name in STEP_ARRAYS + EPISODE_ARRAYS}

    def check(self, source: str = "trajectories") -> None:
        """Raise DatasetError naming ``source`` unless the arrays are consistent with each other."""
        _check(self, source)

    def level_seed_ranges(self) -> Optional[list[list[int]]]:
        """The recorded level seeds as sorted ``[first, last]`` ranges, or None if any episode's is unrecorded."""
        if (self.level_seeds == UNRECORDED).any():
            return None
        return seed_ranges(self.level_seeds)


def seed_ranges(seeds: Sequence[int]) -> list[list[int]]:
    """Distinct seeds as sorted, merged inclusive ``[first, last]`` ranges: [3, 1, 2, 7] → [[1, 3], [7, 7]]."""
    ranges: list[list[int]] = []
    for seed in np.unique(np.asarray(seeds, dtype=np.int64)).tolist():
        if ranges and seed == ranges[-1][1] + 1:
            ranges[-1][1] = seed
        else:
            ranges.append([seed, seed])
    return ranges


def returns_to_go(rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Undiscounted reward sums from each step to its episode's end (episodes stored back to back)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    # suffix[t] = sum of rewards[t:]; an episode's return-to-go is its suffix minus the next episode's
    suffix = np.concatenate([np.cumsum(rewards[::-1])[::-1], [0.0]])
    episode_end = np.repeat(np.cumsum(lengths), lengths)
    return (suffix[:-1] - suffix[episode_end]).astype(np.float32)


def from_episodes(observations: Sequence[np.ndarray], actions: Sequence[np.ndarray],
                  rewards: Sequence[np.ndarray], terminated: Sequence[bool], truncated: Sequence[bool],
                  missions: Sequence[str], metadata: dict, level_seeds: Optional[Sequence[int]] = None,
                  level_indices: Optional[Sequence[int]] = None) -> Trajectories:
    """Build a dataset from per-episode arrays; derives returns-to-go, timesteps, offsets and stats.

    ``level_seeds`` (one per episode) records the seed each episode's env was reset with and
    ``level_indices`` which of that env's levels it was (default 0: its first); without them the
    levels are unrecorded (-1)."""
    lengths = np.array([len(a) for a in actions], dtype=np.int64)
    if len(lengths) == 0:
        raise DatasetError("a trajectory dataset needs at least one episode")
    step_rewards = np.concatenate([np.asarray(r, dtype=np.float32) for r in rewards])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    traj = Trajectories(
        observations=np.concatenate([np.asarray(o, dtype=np.uint8) for o in observations]),
        actions=np.concatenate([np.asarray(a, dtype=np.int64) for a in actions]),
        rewards=step_rewards,
        returns_to_go=returns_to_go(step_rewards, lengths),
        timesteps=np.arange(lengths.sum(), dtype=np.int64) - np.repeat(starts, lengths),
        episode_starts=starts,
        episode_lengths=lengths,
        episode_returns=np.array([np.sum(np.asarray(r, dtype=np.float64)) for r in rewards], dtype=np.float32),
        terminated=np.asarray(terminated, dtype=bool),
        truncated=np.asarray(truncated, dtype=bool),
        missions=np.array(list(missions), dtype=np.str_),
        metadata=dict(metadata),
        level_seeds=None if level_seeds is None else np.asarray(level_seeds, dtype=np.int64),
        level_indices=(None if level_seeds is None else np.zeros(len(lengths), np.int64) if level_indices is None
                       else np.asarray(level_indices, dtype=np.int64)))
    traj.metadata.update(summary_metadata(traj))
    traj.metadata.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    traj.check()
    return traj


def return_stats(traj: Trajectories) -> dict[str, float]:
    """Mean, std, min, max of episode returns and the success rate (terminated with return > 0)."""
    returns = traj.episode_returns.astype(np.float64)
    success = traj.terminated & (traj.episode_returns > 0)
    return {"mean": float(returns.mean()), "std": float(returns.std()), "min": float(returns.min()),
            "max": float(returns.max()), "success_rate": float(success.mean())}


def summary_metadata(traj: Trajectories) -> dict[str, Any]:
    """The metadata entries computed from the arrays (counts, shape, return statistics)."""
    from shardlab.trainers import __version__

    return {"obs_shape": list(traj.obs_shape), "episodes": traj.num_episodes, "steps": traj.num_steps,
            "return_stats": return_stats(traj), "shardlab_version": __version__}


def concat(a: Trajectories, b: Trajectories) -> Trajectories:
    """``a``'s episodes followed by ``b``'s; both must come from the same env and observation mode."""
    for key in _SAME_KEYS:
        if key in a.metadata and key in b.metadata and a.metadata[key] != b.metadata[key]:
            raise DatasetError(f"cannot concatenate datasets with different {key}: "
                               f"{a.metadata[key]!r} vs {b.metadata[key]!r}")
    if a.obs_shape != b.obs_shape:
        raise DatasetError(f"cannot concatenate observations of shape {a.obs_shape} and {b.obs_shape}")
    arrays = {name: np.concatenate([getattr(a, name), getattr(b, name)]) for name in STEP_ARRAYS + EPISODE_ARRAYS}
    arrays["episode_starts"] = np.concatenate([a.episode_starts, b.episode_starts + a.num_steps])
    arrays["missions"] = np.concatenate([a.missions, b.missions]).astype(np.str_)
    # keys describing one collection run move into "parts"; a's created time and shared keys win
    metadata = {key: value for key, value in {**b.metadata, **a.metadata}.items()
                if key not in _PART_KEYS or key == "created"}
    metadata["parts"] = _parts(a.metadata) + _parts(b.metadata)
    metadata["policy"] = " + ".join(dict.fromkeys(p.get("policy", "?") for p in metadata["parts"]))
    metadata["seeds"] = [seed for p in metadata["parts"] for seed in p.get("seeds", [])]
    traj = Trajectories(**arrays, metadata=metadata)
    traj.metadata.update(summary_metadata(traj))
    return traj


def _parts(metadata: dict) -> list[dict]:
    """The collection runs a dataset was made from (itself, unless it was concatenated)."""
    if "parts" in metadata:
        return list(metadata["parts"])
    return [{key: metadata[key] for key in _PART_KEYS if key in metadata}]


def save_trajectories(path: str | os.PathLike, traj: Trajectories, append: bool = False) -> Trajectories:
    """Write ``traj`` atomically; with ``append`` an existing file's episodes come first. Returns what was written."""
    path = os.fspath(path)
    if append and os.path.exists(path):
        traj = concat(load_trajectories(path), traj)
    traj.check(path)
    with atomic_write(path, "wb", make_parents=True) as out:  # a file object, so numpy does not append ".npz"
        np.savez_compressed(out, schema_version=np.int64(SCHEMA_VERSION),
                            metadata=np.array(json.dumps(traj.metadata, sort_keys=True)), **traj.arrays())
    return traj


def load_trajectories(path: str | os.PathLike) -> Trajectories:
    """Read a dataset with ``allow_pickle=False``; every problem is a one-line DatasetError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"dataset {path} not found; make one with `shardlab collect --out {path} ...`")
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle
        raise DatasetError(f"dataset {path} is truncated or corrupt (not a complete .npz zip archive); "
                           "re-collect it")
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            for name in ("schema_version", "metadata"):
                if name not in names:
                    raise DatasetError(f"dataset {path} has no array '{name}'; it is not a shardlab "
                                       f"trajectory file (schema {SCHEMA_VERSION}), re-collect it")
            version = npz["schema_version"]
            if version.shape != () or version.dtype.kind not in "iu" or int(version) not in READABLE_SCHEMAS:
                raise DatasetError(f"dataset {path} has schema_version {version.tolist()!r}; this shardlab "
                                   f"reads versions {', '.join(map(str, READABLE_SCHEMAS))}, re-collect it")
            # schema 1 has no level arrays: its levels load as unrecorded
            wanted = [n for n in STEP_ARRAYS + EPISODE_ARRAYS if int(version) > 1 or n not in LEVEL_ARRAYS]
            for name in wanted:
                if name not in names:
                    raise DatasetError(f"dataset {path} has no array '{name}'; it is not a shardlab "
                                       f"trajectory file (schema {int(version)}), re-collect it")
            arrays = {name: npz[name] for name in wanted}
            metadata_text = npz["metadata"]
    except DatasetError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):  # an object array: refuse rather than unpickle
            raise DatasetError(f"dataset {path} holds pickled Python objects; shardlab reads plain "
                               "arrays only (allow_pickle=False), re-collect it") from None
        raise DatasetError(f"dataset {path} is truncated or corrupt (ValueError: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); re-collect it") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise DatasetError(f"dataset {path} is truncated or corrupt ({type(exc).__name__}: {detail}); "
                           "re-collect it") from None
    try:
        metadata = json.loads(str(metadata_text))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"dataset {path} has unreadable metadata (not JSON: {exc.msg}); re-collect it") from None
    if not isinstance(metadata, dict):
        raise DatasetError(f"dataset {path} has metadata that is not a JSON object; re-collect it")
    for name, array in arrays.items():
        if array.dtype.kind != _KINDS[name]:
            raise DatasetError(f"dataset {path}: array '{name}' has dtype {array.dtype}, expected "
                               f"{np.dtype(_DTYPES[name]).name if name != 'missions' else 'unicode'}")
        if name != "missions":
            arrays[name] = array.astype(_DTYPES[name], copy=False)
    traj = Trajectories(**arrays, metadata=metadata)
    traj.check(path)
    return traj


def _check(traj: Trajectories, source: str) -> None:
    """The consistency checks behind :meth:`Trajectories.check`."""
    def fail(message: str) -> None:
        raise DatasetError(f"dataset {source}: {message}")

    for item in fields(traj):
        if item.name != "metadata" and not isinstance(getattr(traj, item.name), np.ndarray):
            fail(f"'{item.name}' must be a numpy array, got {type(getattr(traj, item.name)).__name__}")
    if traj.observations.ndim < 2:
        fail(f"observations must have shape (steps, *obs_shape), got {traj.observations.shape}")
    steps = len(traj.observations)
    for name in STEP_ARRAYS[1:]:
        array = getattr(traj, name)
        if array.shape != (steps,):
            fail(f"inconsistent lengths: '{name}' has shape {array.shape}, expected ({steps},) like observations")
    episodes = len(traj.episode_lengths)
    for name in EPISODE_ARRAYS:
        array = getattr(traj, name)
        if array.shape != (episodes,):
            fail(f"inconsistent lengths: '{name}' has shape {array.shape}, expected ({episodes},) "
                 "like episode_lengths")
    if episodes == 0:
        fail("has no episodes")
    lengths = traj.episode_lengths
    if (lengths < 1).any():
        fail(f"episode {int(np.argmax(lengths < 1))} has length {int(lengths.min())}; lengths must be >= 1")
    if int(lengths.sum()) != steps:
        fail(f"inconsistent lengths: episode_lengths sum to {int(lengths.sum())} but there are {steps} steps")
    expected_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    if not np.array_equal(traj.episode_starts, expected_starts):
        bad = int(np.argmax(traj.episode_starts != expected_starts))
        fail(f"inconsistent lengths: episode {bad} starts at {int(traj.episode_starts[bad])}, "
             f"expected {int(expected_starts[bad])} (episodes are stored back to back)")
    if not np.array_equal(traj.timesteps, np.arange(steps) - np.repeat(expected_starts, lengths)):
        fail("timesteps must count 0, 1, ... within each episode")
    if not np.allclose(traj.returns_to_go, returns_to_go(traj.rewards, lengths), atol=1e-4):
        fail("returns_to_go do not match the rewards (undiscounted suffix sums per episode)")
    sums = np.add.reduceat(traj.rewards.astype(np.float64), expected_starts)
    if not np.allclose(traj.episode_returns, sums, atol=1e-4):
        fail("episode_returns do not match the sums of the episodes' rewards")
    shape = traj.metadata.get("obs_shape")
    if shape is not None and tuple(shape) != traj.obs_shape:
        fail(f"metadata obs_shape {tuple(shape)} does not match observations {traj.obs_shape}")
    unrecorded = traj.level_seeds == UNRECORDED
    if (traj.level_seeds < UNRECORDED).any() or (traj.level_indices < UNRECORDED).any():
        fail("level_seeds and level_indices must be >= 0 (or -1: not recorded)")
    if not np.array_equal(unrecorded, traj.level_indices == UNRECORDED):
        fail("level_seeds and level_indices must be recorded (>= 0) for the same episodes")
