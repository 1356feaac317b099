"""The torch-native maze (envs/maze_native.py) against procgen's: the same steps, rewards, dones,
episode records and grid observations from the same states, mazes of the same distribution, and
the config behaviour of the procgen-backed MazeEnv.

Squares are (x, y) in inner-maze coordinates: x the column from the left, y the row from the bottom.
Actions: LEFT 1, DOWN 3, noop 4, UP 5, RIGHT 7.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from scipy import stats

from shardlab.envs import maze_generate, maze_geometry, maze_views
from shardlab.envs import maze_state as ms
from shardlab.envs.batched import BatchedEnv
from shardlab.envs.maze import MazeEnv, MazeEnvConfig, cheese_candidates, make
from shardlab.envs.maze_config import WORLD_DIM
from shardlab.envs.maze_native import (TIMEOUT, NativeMazeEnv, cur_time, generate_mazes, inner_grid,
                                       with_cur_time)

pytestmark = pytest.mark.usefixtures("one_thread")

LEFT, DOWN, NOOP, UP, RIGHT = 1, 3, 4, 5, 7
MOVES = {RIGHT: (1, 0), LEFT: (-1, 0), UP: (0, 1), DOWN: (0, -1)}
REPLAY_ENVS, REPLAY_STEPS, NATURAL_ENVS = 16, TIMEOUT, 3
DISTRIBUTION_SAMPLES = 2048  # per mode and source; scripts/benchmarks/maze_native_distribution.py runs 10k+
P_MIN = 1e-3


def grid_cfg(**overrides) -> MazeEnvConfig:
    """A grid-observation config with the cheese anywhere, ``overrides`` applied."""
    return MazeEnvConfig(**{"num_envs": 4, "distribution_mode": "hard", "rand_region": None, "obs": "grid",
                            **overrides})


def procgen_states(mode: str, count: int, seed: int = 0) -> list[bytes]:
    """``count`` start states of fresh procgen levels (64 envs, each forced to a new level per step)."""
    env = MazeEnv(grid_cfg(num_envs=64, distribution_mode=mode, seed=seed))
    states: list[bytes] = []
    try:
        while len(states) < count:
            states += [env.get_state(i) for i in range(env.num_envs)]
            env._env.act(np.full(env.num_envs, -1, np.int32))  # action -1: procgen resets to a new level
    finally:
        env.close()
    return states[:count]


@pytest.fixture(scope="module")
def procgen_mazes() -> dict[str, list[bytes]]:
    """Procgen start states per mode, the reference sample and the replay's supply of levels."""
    return {mode: procgen_states(mode, DISTRIBUTION_SAMPLES, seed=11) for mode in ("easy", "hard")}


def near_cheese(state: bytes, rng: np.random.Generator) -> bytes:
    """``state`` with the mouse a few squares from the cheese and its step counter within 30
    steps of the timeout: a short episode that may end either way."""
    where = ms.layout(state)
    inner, cheese = ms.inner_grid(state, where), ms.cheese_square(state, where)
    dist = maze_geometry.distances_from(inner, cheese)
    ys, xs = np.nonzero((dist >= 1) & (dist <= 6))
    pick = rng.integers(len(xs))
    state = ms.with_mouse_at(state, (int(xs[pick]), int(ys[pick])), where)
    return with_cur_time(state, TIMEOUT - int(rng.integers(1, 30)))


def far_cheese(states: list[bytes], count: int) -> list[bytes]:
    """The first ``count`` unedited states whose cheese is 30+ squares from the start, where a
    random walk nearly always runs into the 500-step timeout."""
    far = [s for s in states if maze_geometry.distances_from(ms.inner_grid(s), ms.cheese_square(s))[0, 0] >= 30]
    return far[:count]


# -- exact dynamics -------------------------------------------------------------------------
@dataclass
class Replay:
    """What a lock-step replay of both backends compared, and where they differed."""

    steps: int = 0
    mouse_checks: int = 0
    episodes: list = field(default_factory=list)
    obs_rows: int = 0
    byte_obs_rows: int = 0
    mismatches: list = field(default_factory=list)
    timeouts_at_500: int = 0  # episodes that ran from cur_time 0 to the timeout


