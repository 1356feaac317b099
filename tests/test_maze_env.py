"""The procgen maze wrapper: cheese placement in the top-right region, read back from procgen's own
state bytes; rendering after set_state; per-episode statistics; maze_state errors and round trips.

Squares are (x, y) in inner-maze coordinates: x the column from the left, y the row from the bottom.
Actions: LEFT 1, DOWN 3, noop 4, UP 5, RIGHT 7.
"""

from __future__ import annotations

import re
import warnings
from collections import deque

import numpy as np
import pytest
import torch

from shardlab.envs import maze_state as ms
from shardlab.envs.maze import MazeEnv, MazeEnvConfig, cheese_candidates

pytestmark = pytest.mark.usefixtures("one_thread")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from procgen import ProcgenGym3Env

LEFT, DOWN, NOOP, UP, RIGHT = 1, 3, 4, 5, 7
MOVES = {RIGHT: (1, 0), LEFT: (-1, 0), UP: (0, 1), DOWN: (0, -1)}


def make_env(num_envs=4, mode="hard", rand_region=5, seed=0) -> MazeEnv:
    return MazeEnv(MazeEnvConfig(num_envs=num_envs, distribution_mode=mode, rand_region=rand_region, seed=seed))


def raw_set_state(env: MazeEnv, index: int, state: bytes) -> None:
    """set_state bypassing any spy installed on the instance."""
    MazeEnv.set_state(env, index, state)


def spy_placements(env: MazeEnv) -> list[tuple[int, bytes, bytes]]:
    """Record (index, state before, state written) for every set_state the env makes itself."""
    calls: list[tuple[int, bytes, bytes]] = []

    def recording_set_state(index: int, state: bytes) -> None:
        calls.append((int(index), env.get_state(index), state))
        raw_set_state(env, index, state)

    env.set_state = recording_set_state
    return calls


def in_region(square, maze_dim: int, region: int) -> bool:
    low = maze_dim - min(max(region, 1), maze_dim)
    return square[0] >= low and square[1] >= low


def open_region_cells(inner: np.ndarray, region: int) -> set[tuple[int, int]]:
    """Independent reference for cheese_candidates: loop over every square."""
    d = inner.shape[0]
    return {(x, y) for y in range(d) for x in range(d)
            if in_region((x, y), d, region) and inner[y, x] != ms.WALL and (x, y) != (0, 0)}


def check_placement(before: bytes, after: bytes, region: int) -> tuple[int, int]:
    """The edit one placement made: only the grid changed, walls intact, one cheese, in region."""
    assert len(before) == len(after)
    where = ms.layout(before)
    assert ms.layout(after) == where
    grid_end = where.grid_offset + 4 * where.world_dim ** 2
    assert before[:where.grid_offset] == after[:where.grid_offset], "placement touched non-grid bytes"
    assert before[grid_end:] == after[grid_end:], "placement touched non-grid bytes"
    g_before, g_after = ms.grid(before, where), ms.grid(after, where)
    np.testing.assert_array_equal(g_before == ms.WALL, g_after == ms.WALL)  # no wall added or removed
    assert int((g_after == ms.CHEESE).sum()) == 1, "exactly one cheese in the whole world grid"
    square = ms.cheese_square(after, where)
    assert square is not None
    x, y = square
    m = where.margin
    assert g_before[m + y, m + x] != ms.WALL, f"cheese put on a wall at {square}"
    assert square != (0, 0)
    assert in_region(square, where.maze_dim, region), (square, where.maze_dim, region)
    return square


def check_start(env: MazeEnv, index: int, region: int) -> tuple[int, int]:
    """The cheese as procgen now holds it for env ``index``."""
    state = env.get_state(index)
    where = ms.layout(state)
    square = ms.cheese_square(state, where)
    assert square is not None
    assert int((ms.grid(state, where) == ms.CHEESE).sum()) == 1
    assert square != (0, 0)
    assert in_region(square, where.maze_dim, region), (square, where.maze_dim, region)
    assert ms.inner_grid(state, where)[square[1], square[0]] == ms.CHEESE
    assert ms.mouse_square(state, where) == (0, 0), "episodes start at the bottom-left square"
    assert env.cheese_squares[index] == square, "env bookkeeping disagrees with procgen state"
    assert env.maze_dims[index] == where.maze_dim
    return square


