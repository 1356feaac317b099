"""Trajectory dataset format: returns-to-go, round trips, atomic appends and every DatasetError."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from shardlab.trainers.trajectories import (LEVEL_ARRAYS, SCHEMA_VERSION, DatasetError, Trajectories, concat,
                                            from_episodes, load_trajectories, returns_to_go, save_trajectories,
                                            seed_ranges)

META = {"env_id": "MiniGrid-Empty-5x5-v0", "obs": "image", "num_actions": 7, "policy": "test", "seeds": [0]}


def make(episodes: list[list[float]], seed: int = 0, policy: str = "test", obs_shape=(7, 7, 3),
         level_seeds=None) -> Trajectories:
    """A dataset whose episodes have the given reward sequences and random observations/actions
    (levels: ``level_seeds``, default seed, seed + 1, …)."""
    rng = np.random.default_rng(seed)
    return from_episodes(
        observations=[rng.integers(0, 11, size=(len(r), *obs_shape), dtype=np.uint8) for r in episodes],
        actions=[rng.integers(0, 7, size=len(r)) for r in episodes],
        rewards=[np.array(r, dtype=np.float32) for r in episodes],
        terminated=[r[-1] > 0 for r in episodes], truncated=[r[-1] == 0 for r in episodes],
        missions=[f"mission {i}" for i in range(len(episodes))],
        metadata={**META, "policy": policy, "seeds": [seed]},
        level_seeds=list(range(seed, seed + len(episodes))) if level_seeds is None else level_seeds)


def test_returns_to_go_match_hand_computation():
    traj = make([[0, 0, 0.8], [0, 0], [0.5, 0, 0.25, 0]])
    # episode 0: 0.8, 0.8, 0.8; episode 1: 0, 0; episode 2: 0.75, 0.25, 0.25, 0
    np.testing.assert_allclose(traj.returns_to_go, [0.8, 0.8, 0.8, 0, 0, 0.75, 0.25, 0.25, 0], atol=1e-7)
    np.testing.assert_array_equal(traj.timesteps, [0, 1, 2, 0, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(traj.episode_starts, [0, 3, 5])
    np.testing.assert_allclose(traj.episode_returns, [0.8, 0, 0.75], atol=1e-7)
    assert traj.returns_to_go.dtype == np.float32 and traj.timesteps.dtype == np.int64
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2, 3]), np.array([1, 2])), [1, 5, 3])


def test_episode_slices_and_metadata():
    traj = make([[0, 1.0], [0, 0, 0]])
    assert traj.num_episodes == 2 and traj.num_steps == 5 and traj.obs_shape == (7, 7, 3)
    second = traj.episode(1)
    np.testing.assert_array_equal(second.observations, traj.observations[2:5])
    assert second.mission == "mission 1" and second.truncated and not second.terminated
    assert traj.episode(-1).episode_return == second.episode_return
    with pytest.raises(IndexError):
        traj.episode(2)
    stats = traj.metadata["return_stats"]
    assert stats == {"mean": 0.5, "std": 0.5, "min": 0.0, "max": 1.0, "success_rate": 0.5}
    assert traj.metadata["episodes"] == 2 and traj.metadata["steps"] == 5
    assert traj.metadata["obs_shape"] == [7, 7, 3]


def test_save_load_round_trip(tmp_path):
    traj = make([[0, 0, 0.9], [0.0] * 4, [0.3]])
    path = tmp_path / "sub" / "data.npz"
    save_trajectories(path, traj)
    assert sorted(os.listdir(path.parent)) == ["data.npz"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    loaded = load_trajectories(path)
    for name, array in traj.arrays().items():
        np.testing.assert_array_equal(getattr(loaded, name), array)
        assert getattr(loaded, name).dtype == array.dtype, name
    assert loaded.metadata == json.loads(json.dumps(traj.metadata))
    with np.load(path, allow_pickle=False) as raw:  # the documented raw layout
        assert int(raw["schema_version"]) == SCHEMA_VERSION and raw["schema_version"].dtype == np.int64
        assert json.loads(str(raw["metadata"]))["env_id"] == META["env_id"]
        assert raw["missions"].dtype.kind == "U"


def test_concat_and_append(tmp_path):
    a, b = make([[0, 1.0]], seed=1, policy="bot"), make([[0, 0, 0], [0.5]], seed=2, policy="random")
    both = concat(a, b)
    assert both.num_episodes == 3 and both.num_steps == 6
    np.testing.assert_array_equal(both.episode_starts, [0, 2, 5])
    np.testing.assert_array_equal(both.episode(1).observations, b.episode(0).observations)
    assert both.metadata["policy"] == "bot + random" and both.metadata["seeds"] == [1, 2]
    assert [part["policy"] for part in both.metadata["parts"]] == ["bot", "random"]
    path = tmp_path / "data.npz"
    save_trajectories(path, a, append=True)  # appending to nothing creates the file
    save_trajectories(path, b, append=True)
    loaded = load_trajectories(path)
    np.testing.assert_array_equal(loaded.actions, both.actions)
    assert loaded.metadata["episodes"] == 3 and len(loaded.metadata["parts"]) == 2
    with pytest.raises(DatasetError, match="different env_id"):
        concat(a, Trajectories(**b.arrays(), metadata={**b.metadata, "env_id": "MiniGrid-DoorKey-5x5-v0"}))


def test_append_is_atomic(tmp_path, monkeypatch):
    """A crash while writing the appended file leaves the old file intact and no temp file."""
    path = tmp_path / "data.npz"
    save_trajectories(path, make([[0, 1.0]]))
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        save_trajectories(path, make([[0.5]], seed=3), append=True)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["data.npz"]
    assert load_trajectories(path).num_episodes == 1


def _rewrite(path, **changes) -> None:
    """Rewrite a saved dataset with some arrays replaced (None drops one)."""
    with np.load(path, allow_pickle=False) as raw:
        arrays = {name: raw[name] for name in raw.files}
    for name, value in changes.items():
        if value is None:
            del arrays[name]
        else:
            arrays[name] = value
    with open(path, "wb") as out:
        np.savez_compressed(out, **arrays)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "data.npz"
    save_trajectories(path, make([[0, 0, 1.0], [0, 0.5]]))
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nope\.npz not found; make one with `shardlab collect"):
        load_trajectories(tmp_path / "nope.npz")


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_truncated_file(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(DatasetError, match=r"data\.npz is truncated or corrupt"):
        load_trajectories(saved)


def test_corrupt_member(saved):
    """Flipped bytes inside a compressed array fail on read (CRC or zlib), not later."""
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("observations.npy")
    data = bytearray(saved.read_bytes())
    middle = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[middle:middle + 8] = bytes(255 - b for b in data[middle:middle + 8])
    saved.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load_trajectories(saved)


def test_not_a_zip(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("hello")
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load_trajectories(path)


def test_missing_array(saved):
    _rewrite(saved, returns_to_go=None)
    with pytest.raises(DatasetError, match="has no array 'returns_to_go'"):
        load_trajectories(saved)


def test_wrong_schema_version(saved):
    _rewrite(saved, schema_version=np.int64(3))
    with pytest.raises(DatasetError, match="schema_version 3; this shardlab reads versions 1, 2"):
        load_trajectories(saved)


def test_level_seeds_round_trip_concat_and_ranges(tmp_path):
    a = make([[0, 1.0], [0.5]], seed=5)
    b = from_episodes([np.zeros((1, 7, 7, 3), np.uint8)] * 3, [[0]] * 3, [[0.0]] * 3, [True] * 3, [False] * 3,
                      ["m"] * 3, META, level_seeds=[9, 9, 2], level_indices=[0, 1, 0])
    both = concat(a, b)
    assert both.level_seeds.tolist() == [5, 6, 9, 9, 2] and both.level_indices.tolist() == [0, 0, 0, 1, 0]
    assert both.level_seed_ranges() == [[2, 2], [5, 6], [9, 9]]
    assert (both.episode(3).level_seed, both.episode(3).level_index) == (9, 1)
    save_trajectories(tmp_path / "d.npz", both)
    loaded = load_trajectories(tmp_path / "d.npz")
    assert loaded.level_seeds.tolist() == [5, 6, 9, 9, 2] and loaded.level_indices.tolist() == [0, 0, 0, 1, 0]
    assert seed_ranges([3, 1, 2, 7, 3]) == [[1, 3], [7, 7]] and seed_ranges([]) == []


def test_levels_not_given_are_unrecorded_and_concat_keeps_that():
    unrecorded = from_episodes([np.zeros((1, 7, 7, 3), np.uint8)], [[0]], [[0.0]], [True], [False], ["m"], META)
    assert unrecorded.level_seeds.tolist() == [-1] and unrecorded.level_seed_ranges() is None
    assert concat(make([[1.0]]), unrecorded).level_seed_ranges() is None  # one unknown level: the set is unknown


def test_schema_1_file_still_loads_with_unrecorded_levels(saved):
    """A dataset written before levels were recorded (schema 1: no level arrays) still loads."""
    _rewrite(saved, schema_version=np.int64(1), **{name: None for name in LEVEL_ARRAYS})
    data = load_trajectories(saved)
    assert data.num_episodes == 2 and data.level_seeds.tolist() == [-1, -1] and data.level_seed_ranges() is None
    _rewrite(saved, schema_version=np.int64(2))  # a schema-2 file must have them
    with pytest.raises(DatasetError, match="has no array 'level_seeds'"):
        load_trajectories(saved)


@pytest.mark.parametrize("name, value, message", [
    ("actions", np.zeros(4, np.int64), r"'actions' has shape \(4,\), expected \(5,\)"),
    ("missions", np.array(["a"]), r"'missions' has shape \(1,\), expected \(2,\)"),
    ("episode_lengths", np.array([2, 2], np.int64), "episode_lengths sum to 4 but there are 5 steps"),
    ("episode_starts", np.array([0, 2], np.int64), "episode 1 starts at 2, expected 3"),
    ("timesteps", np.arange(5, dtype=np.int64), "timesteps must count"),
    ("returns_to_go", np.zeros(5, np.float32), "returns_to_go do not match"),
    ("episode_returns", np.zeros(2, np.float32), "episode_returns do not match"),
    ("observations", np.zeros((5, 7, 7, 3), np.float32), "'observations' has dtype float32, expected uint8"),
    ("observations", np.zeros((5, 7, 7, 2), np.uint8), "metadata obs_shape"),
    ("level_seeds", np.array([0], np.int64), r"'level_seeds' has shape \(1,\), expected \(2,\)"),
    ("level_seeds", np.array([-3, 0], np.int64), "must be >= 0"),
    ("level_seeds", np.array([-1, 1], np.int64), "recorded .* for the same episodes"),
    ("level_indices", np.array([0.0, 1.0]), "'level_indices' has dtype float64"),
])
def test_inconsistent_arrays(saved, name, value, message):
    _rewrite(saved, **{name: value})
    with pytest.raises(DatasetError, match=message) as info:
        load_trajectories(saved)
    assert "\n" not in str(info.value) and "data.npz" in str(info.value)


def test_bad_metadata(saved):
    _rewrite(saved, metadata=np.array("{not json"))
    with pytest.raises(DatasetError, match="unreadable metadata"):
        load_trajectories(saved)


def test_pickled_arrays_are_refused(saved):
    _rewrite(saved, missions=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DatasetError, match="holds pickled Python objects"):
        load_trajectories(saved)