def replay(states: list[bytes], steps: int, device: str = "cpu", seed: int = 0) -> Replay:
    """Play procgen's MazeEnv and the native env in lock step from the same states with the same
    random actions. The first ``NATURAL_ENVS`` envs start from unedited far-cheese states (whole
    500-step episodes), the rest, and every env that finishes, from a :func:`near_cheese` state,
    the same in both backends, so that every episode starts identical."""
    rng = np.random.default_rng(seed)
    supply = (near_cheese(state, rng) for state in states[REPLAY_ENVS:])
    cfg = grid_cfg(num_envs=REPLAY_ENVS, seed=seed)
    proc, native = MazeEnv(cfg), NativeMazeEnv(cfg, device=device)
    out = Replay()
    try:
        first = far_cheese(states, NATURAL_ENVS) + [next(supply) for _ in range(REPLAY_ENVS - NATURAL_ENVS)]
        obs_p, obs_n = proc.load_states(first), native.load_states(first)
        if not torch.equal(obs_n.cpu(), torch.from_numpy(maze_views.grid_observations(first))):
            out.mismatches.append("load_states obs differ from grid_observations")
        fresh = np.ones(REPLAY_ENVS, bool)  # the env's episode began at cur_time 0
        actions_rng = torch.Generator().manual_seed(seed)
        for t in range(steps):
            actions = torch.randint(0, 15, (REPLAY_ENVS,), generator=actions_rng)
            obs_p, reward_p, done_p, finished_p = proc.step(actions)
            obs_n, reward_n, done_n, finished_n = native.step(actions.to(device))
            out.steps += 1
            if not (torch.equal(reward_p, reward_n.cpu()) and torch.equal(done_p, done_n.cpu())):
                out.mismatches.append(f"step {t}: reward/done {reward_p}, {done_p} vs {reward_n}, {done_n}")
            if finished_p != finished_n:
                out.mismatches.append(f"step {t}: episodes {finished_p} vs {finished_n}")
            out.episodes += finished_n
            done = done_p.numpy()
            out.timeouts_at_500 += sum(1 for i, e in zip(np.flatnonzero(done), finished_n)
                                       if fresh[i] and e.length == TIMEOUT and not e.reached_cheese)
            # the mouse and step counter from procgen's own bytes, not MazeEnv's tracked copy
            live = np.flatnonzero(~done)
            proc_states = [proc.get_state(int(i)) for i in live]
            mice, times = native.mouse_squares, native.cur_times.tolist()
            for i, state in zip(live, proc_states):
                out.mouse_checks += 1
                if ms.mouse_square(state) != mice[i] or cur_time(state) != times[i]:
                    out.mismatches.append(f"step {t} env {i}: procgen mouse {ms.mouse_square(state)} "
                                          f"t={cur_time(state)}, native {mice[i]} t={times[i]}")
            # done rows show each backend's own fresh maze; the others must agree
            if not torch.equal(obs_p[live], obs_n.cpu()[live]):
                out.mismatches.append(f"step {t}: observations differ")
            out.obs_rows += len(live)
            if t % 16 == 0 and len(live):
                from_bytes = torch.from_numpy(maze_views.grid_observations(proc_states))
                out.byte_obs_rows += len(live)
                if not torch.equal(from_bytes, obs_n.cpu()[live]):
                    out.mismatches.append(f"step {t}: observations differ from procgen's state bytes")
            for i in np.flatnonzero(done):
                state = next(supply)
                proc.set_state(int(i), state)
                native.set_state(int(i), state)
                fresh[i] = cur_time(state) == 0
    finally:
        proc.close()
        native.close()
    return out


@pytest.fixture(scope="module")
def replay_hard(procgen_mazes) -> Replay:
    """The lock-step replay of both backends on procgen's hard-mode levels, run once for the module."""
    return replay(procgen_mazes["hard"], REPLAY_STEPS)