def step_to_adjacent_cheese(env: MazeEnv) -> tuple[torch.Tensor, list]:
    """Put every env's cheese next to the mouse (at the start square) and step onto it."""
    actions = []
    for i in range(env.num_envs):
        state = env.get_state(i)
        where = ms.layout(state)
        assert ms.mouse_square(state, where) == (0, 0)
        inner = ms.inner_grid(state, where)
        square, action = ((1, 0), RIGHT) if inner[0, 1] != ms.WALL else ((0, 1), UP)
        raw_set_state(env, i, ms.with_cheese_at(state, square, where))
        actions.append(action)
    obs, reward, done, finished = env.step(torch.tensor(actions))
    assert done.all(), "stepping onto the cheese ends the episode"
    assert torch.all(reward == 10.0)
    assert len(finished) == env.num_envs
    for episode in finished:
        assert episode.ret == 10.0 and episode.length == 1 and episode.reached_cheese
        # reached_corner is not checked here: MazeEnv's bookkeeping does not see raw_set_state
        # edits (see test_set_state_updates_episode_bookkeeping)
    return obs, finished


# -- placement ------------------------------------------------------------------------------------

ROUNDS, NUM_ENVS = 12, 16  # (1 reset + 12 auto-resets) × 16 envs = 208 starts per case, 1664 in all


@pytest.mark.parametrize("mode", ["hard", "easy"])
@pytest.mark.parametrize("region", [0, 1, 3, 5])
def test_cheese_always_in_top_right_region(mode, region):
    env = make_env(NUM_ENVS, mode, region, seed=1000 * region + (mode == "easy"))
    calls = spy_placements(env)
    try:
        env.reset()
        starts = 0
        squares = set()
        for round_ in range(ROUNDS + 1):
            assert len(calls) == NUM_ENVS, "one placement per episode start"
            assert sorted(i for i, _, _ in calls) == list(range(NUM_ENVS))
            for index, before, written in calls:
                placed = check_placement(before, written, region)
                assert check_start(env, index, region) == placed
                squares.add(placed)
                starts += 1
            calls.clear()
            if round_ < ROUNDS:
                step_to_adjacent_cheese(env)  # every env auto-resets through MazeEnv.step
        assert starts == NUM_ENVS * (ROUNDS + 1) >= 200
        if region <= 1:
            assert all(x == y for x, y in squares)  # the corner square (d-1, d-1) only
        else:
            assert len(squares) > 1
    finally:
        env.close()


def test_cheese_candidates_on_synthetic_grids():
    open_grid = np.full((3, 3), ms.EMPTY)
    assert cheese_candidates(open_grid, 0) == [(2, 2)]
    assert cheese_candidates(open_grid, 1) == [(2, 2)]
    assert set(cheese_candidates(open_grid, 2)) == {(1, 1), (2, 1), (1, 2), (2, 2)}
    # a region bigger than the maze covers it all, but never the start square (0, 0)
    assert set(cheese_candidates(open_grid, 5)) == {(x, y) for x in range(3) for y in range(3)} - {(0, 0)}
    walled = open_grid.copy()
    walled[1, 2] = ms.WALL  # (x=2, y=1)
    walled[2, 1] = ms.WALL  # (x=1, y=2)
    assert set(cheese_candidates(walled, 2)) == {(1, 1), (2, 2)}
    assert all(isinstance(c, int) for sq in cheese_candidates(walled, 2) for c in sq)


@pytest.mark.parametrize("mode,region", [("hard", 5), ("easy", 3), ("hard", 25)])
def test_placement_hits_every_open_region_cell(mode, region):
    env = make_env(1, mode, None, seed=7)  # procgen's own cheese first, so we hold an untouched state
    try:
        env.reset()
        original = env.get_state(0)
        where = ms.layout(original)
        expected = open_region_cells(ms.inner_grid(original, where), region)
        assert set(cheese_candidates(ms.inner_grid(original, where), region)) == expected
        assert len(expected) >= 1
        env.cfg.rand_region = region  # same env, now placing; reset() runs the placement code path
        counts: dict[tuple[int, int], int] = {}
        samples = 40 * len(expected) + 100
        for _ in range(samples):
            raw_set_state(env, 0, original)
            env.reset()
            square = check_start(env, 0, region)
            counts[square] = counts.get(square, 0) + 1
        assert set(counts) == expected, f"missed {expected - set(counts)}, extra {set(counts) - expected}"
        # roughly uniform: every cell within a generous band around samples / cells
        mean = samples / len(expected)
        assert min(counts.values()) > 0.3 * mean and max(counts.values()) < 2.0 * mean, counts
    finally:
        env.close()