def test_cur_time_reader_matches_procgen_steps():
    """cur_time reads procgen's step counter after k steps, and with_cur_time writes it."""
    env = MazeEnv(grid_cfg(num_envs=2))
    try:
        assert cur_time(env.get_state(0)) == 0
        for _ in range(7):
            env.step(torch.tensor([NOOP, NOOP]))
        assert cur_time(env.get_state(0)) == 7
        assert cur_time(with_cur_time(env.get_state(0), 321)) == 321
    finally:
        env.close()


def test_native_steps_exactly_like_procgen(replay_hard):
    """Same mouse squares (from procgen's bytes), rewards, dones and Episode records, step by step."""
    r = replay_hard
    assert r.mismatches == []
    assert r.steps == REPLAY_STEPS and r.mouse_checks > 0.9 * REPLAY_STEPS * REPLAY_ENVS
    assert len(r.episodes) >= 300, len(r.episodes)
    cheese = sum(e.reached_cheese for e in r.episodes)
    timeouts = len(r.episodes) - cheese
    assert cheese >= 50 and timeouts >= 50, (cheese, timeouts)
    assert r.timeouts_at_500 >= 2  # whole 500-step episodes from procgen's unedited start states
    assert any(e.reached_corner for e in r.episodes)
    assert {e.ret for e in r.episodes} == {0.0, 10.0}


# -- observations ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["easy", "hard"])
def test_loaded_observations_equal_grid_observations(procgen_mazes, mode):
    """Loaded states render like maze_views.grid_observations, edited ones (no cheese, moved
    mouse and cheese) included."""
    states = list(procgen_mazes[mode][:32])
    states[1] = ms.without_cheese(states[1])
    inner = ms.inner_grid(states[2])
    far = maze_geometry.corner(inner)
    states[2] = ms.with_mouse_at(ms.with_cheese_at(states[2], (0, 0)), far)
    env = NativeMazeEnv(grid_cfg(num_envs=32, distribution_mode=mode))
    obs = env.load_states(states)
    assert obs.dtype == torch.uint8 and obs.shape == (32, WORLD_DIM[mode], WORLD_DIM[mode], 3)
    assert torch.equal(obs, torch.from_numpy(maze_views.grid_observations(states)))
    assert env.cheese_squares[1] is None and env.cheese_squares[2] == (0, 0) and env.mouse_squares[2] == far
    assert env.cheese_squares[0] == ms.cheese_square(states[0])
    assert env.maze_dims.tolist() == [ms.layout(s).maze_dim for s in states]


def test_observations_equal_procgen_along_the_replay(replay_hard):
    """Every not-done row of every step equals MazeEnv's grid view, and sampled steps equal the
    grid view of procgen's own state bytes (the replay records mismatches of both)."""
    assert replay_hard.mismatches == []
    assert replay_hard.obs_rows > 0.9 * REPLAY_STEPS * REPLAY_ENVS
    assert replay_hard.byte_obs_rows > 0.9 * REPLAY_STEPS * REPLAY_ENVS / 16


def test_fresh_mazes_render_like_grid_view():
    """Fresh native mazes render like maze_views.grid_view of the env's walls, mouse and cheese."""
    env = NativeMazeEnv(grid_cfg(num_envs=8, distribution_mode="easy"))
    obs = env.reset()
    walls = env.walls.numpy()
    margin = (env.world_dim - env.maze_dims)[:, None] // 2
    mouse = np.array(env.mouse_squares) + margin
    cheese = np.array(env.cheese_squares) + margin
    assert torch.equal(obs, torch.from_numpy(maze_views.grid_view(walls, mouse, cheese)))
    assert env.mouse_squares == [(0, 0)] * 8


# -- maze distribution ----------------------------------------------------------------------
def maze_stats(inner: np.ndarray, cheese: tuple[int, int]) -> tuple[int, int, int, int, int]:
    """(size, path start→corner, path start→cheese, dead ends, has a decision square) of one maze."""
    size = inner.shape[0]
    dist = maze_geometry.distances_from(inner, maze_geometry.START)
    decision = maze_geometry.decision_square(inner, cheese) is not None
    return size, int(dist[-1, -1]), int(dist[cheese[1], cheese[0]]), dead_ends(inner), int(decision)


STAT_NAMES = ("size", "corner_path", "cheese_path", "dead_ends", "decision_square")


def stats_of_states(states: list[bytes]) -> np.ndarray:
    """maze_stats of procgen states, one row per state."""
    return np.array([maze_stats(ms.inner_grid(s), ms.cheese_square(s)) for s in states])


def stats_of_batch(walls: torch.Tensor, cheese: torch.Tensor, dims: torch.Tensor) -> np.ndarray:
    """maze_stats of native mazes, one row per maze."""
    rows = []
    for w, c, d in zip(walls, cheese, dims.tolist()):
        inner = inner_grid(w, c, d)
        ys, xs = np.nonzero(inner == ms.CHEESE)
        rows.append(maze_stats(inner, (int(xs[0]), int(ys[0]))))
    return np.array(rows)


def chi2_p(a: np.ndarray, b: np.ndarray, min_count: int = 20) -> float:
    """Chi-square test that two samples of a discrete statistic share a distribution (adjacent
    values pooled until each bin holds ``min_count``, so the expected counts are large enough)."""
    values = np.union1d(a, b)
    counts = np.array([[np.sum(a == v), np.sum(b == v)] for v in values])
    bins, current = [], np.zeros(2, int)
    for row in counts:
        current = current + row
        if current.sum() >= min_count:
            bins.append(current)
            current = np.zeros(2, int)
    if current.sum():
        if bins:
            bins[-1] = bins[-1] + current
        else:
            bins.append(current)
    if len(bins) < 2:
        return 1.0
    return float(stats.chi2_contingency(np.array(bins).T)[1])


def compare(reference: np.ndarray, sample: np.ndarray) -> dict[str, float]:
    """Smallest p-value per statistic over a chi-square test and (for the counts) a two-sample KS."""
    out = {}
    for k, name in enumerate(STAT_NAMES):
        p = chi2_p(reference[:, k], sample[:, k])
        if name in ("corner_path", "cheese_path", "dead_ends"):
            p = min(p, float(stats.ks_2samp(reference[:, k], sample[:, k]).pvalue))
        out[name] = p
    return out


def dfs_maze(size: int, rng: np.random.Generator) -> np.ndarray:
    """A depth-first-search (recursive backtracker) maze: a tree, but not procgen's distribution."""
    inner = np.full((size, size), ms.WALL, np.int32)
    cells = (size + 1) // 2
    seen = np.zeros((cells, cells), bool)
    seen[0, 0], inner[0, 0] = True, ms.EMPTY
    stack = [(0, 0)]
    while stack:
        cx, cy = stack[-1]
        options = [(cx + dx, cy + dy) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
                   if 0 <= cx + dx < cells and 0 <= cy + dy < cells and not seen[cy + dy, cx + dx]]
        if not options:
            stack.pop()
            continue
        nx, ny = options[rng.integers(len(options))]
        seen[ny, nx] = True
        inner[cy + ny, cx + nx] = inner[2 * ny, 2 * nx] = ms.EMPTY
        stack.append((nx, ny))
    return inner


def random_cheese(inner: np.ndarray, rng: np.random.Generator, include_start: bool = False) -> tuple[int, int]:
    """A uniform open square, the start excluded unless ``include_start``."""
    ys, xs = np.nonzero(inner != ms.WALL)
    squares = [(int(x), int(y)) for x, y in zip(xs, ys) if include_start or (x, y) != (0, 0)]
    return squares[rng.integers(len(squares))]


@pytest.fixture(scope="module")
def native_samples() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Native mazes per mode, drawn by the generator the env's pool uses."""
    out = {}
    for mode in ("easy", "hard"):
        generator = torch.Generator().manual_seed(5)
        batch = generate_mazes(DISTRIBUTION_SAMPLES, WORLD_DIM[mode], generator)
        out[mode] = (batch.walls, batch.cheese, batch.maze_dim)
    return out


@pytest.fixture(scope="module")
def procgen_stats(procgen_mazes) -> dict[str, np.ndarray]:
    """maze_stats of the procgen sample per mode."""
    return {mode: stats_of_states(states) for mode, states in procgen_mazes.items()}