def test_placement_rng_is_seeded_and_restorable():
    def squares(seed):
        env = make_env(8, "hard", 5, seed=seed)
        try:
            env.reset()
            return env.cheese_squares, env.rng_state()
        finally:
            env.close()

    first, _ = squares(3)
    again, _ = squares(3)
    assert first == again
    env = make_env(8, "hard", 5, seed=3)
    try:
        env.reset()
        saved = env.rng_state()
        state0 = env.get_state(0)
        raw_set_state(env, 0, state0)
        env._start_episodes(np.array([0]))
        one = env.cheese_squares[0]
        env.set_rng_state(saved)
        raw_set_state(env, 0, state0)
        env._start_episodes(np.array([0]))
        assert env.cheese_squares[0] == one
    finally:
        env.close()


def test_rand_region_none_keeps_procgen_cheese():
    n, seed = 32, 5
    env = make_env(n, "hard", None, seed=seed)
    calls = spy_placements(env)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = ProcgenGym3Env(num=n, env_name="maze", start_level=0, num_levels=0,
                             distribution_mode="hard", rand_seed=seed)
    try:
        env.reset()
        assert calls == [], "rand_region=None must not edit procgen's state"
        raw_states = raw.callmethod("get_state")
        outside = 0
        for i in range(n):
            state = env.get_state(i)
            assert state == raw_states[i], "the wrapper's level differs from plain procgen's"
            square = ms.cheese_square(state)
            assert env.cheese_squares[i] == square
            outside += not in_region(square, ms.layout(state).maze_dim, 5)
        assert outside > 0, "procgen's own cheese should not be confined to the top-right"
        # auto-resets keep procgen's cheese too
        actions = torch.full((n,), NOOP)
        for _ in range(3):
            for i in range(n):
                state = env.get_state(i)
                inner = ms.inner_grid(state)
                actions[i] = RIGHT if inner[0, 1] != ms.WALL else UP
                raw_set_state(env, i, ms.with_cheese_at(state, (1, 0) if actions[i] == RIGHT else (0, 1)))
            _, _, done, _ = env.step(actions)
            assert done.all()
        assert calls == []
        assert env.cheese_squares == [ms.cheese_square(env.get_state(i)) for i in range(n)]
    finally:
        env.close()
        raw.close()


def test_invalid_env_config():
    with pytest.raises(ValueError, match="rand_region"):
        make_env(1, "hard", -1)
    with pytest.raises(ValueError, match="distribution_mode"):
        make_env(1, "medium", 5)


# -- rendering --------------------------------------------------------------------------------------