@pytest.mark.parametrize("mode", ["easy", "hard"])
def test_native_mazes_have_procgens_distribution(procgen_stats, native_samples, mode):
    """Size, path lengths, dead ends and decision squares match procgen's (chi-square and KS, p > 0.001)."""
    p_values = compare(procgen_stats[mode], stats_of_batch(*native_samples[mode]))
    assert min(p_values.values()) > P_MIN, p_values
    # every native maze is a procgen-shaped tree with the cheese on an open square but the start
    walls, cheese, dims = native_samples[mode]
    margins = (WORLD_DIM[mode] - dims) // 2
    for k in range(0, DISTRIBUTION_SAMPLES, 37):
        inner = inner_grid(walls[k], cheese[k], int(dims[k]))
        assert maze_generate.is_on_distribution(inner)
        m, d = int(margins[k]), int(dims[k])
        assert int((~walls[k]).sum()) == int((~walls[k, m:m + d, m:m + d]).sum())  # all wall outside the maze
        assert (inner == ms.CHEESE).sum() == 1 and inner[0, 0] != ms.CHEESE


def dead_ends(inner: np.ndarray) -> int:
    """Open squares with exactly one open neighbour."""
    open_ = np.pad(inner != ms.WALL, 1)
    degree = open_[:-2, 1:-1].astype(int) + open_[2:, 1:-1] + open_[1:-1, :-2] + open_[1:-1, 2:]
    return int((open_[1:-1, 1:-1] & (degree == 1)).sum())


def test_distribution_test_catches_wrong_generators(procgen_stats, native_samples):
    """Negative controls: depth-first-search mazes, and the cheese uniform including the start."""
    rng = np.random.default_rng(0)
    reference = procgen_stats["hard"]
    sizes = 3 + 2 * rng.integers(0, 12, 512)  # a gross difference: a small sample shows it
    dfs = np.array([dead_ends(dfs_maze(int(size), rng)) for size in sizes])
    assert chi2_p(reference[:, 0], sizes) > P_MIN  # the sizes are right; the layouts are not
    assert chi2_p(reference[:, 3], dfs) < P_MIN and stats.ks_2samp(reference[:, 3], dfs).pvalue < P_MIN
    walls, cheese, dims = native_samples["hard"]
    with_start = []
    for w, c, d in zip(walls, cheese, dims.tolist()):
        inner = inner_grid(w, torch.tensor([-1, -1]), d)
        square = random_cheese(inner, rng, include_start=True)
        with_start.append(int(maze_geometry.distances_from(inner, (0, 0))[square[1], square[0]]))
    assert chi2_p(reference[:, 2], np.array(with_start)) < P_MIN


# -- config behaviour -----------------------------------------------------------------------
@pytest.mark.parametrize("region, max_size", [(0, None), (1, 9), (5, 7), (5, None)])
def test_rand_region_places_cheese_uniformly_among_cheese_candidates(region, max_size):
    """rand_region puts the cheese uniformly on MazeEnv's cheese_candidates, small mazes included."""
    env = NativeMazeEnv(grid_cfg(num_envs=512, rand_region=region, max_maze_size=max_size, seed=2))
    env.reset()
    corner_hits, expected, variance = 0, 0.0, 0.0
    for k, square in enumerate(env.cheese_squares):
        inner = env.inner_grid(k)
        candidates = cheese_candidates(inner, region)
        assert square in candidates
        p = 1 / len(candidates)
        corner_hits += square == maze_geometry.corner(inner)
        expected, variance = expected + p, variance + p * (1 - p)
    # the corner is always a candidate: its hit count matches uniform placement
    assert abs(corner_hits - expected) <= 4 * max(variance, 1e-9) ** 0.5, (corner_hits, expected)
    if max_size is not None:
        assert env.maze_dims.max() <= max_size


@pytest.mark.parametrize("low, high, sizes", [(None, 7, [3, 5, 7]), (5, 9, [5, 7, 9]), (13, None, [13, 15]),
                                              (None, 27, list(range(3, 26, 2)))])
def test_maze_sizes_are_uniform_over_the_odd_sizes_in_range(low, high, sizes):
    """min/max_maze_size give sides uniform over the odd sizes in range, capped at the world."""
    mode = "easy" if sizes == [13, 15] else "hard"
    env = NativeMazeEnv(grid_cfg(num_envs=600, min_maze_size=low, max_maze_size=high, distribution_mode=mode))
    env.reset()
    counts = np.array([np.sum(env.maze_dims == s) for s in sizes])
    assert counts.sum() == env.num_envs
    assert stats.chisquare(counts).pvalue > P_MIN, counts
    for k in range(0, env.num_envs, 97):
        assert maze_generate.is_on_distribution(env.inner_grid(k))


def test_cheese_reward_and_end_of_episode_match_procgen(template):
    """A negative cheese_reward is the step's reward and the episode's return, with procgen's done."""
    inner = maze_generate.random_maze(5, np.random.default_rng(1))
    state = ms.with_cheese_at(ms.with_maze(template, inner), (4, 4))
    beside = maze_geometry.shortest_path(inner, (0, 0), (4, 4))[-2]
    state = ms.with_mouse_at(state, beside)
    dx, dy = 4 - beside[0], 4 - beside[1]
    action = next(a for a, move in MOVES.items() if move == (dx, dy))
    cfg = grid_cfg(num_envs=2, cheese_reward=-2.5)
    results = []
    for env in (MazeEnv(cfg), NativeMazeEnv(cfg)):
        env.load_states([state, state])
        _, reward, done, finished = env.step(torch.tensor([action, NOOP]))
        results.append((reward.tolist(), done.tolist(), finished))
        env.close()
    assert results[0] == results[1]
    reward, done, finished = results[1]
    assert reward == [-2.5, 0.0] and done == [True, False]
    assert finished == [finished[0]] and finished[0].ret == -2.5 and finished[0].reached_cheese
    assert finished[0].reached_corner and finished[0].end_square == (4, 4) and finished[0].length == 1


def test_bad_configs_are_refused():
    """Level seeds and MazeEnv's invalid settings raise ValueError."""
    with pytest.raises(ValueError, match="fresh mazes only"):
        NativeMazeEnv(grid_cfg(num_levels=10))
    for bad in ({"distribution_mode": "memory"}, {"obs": "pixels"}, {"rand_region": -1}, {"max_maze_size": 8},
                {"min_maze_size": 9, "max_maze_size": 7}, {"min_maze_size": 17, "distribution_mode": "easy"}):
        with pytest.raises(ValueError):
            NativeMazeEnv(grid_cfg(**bad))


def test_make_builds_the_configured_backend():
    """envs.maze.make (what trainers and evals call) picks env.backend, on the CPU unless told."""
    native, procgen = make(grid_cfg(backend="native")), make(grid_cfg())
    assert isinstance(native, NativeMazeEnv) and native.device == torch.device("cpu")
    assert isinstance(procgen, MazeEnv)
    procgen.close()
    assert isinstance(make(grid_cfg(backend="native", obs="rgb")), NativeMazeEnv)
    with pytest.raises(ValueError, match="env.backend must be one of procgen, native"):
        make(grid_cfg(backend="gym"))
    with pytest.raises(ValueError, match="procgen maze backend runs on the CPU"):
        make(grid_cfg(), device="cuda")


def test_load_states_refuses_other_modes_and_counts(procgen_mazes):
    """A state of the other mode raises StateError, a wrong count ValueError."""
    env = NativeMazeEnv(grid_cfg(num_envs=2))
    with pytest.raises(ms.StateError, match="same mode"):
        env.load_states(procgen_mazes["easy"][:2])
    with pytest.raises(ValueError, match="one state per env"):
        env.load_states(procgen_mazes["hard"][:3])