def test_set_state_is_reflected_in_next_observation():
    env = make_env(2, "easy", None, seed=21)
    try:
        obs0 = env.reset().clone()
        obs1 = env.step(torch.tensor([NOOP, NOOP]))[0].clone()
        assert torch.equal(obs0, obs1), "a noop step leaves the maze picture unchanged"
        state = env.get_state(0)
        where = ms.layout(state)
        old = ms.cheese_square(state, where)
        inner = ms.inner_grid(state, where)
        d = where.maze_dim
        candidates = [(x, y) for y in range(d) for x in range(d)
                      if inner[y, x] == ms.EMPTY and (x, y) != (0, 0) and abs(x - old[0]) + abs(y - old[1]) > 2]
        new = candidates[len(candidates) // 2]
        env.set_state(0, ms.with_cheese_at(state, new, where))
        obs2 = env.step(torch.tensor([NOOP, NOOP]))[0].clone()
        assert not torch.equal(obs2[0], obs1[0]), "moving the cheese must change env 0's pixels"
        assert torch.equal(obs2[1], obs1[1]), "env 1 was not touched"
        assert ms.cheese_square(env.get_state(0)) == new
        env.set_state(0, ms.with_cheese_at(env.get_state(0), old))
        obs3 = env.step(torch.tensor([NOOP, NOOP]))[0]
        assert torch.equal(obs3, obs1), "moving the cheese back restores the picture"
    finally:
        env.close()


def test_observation_after_auto_reset_shows_placed_cheese():
    """The obs MazeEnv.step returns after an auto-reset is the rendering of the edited state."""
    env = make_env(4, "hard", 3, seed=4)
    viewer = make_env(1, "hard", None, seed=999)
    try:
        env.reset()
        viewer.reset()
        for _ in range(2):
            obs, _ = step_to_adjacent_cheese(env)
            for i in range(env.num_envs):
                state = env.get_state(i)
                check_start(env, i, 3)
                raw_set_state(viewer, 0, state)
                _, rendered, _ = viewer._env.observe()
                np.testing.assert_array_equal(np.asarray(rendered["rgb"])[0], obs[i].numpy())
    finally:
        env.close()
        viewer.close()


def test_reset_observation_shows_placed_cheese():
    env = make_env(3, "easy", 0, seed=8)
    viewer = make_env(1, "easy", None, seed=999)
    try:
        obs = env.reset()
        viewer.reset()
        for i in range(3):
            raw_set_state(viewer, 0, env.get_state(i))
            _, rendered, _ = viewer._env.observe()
            np.testing.assert_array_equal(np.asarray(rendered["rgb"])[0], obs[i].numpy())
    finally:
        env.close()
        viewer.close()


# -- episode statistics -------------------------------------------------------------------------------

def bfs_path(inner: np.ndarray, start, goal) -> list[int]:
    """Actions leading from start to goal over open squares."""
    d = inner.shape[0]
    prev = {start: None}
    queue = deque([start])
    while queue:
        cur = queue.popleft()
        if cur == goal:
            break
        for action, (dx, dy) in MOVES.items():
            nxt = (cur[0] + dx, cur[1] + dy)
            if 0 <= nxt[0] < d and 0 <= nxt[1] < d and inner[nxt[1], nxt[0]] != ms.WALL and nxt not in prev:
                prev[nxt] = (cur, action)
                queue.append(nxt)
    assert goal in prev, "goal not reachable"
    actions = []
    node = goal
    while prev[node] is not None:
        node, action = prev[node]
        actions.append(action)
    return actions[::-1]


def test_episode_stats_when_cheese_reached():
    env = make_env(3, "hard", 5, seed=12)
    try:
        env.reset()
        _, finished = step_to_adjacent_cheese(env)
        assert [e.maze_dim for e in finished] != [] and all(e.maze_dim >= 3 for e in finished)
        # a noop first, then the step onto the cheese: length 2
        for i in range(3):
            state = env.get_state(i)
            inner = ms.inner_grid(state)
            raw_set_state(env, i, ms.with_cheese_at(state, (1, 0) if inner[0, 1] != ms.WALL else (0, 1)))
        _, reward, done, finished = env.step(torch.tensor([NOOP, NOOP, NOOP]))
        assert not done.any() and finished == [] and torch.all(reward == 0)
        actions = [RIGHT if ms.cheese_square(env.get_state(i)) == (1, 0) else UP for i in range(3)]
        _, reward, done, finished = env.step(torch.tensor(actions))
        assert done.all() and torch.all(reward == 10)
        assert [(e.ret, e.length, e.reached_cheese) for e in finished] == [(10.0, 2, True)] * 3
    finally:
        env.close()


def test_set_state_updates_episode_bookkeeping():
    """MazeEnv.set_state is public ("the next observation shows it"), so an episode whose cheese
    was moved with it must be scored against the moved cheese. Here the cheese starts in the
    corner (rand_region=0), is moved next to the mouse and eaten after one step: the mouse never
    went near the corner, so reached_corner must be False and cheese_squares must follow."""
    env = make_env(4, "hard", 0, seed=12)
    try:
        env.reset()
        actions = []
        for i in range(env.num_envs):
            state = env.get_state(i)
            where = ms.layout(state)
            assert env.cheese_squares[i] == (where.maze_dim - 1,) * 2
            square, action = ((1, 0), RIGHT) if ms.inner_grid(state, where)[0, 1] != ms.WALL else ((0, 1), UP)
            env.set_state(i, ms.with_cheese_at(state, square, where))
            actions.append(action)
        stale = [env.cheese_squares[i] != ms.cheese_square(env.get_state(i)) for i in range(env.num_envs)]
        _, reward, done, finished = env.step(torch.tensor(actions))
        assert done.all() and torch.all(reward == 10)
        wrong = [e for e in finished if e.reached_corner]
        assert not any(stale) and not wrong, (
            "BUG envs/maze.py: MazeEnv.set_state does not refresh self._cheese / self._maze_dim, so "
            f"cheese_squares is stale ({sum(stale)} of {env.num_envs} envs) and Episode.reached_corner "
            f"is True for {len(wrong)} one-step episodes that never left the start square")
    finally:
        env.close()


def test_walking_the_maze_to_the_corner_cheese():
    """rand_region=0 puts the cheese in the corner; following a BFS path gets reward 10 on the
    last step, and the episode counts as both cheese and corner."""
    env = make_env(1, "easy", 0, seed=31)
    try:
        env.reset()
        state = env.get_state(0)
        where = ms.layout(state)
        corner = (where.maze_dim - 1,) * 2
        assert ms.cheese_square(state, where) == corner
        path = bfs_path(ms.inner_grid(state, where), (0, 0), corner)
        position = (0, 0)
        for k, action in enumerate(path):
            _, reward, done, finished = env.step(torch.tensor([action]))
            position = (position[0] + MOVES[action][0], position[1] + MOVES[action][1])
            if k < len(path) - 1:
                assert not done[0] and reward[0] == 0
                assert ms.mouse_square(env.get_state(0)) == position, "x right, y up from the bottom"
        assert done[0] and reward[0] == 10
        assert finished == [type(finished[0])(10.0, len(path), True, True, where.maze_dim, corner)]
    finally:
        env.close()


def test_corner_visit_then_cheese_elsewhere():
    env = make_env(1, "easy", 5, seed=32)
    try:
        env.reset()
        state = env.get_state(0)
        where = ms.layout(state)
        inner = ms.inner_grid(state, where)
        corner = (where.maze_dim - 1,) * 2
        to_corner = bfs_path(inner, (0, 0), corner)
        # cheese off the corner path: behind us at the other neighbour of the start, or a dead end
        visited, pos = {(0, 0)}, (0, 0)
        for action in to_corner:
            pos = (pos[0] + MOVES[action][0], pos[1] + MOVES[action][1])
            visited.add(pos)
        d = where.maze_dim
        off_path = [(x, y) for y in range(d) for x in range(d) if inner[y, x] != ms.WALL and (x, y) not in visited]
        assert off_path, "maze has squares off the corner path"
        target = off_path[0]
        raw_set_state(env, 0, ms.with_cheese_at(state, target, where))
        for action in to_corner:
            _, reward, done, _ = env.step(torch.tensor([action]))
            assert not done[0]
        back = bfs_path(inner, corner, target)
        for action in back:
            _, reward, done, finished = env.step(torch.tensor([action]))
        assert done[0] and reward[0] == 10
        assert len(finished) == 1
        e = finished[0]
        assert (e.ret, e.length, e.reached_cheese, e.reached_corner) == (10.0, len(to_corner) + len(back), True, True)
    finally:
        env.close()


def test_timeout_episode_stats():
    env = make_env(2, "easy", 3, seed=2)
    try:
        env.reset()
        finished = []
        for step in range(1, 600):
            _, reward, done, finished = env.step(torch.tensor([NOOP, NOOP]))
            assert torch.all(reward == 0)
            if done.any():
                break
        assert done.all() and step == 500
        assert [(e.ret, e.length, e.reached_cheese, e.reached_corner) for e in finished] == [(0.0, 500, False, False)] * 2
        for i in range(2):
            check_start(env, i, 3)
    finally:
        env.close()


# -- maze_state ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def maze_states():
    env = make_env(6, "hard", None, seed=77)
    env.reset()
    states = [env.get_state(i) for i in range(env.num_envs)]
    env.close()
    return states


def test_with_cheese_at_wall_raises(maze_states):
    state = maze_states[0]
    where = ms.layout(state)
    inner = ms.inner_grid(state, where)
    ys, xs = np.nonzero(inner == ms.WALL)
    wall = (int(xs[0]), int(ys[0]))
    with pytest.raises(ms.StateError, match=re.escape(str(wall))):
        ms.with_cheese_at(state, wall, where)


@pytest.mark.parametrize("offset", [(0, 0), (-1, 0), (0, -1), (1, 0), (0, 1)])
def test_with_cheese_at_outside_raises(maze_states, offset):
    state = maze_states[1]
    d = ms.layout(state).maze_dim
    square = {(0, 0): (d, d), (-1, 0): (-1, 0), (0, -1): (0, -1), (1, 0): (d, 0), (0, 1): (0, d)}[offset]
    with pytest.raises(ms.StateError, match=re.escape(str(square))):
        ms.with_cheese_at(state, square)


def test_layout_rejects_other_games_and_garbage(maze_states):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coinrun = ProcgenGym3Env(num=1, env_name="coinrun", rand_seed=0)
    try:
        foreign = coinrun.callmethod("get_state")[0]
    finally:
        coinrun.close()
    with pytest.raises(ms.StateError, match="coinrun"):
        ms.layout(foreign)
    with pytest.raises(ms.StateError):
        ms.layout(b"\x00" * 10)
    state = maze_states[0]
    with pytest.raises(ms.StateError, match="CAFECAFE"):
        ms.layout(state[:-1] + b"\x00")
    with pytest.raises(ms.StateError):
        ms.layout(state[: len(state) // 2])


def test_state_round_trip_is_byte_exact(maze_states):
    env = make_env(6, "hard", 5, seed=78)
    try:
        env.reset()
        env.step(torch.randint(0, 15, (6,)))
        mine = [env.get_state(i) for i in range(6)]
        for i in range(6):
            env.set_state(i, maze_states[i])
        for i in range(6):
            assert env.get_state(i) == maze_states[i]
        # and back again; edits through with_cheese_at round-trip too
        for i in range(6):
            env.set_state(i, mine[i])
            assert env.get_state(i) == mine[i]
            square = cheese_candidates(ms.inner_grid(mine[i]), 5)[0]
            edited = ms.with_cheese_at(mine[i], square)
            env.set_state(i, edited)
            assert env.get_state(i) == edited
            assert ms.cheese_square(env.get_state(i)) == square
    finally:
        env.close()


def test_mouse_and_grid_readers(maze_states):
    for state in maze_states:
        where = ms.layout(state)
        assert where.world_dim == 25 and 3 <= where.maze_dim <= 25 and where.maze_dim % 2 == 1
        world = ms.grid(state, where)
        m, d = where.margin, where.maze_dim
        # the padding around the inner maze is wall
        border = np.ones_like(world, bool)
        border[m:m + d, m:m + d] = False
        assert np.all(world[border] == ms.WALL)
        assert ms.mouse_square(state, where) == (0, 0)
        inner = ms.inner_grid(state, where)
        assert inner[0, 0] != ms.WALL
        assert set(np.unique(inner)) <= {ms.EMPTY, ms.WALL, ms.CHEESE}



@pytest.mark.parametrize("mode", ["easy", "hard"])
def test_tracked_mouse_matches_procgen_state(mode):
    """The env replays moves against the walls instead of reading states; it must agree exactly."""
    env = MazeEnv(MazeEnvConfig(num_envs=16, distribution_mode=mode, rand_region=5, seed=11))
    try:
        env.reset()
        generator = torch.Generator().manual_seed(0)
        for _ in range(600):
            env.step(torch.randint(0, 15, (16,), generator=generator))
            actual = [ms.mouse_square(env.get_state(i)) for i in range(16)]
            assert env.mouse_squares == actual
    finally:
        env.close()


def test_greedy_moves_fold_the_split_actions():
    import torch

    from shardlab.envs.maze import MOVE_GROUPS, greedy_move_actions

    # right holds 0.5 spread over three actions (0.167 each), up 0.3 on its one action
    probs = torch.full((15,), 0.2 / 11)
    probs[[6, 7, 8]] = 0.5 / 3
    probs[5] = 0.3
    action = greedy_move_actions(probs.log().unsqueeze(0))
    assert probs.argmax() == 5 and int(action) in MOVE_GROUPS[3]  # raw argmax says up; the move is right