def test_done_envs_auto_reset_and_keep_stepping(procgen_mazes):
    """Done envs restart in a fresh maze whose first observation the step returns."""
    states = procgen_mazes["easy"][:3]
    near = ms.with_mouse_at(states[0], maze_geometry.shortest_path(
        ms.inner_grid(states[0]), (0, 0), ms.cheese_square(states[0]))[-2])
    env = NativeMazeEnv(grid_cfg(num_envs=3, distribution_mode="easy"))
    assert isinstance(env, BatchedEnv)
    env.load_states([near, with_cur_time(states[1], TIMEOUT - 1), states[2]])
    cheese_step = next(a for a, m in MOVES.items()
                       if np.add(env.mouse_squares[0], m).tolist() == list(ms.cheese_square(states[0])))
    obs, reward, done, finished = env.step(torch.tensor([cheese_step, NOOP, NOOP]))
    assert done.tolist() == [True, True, False] and reward.tolist() == [10.0, 0.0, 0.0]
    assert [e.reached_cheese for e in finished] == [True, False] and [e.length for e in finished] == [1, 1]
    assert env.mouse_squares[:2] == [(0, 0), (0, 0)] and env.cur_times.tolist() == [0, 0, 1]
    # the returned rows are the new episodes' first observations
    margin = (env.world_dim - env.maze_dims)[:, None] // 2
    cheese = np.array(env.cheese_squares) + margin
    expected = maze_views.grid_view(env.walls.numpy(), np.array(env.mouse_squares) + margin, cheese)
    assert torch.equal(obs, torch.from_numpy(expected))
    # and the new episodes run on with fresh counters
    for _ in range(3):
        _, _, done, _ = env.step(torch.tensor([NOOP, NOOP, NOOP]))
        assert not done.any()
    assert env.cur_times.tolist() == [3, 3, 4]


def test_each_step_returns_a_fresh_observation():
    """Every step returns a new tensor that later steps leave alone."""
    env = NativeMazeEnv(grid_cfg(num_envs=4))
    first = env.reset()
    kept = first.clone()
    second, *_ = env.step(torch.full((4,), RIGHT))
    third, *_ = env.step(torch.full((4,), UP))
    assert torch.equal(first, kept)
    assert len({first.data_ptr(), second.data_ptr(), third.data_ptr()}) == 3
    second.zero_()
    assert env.step(torch.full((4,), NOOP))[0][..., 0].any()  # the env's own walls are untouched


def test_rng_state_round_trip_reproduces_the_mazes():
    """rng_state (JSON-safe) restores the same maze stream, across pool refills and envs."""
    cfg = grid_cfg(num_envs=64, distribution_mode="easy", seed=3)
    env = NativeMazeEnv(cfg)
    env.reset()
    saved = json.loads(json.dumps(env.rng_state()))  # checkpoints store it as JSON
    # 12 resets of 64 cross a pool refill (512 mazes)
    draws = [env.reset() for _ in range(12)]
    env.set_rng_state(saved)
    assert all(torch.equal(env.reset(), before) for before in draws)
    other = NativeMazeEnv(grid_cfg(num_envs=64, distribution_mode="easy", seed=99))
    other.set_rng_state(saved)
    assert torch.equal(other.reset(), draws[0])
    fresh = NativeMazeEnv(cfg)
    fresh.set_rng_state(fresh.rng_state())  # before any maze: restores the seed's stream
    assert torch.equal(fresh.reset(), NativeMazeEnv(cfg).reset())


def test_seeds_and_ranks_give_different_mazes():
    """The same seed gives the same mazes; another seed or rank others."""
    cfg = grid_cfg(num_envs=8, distribution_mode="easy")
    a = NativeMazeEnv(cfg).reset()
    assert torch.equal(a, NativeMazeEnv(cfg).reset())
    assert not torch.equal(a, NativeMazeEnv(cfg, rank=1).reset())
    assert not torch.equal(a, NativeMazeEnv(grid_cfg(num_envs=8, distribution_mode="easy", seed=1)).reset())


# -- devices --------------------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_replay_on_cuda_matches_procgen(procgen_mazes):
    """The lock-step replay against procgen also holds on a CUDA device."""
    r = replay(procgen_mazes["hard"], 200, device="cuda", seed=1)
    assert r.mismatches == [] and len(r.episodes) >= 50
