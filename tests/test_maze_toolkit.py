"""The maze toolkit: state bytes (MazeState) round trips and edits, their errors, geometry on
hand-made mazes, is_on_distribution, grid vs RGB observations, hand-made mazes in an env (ASCII,
YAML files), and max_maze_size.

Squares are (x, y) in inner-maze coordinates: x the column from the left, y the row from the bottom.
ASCII mazes are written top row first. Actions: LEFT 1, DOWN 3, noop 4, UP 5, RIGHT 7.
"""

from __future__ import annotations

import math
import re
import sys
import warnings

import numpy as np
import pytest
import torch

from shardlab.envs import maze_build, maze_geometry as mg, maze_state as ms, maze_views
from shardlab.envs.maze import MazeEnv, MazeEnvConfig
from shardlab.envs.maze_generate import is_on_distribution, random_maze
from shardlab.envs.maze_state import MazeState, StateError

pytestmark = pytest.mark.usefixtures("one_thread")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from procgen import ProcgenGym3Env

LEFT, DOWN, NOOP, UP, RIGHT = 1, 3, 4, 5, 7
MOVE_OF = {(-1, 0): LEFT, (0, -1): DOWN, (0, 1): UP, (1, 0): RIGHT}
WORLD = {"hard": 25, "easy": 15}

# -- hand-made mazes, with answers worked out by hand ---------------------------------------------
# A: a 5×5 procgen-like tree. From the start the corridor forks at (2, 0): right to the dead end
# (4, 2), up through (2, 2), (0, 2) and the top row to the corner (4, 4).
MAZE_A = """
.....
.####
...#.
##.#.
M....
"""
A_TO_CORNER = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (1, 2), (0, 2), (0, 3), (0, 4), (1, 4), (2, 4),
               (3, 4), (4, 4)]
A_TO_DEAD_END = [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (4, 1), (4, 2)]
# C: a 3×3 line with the start at one end: every path is a prefix of another, no decision square
MAZE_C = """
...
##.
M..
"""
C_TO_CORNER = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2)]
# D: a 3×3 line with the start in the middle: to (2, 0) and to the corner part at the start
MAZE_D = """
...
.##
M..
"""
# E: loops (off-distribution): two rings, so several shortest paths
MAZE_E = """
.....
.###.
.....
.###.
.....
"""
# W: a 7×7 maze for the env tests; the cheese sits 14 steps away at (6, 0)
MAZE_W = """
.......
.###.##
.#.....
.#.#.##
.#.#...
##.###.
M....#C
"""
W_PATH = [(0, 0), (1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (3, 4), (4, 4), (4, 3), (4, 2), (5, 2),
          (6, 2), (6, 1), (6, 0)]


def inner_of(text: str) -> np.ndarray:
    """The inner grid of an ASCII maze."""
    return maze_build.parse_ascii(text)[0]


def open_squares(inner: np.ndarray) -> list[tuple[int, int]]:
    """Open squares (x, y), row by row from the bottom."""
    ys, xs = np.nonzero(inner != ms.WALL)
    return [(int(x), int(y)) for x, y in zip(xs, ys)]


def actions_along(path: list[tuple[int, int]]) -> list[int]:
    """The actions walking ``path`` square by square."""
    return [MOVE_OF[(b[0] - a[0], b[1] - a[1])] for a, b in zip(path, path[1:])]


def make_env(mode: str = "hard", obs: str = "rgb", num_envs: int = 1, **kwargs) -> MazeEnv:
    return MazeEnv(MazeEnvConfig(num_envs=num_envs, distribution_mode=mode, rand_region=None, obs=obs,
                                 **kwargs))


# -- fixtures: procgen states, some mid-episode -----------------------------------------------------
def procgen_states(mode: str, num: int, seed: int, steps: int) -> list[bytes]:
    """States of ``num`` fresh procgen levels after ``steps`` random actions (some mice moved)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = ProcgenGym3Env(num=num, env_name="maze", distribution_mode=mode, rand_seed=seed)
    try:
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            env.act(rng.integers(0, 15, num).astype(np.int32))
        return env.callmethod("get_state")
    finally:
        env.close()


@pytest.fixture(scope="module")
def hard_states() -> list[bytes]:
    return procgen_states("hard", 200, seed=101, steps=6)


@pytest.fixture(scope="module")
def easy_states() -> list[bytes]:
    return procgen_states("easy", 64, seed=102, steps=6)


@pytest.fixture(scope="module")
def coinrun_state() -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = ProcgenGym3Env(num=1, env_name="coinrun", rand_seed=0)
    try:
        return env.callmethod("get_state")[0]
    finally:
        env.close()


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["hard", "easy"])
def test_round_trip_is_byte_exact(mode, hard_states, easy_states):
    states = hard_states if mode == "hard" else easy_states
    assert len(set(states)) == len(states) == {"hard": 200, "easy": 64}[mode]  # distinct levels
    assert sum(ms.mouse_square(s) != (0, 0) for s in states) > 10, "some states are mid-episode"
    env = make_env(mode, num_envs=8)
    try:
        for k, state in enumerate(states):
            parsed = MazeState.from_bytes(state)
            assert parsed.to_bytes() == state
            assert parsed.world_dim == WORLD[mode] and parsed.maze_dim % 2 == 1
            assert parsed.padding == (parsed.world_dim - parsed.maze_dim) // 2
            env.set_state(k % 8, parsed.to_bytes())
            assert env.get_state(k % 8) == state
            assert env.mouse_squares[k % 8] == parsed.mouse
            assert env.cheese_squares[k % 8] == parsed.cheese
    finally:
        env.close()


# -- edits, through the env and into the next observation ------------------------------------------
def tile_mask(where: ms.Layout, squares, slack: int = 0) -> np.ndarray:
    """64×64 bool mask of the pixels of the tiles of inner ``squares`` (± ``slack`` pixels).

    Inner (x, y) is world (margin + x, margin + y); world row Y is image row W − 1 − Y, and a tile
    is 64 / W pixels, so the tile spans columns (margin + x)·t … (margin + x + 1)·t and rows
    (W − 1 − (margin + y))·t … (W − (margin + y))·t.
    """
    t = 64 / where.world_dim
    mask = np.zeros((64, 64), bool)
    for x, y in squares:
        col, row = (where.margin + x) * t, (where.world_dim - 1 - (where.margin + y)) * t
        mask[max(0, math.floor(row) - slack):math.ceil(row + t) + slack,
             max(0, math.floor(col) - slack):math.ceil(col + t) + slack] = True
    return mask


def assert_changes_within(before: np.ndarray, after: np.ndarray, where: ms.Layout, squares) -> None:
    """The two images differ, and only inside the tiles of ``squares``."""
    changed = (np.asarray(before) != np.asarray(after)).any(-1)
    assert changed.any(), f"the picture did not change at {squares}"
    outside = changed & ~tile_mask(where, squares)
    assert not outside.any(), f"pixels changed outside the tiles of {squares}: {np.argwhere(outside)[:5]}"


def grid_pixel(where: ms.Layout, square) -> tuple[int, int]:
    """(row, col) of an inner square in the grid observation (row 0 at the top)."""
    return where.world_dim - 1 - (where.margin + square[1]), where.margin + square[0]


def free_squares(state: MazeState, count: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """``count`` distinct open squares holding neither the mouse nor the cheese."""
    squares = [s for s in open_squares(state.inner) if s not in (state.mouse, state.cheese)]
    return [squares[i] for i in rng.choice(len(squares), count, replace=False)]


@pytest.mark.parametrize("mode", ["hard", "easy"])
def test_edits_survive_set_state_and_show_in_next_observation(mode, hard_states, easy_states):
    states = (hard_states if mode == "hard" else easy_states)[:8]
    rgb, grid = make_env(mode, "rgb"), make_env(mode, "grid")
    rng = np.random.default_rng(5)
    noop = torch.tensor([NOOP])
    try:
        for state in states:
            base = MazeState.from_bytes(state)
            where = base.layout
            cheese_to, mouse_to = free_squares(base, 2, rng)
            grid_end = where.grid_offset + 4 * where.world_dim ** 2
            edits = {
                "cheese": (base.with_cheese(cheese_to), [base.cheese, cheese_to]),
                "mouse": (base.with_mouse(mouse_to), [base.mouse, mouse_to]),
                "no cheese": (base.without_cheese(), [base.cheese]),
            }
            for name, (edited, touched) in edits.items():
                raw = edited.to_bytes()
                assert len(raw) == len(state) and MazeState.from_bytes(raw).layout == where
                changed = np.flatnonzero(np.frombuffer(raw, np.uint8) != np.frombuffer(state, np.uint8))
                if name == "mouse":  # only the mouse's two floats
                    assert set(changed) <= set(range(where.mouse_offset, where.mouse_offset + 8)), name
                else:  # only grid cells
                    assert changed.min() >= where.grid_offset and changed.max() < grid_end, name
                expect_mouse = mouse_to if name == "mouse" else base.mouse
                expect_cheese = {"cheese": cheese_to, "mouse": base.cheese, "no cheese": None}[name]
                assert (edited.mouse, edited.cheese) == (expect_mouse, expect_cheese)
                np.testing.assert_array_equal(edited.inner == ms.WALL, base.inner == ms.WALL)

                before_rgb = rgb.load_states([state])[0].numpy()
                grid.load_states([state])
                for env in (rgb, grid):
                    env.set_state(0, raw)
                    assert env.get_state(0) == raw, f"{name}: set_state/get_state changed the bytes"
                    assert env.mouse_squares == [expect_mouse] and env.cheese_squares == [expect_cheese]
                after_rgb = rgb.step(noop)[0][0].numpy()
                after_grid = grid.step(noop)[0][0].numpy()
                assert MazeState.from_bytes(rgb.get_state(0)).mouse == expect_mouse, "a noop moved the mouse"
                # the next RGB observation is procgen's rendering of the edited state, changed only
                # in the tiles of the squares the edit touched
                np.testing.assert_array_equal(after_rgb, maze_views.render_rgb([raw])[0])
                assert_changes_within(before_rgb, after_rgb, where, touched)
                # the next grid observation shows the mouse and cheese on the edited squares
                assert np.argwhere(after_grid[..., 1]).tolist() == [list(grid_pixel(where, expect_mouse))]
                cheese_px = np.argwhere(after_grid[..., 2]).tolist()
                assert cheese_px == ([list(grid_pixel(where, expect_cheese))] if expect_cheese else [])
                np.testing.assert_array_equal(after_grid[..., 0] > 0, ms.grid(raw)[::-1] == ms.WALL)
    finally:
        rgb.close()
        grid.close()


def test_edits_chain_and_leave_the_original_alone(hard_states):
    base = MazeState.from_bytes(hard_states[3])
    rng = np.random.default_rng(0)
    a, b = free_squares(base, 2, rng)
    edited = base.with_cheese(a).with_mouse(b).without_cheese().with_cheese(b)
    assert (edited.mouse, edited.cheese) == (b, b)
    assert base.to_bytes() == hard_states[3], "edits return new states"
    back = edited.with_mouse(base.mouse).with_cheese(base.cheese)
    assert back.to_bytes() == base.to_bytes(), "undoing the edits restores the exact bytes"


# -- edit errors ---------------------------------------------------------------------------------------
def bad_squares(state: MazeState) -> dict[str, tuple[int, int]]:
    """One wall square and squares outside the maze, negative coordinates included."""
    d = state.maze_dim
    ys, xs = np.nonzero(state.inner == ms.WALL)
    return {"wall": (int(xs[-1]), int(ys[-1])), "right of the maze": (d, 0), "above the maze": (0, d),
            "far outside": (d + 7, d + 7), "negative x": (-1, 0), "negative y": (0, -1),
            "negative both": (-3, -2)}


@pytest.mark.parametrize("edit", ["with_cheese", "with_mouse"])
def test_edit_errors_name_the_square(edit, hard_states):
    state = MazeState.from_bytes(hard_states[5])
    function = {"with_cheese": ms.with_cheese_at, "with_mouse": ms.with_mouse_at}[edit]
    for problem, square in bad_squares(state).items():
        expected = "is a wall" if problem == "wall" else "outside"
        with pytest.raises(StateError, match=re.escape(str(square)) + ".*" + expected):
            getattr(state, edit)(square)
        with pytest.raises(StateError, match=re.escape(str(square))):
            function(state.to_bytes(), square)


def test_with_maze_and_parse_ascii_errors():
    template = procgen_states("easy", 1, seed=3, steps=0)[0]
    inner = inner_of(MAZE_A)
    with pytest.raises(StateError, match=re.escape("(1, 1)")):
        maze_build.with_maze(template, inner, (1, 1))  # a wall
    with pytest.raises(StateError, match=re.escape("(-1, 0)")):
        maze_build.with_maze(template, inner, (-1, 0))
    with pytest.raises(StateError, match="odd side"):
        maze_build.with_maze(template, np.full((17, 17), ms.EMPTY, np.int32))  # easy world is 15
    with pytest.raises(StateError, match="odd side"):
        maze_build.parse_ascii("....\n....\n....\n....")
    with pytest.raises(StateError, match=re.escape("['X']")):
        maze_build.parse_ascii("...\n.X.\n...")
    with pytest.raises(StateError, match="at most one M"):
        maze_build.parse_ascii("M..\n.#.\n..M")


def test_foreign_and_damaged_states_are_refused(hard_states, easy_states, coinrun_state):
    state = hard_states[0]
    damaged = [
        ("coinrun", coinrun_state),
        ("truncated", state[:len(state) // 2]),
        ("truncated", state[:-1]),
        ("truncated or corrupt", state[:200] + state[-(12 + 4 * 25 * 25 + 12):]),  # a hole in the middle
        ("too short", state[:40]),
        ("CAFECAFE", state[:-4] + b"\x00\x00\x00\x00"),
    ]
    calls = [MazeState.from_bytes, ms.layout, ms.without_cheese, lambda s: ms.with_cheese_at(s, (0, 0)),
             lambda s: ms.with_mouse_at(s, (0, 0)), lambda s: maze_views.grid_observations([s]),
             lambda s: maze_views.render_rgb([s]), lambda s: env.set_state(0, s)]
    env = make_env("hard")
    env.load_states([state])
    try:
        for message, raw in damaged:
            for call in calls:
                with pytest.raises(StateError, match=message):
                    call(raw)
        assert env.get_state(0) == state, "a refused set_state must leave the env alone"
        with pytest.raises(StateError, match="'easy'.*15×15|15×15.*'hard'"):
            env.set_state(0, easy_states[0])  # an easy state in a hard env
        assert env.get_state(0) == state
    finally:
        env.close()


def test_truncations_at_every_length_raise_state_error(hard_states):
    state = hard_states[1]
    for length in list(range(0, 200, 7)) + list(range(200, len(state), 997)) + [len(state) - 1]:
        with pytest.raises(StateError):
            ms.layout(state[:length])
        spliced = state[:length] + state[-12:]  # the trailer kept, the middle missing
        if spliced != state:
            with pytest.raises(StateError):
                ms.layout(spliced)


# -- geometry on hand-made mazes -------------------------------------------------------------------
def test_shortest_paths_on_hand_mazes():
    a = inner_of(MAZE_A)
    assert mg.shortest_path(a, (0, 0), (4, 4)) == A_TO_CORNER
    assert mg.shortest_path(a, (0, 0), (4, 2)) == A_TO_DEAD_END
    assert mg.shortest_path(a, (4, 2), (0, 0)) == A_TO_DEAD_END[::-1]
    assert mg.shortest_path(a, (3, 0), (3, 0)) == [(3, 0)]
    dist = mg.distances_from(a, (0, 0))
    assert dist[4, 4] == 12 and dist[2, 4] == 6 and dist[3, 3] == -1  # (3, 3) is a wall
    assert mg.shortest_path(inner_of(MAZE_C), (0, 0), (2, 2)) == C_TO_CORNER
    e = inner_of(MAZE_E)  # loops: any of several shortest paths, each 8 steps of open squares
    for goal, length in (((4, 4), 8), ((2, 4), 6), ((4, 2), 6), ((2, 2), 4)):
        path = mg.shortest_path(e, (0, 0), goal)
        assert len(path) == length + 1 and path[0] == (0, 0) and path[-1] == goal
        assert all(mg.is_open(e, s) for s in path)
        assert all(abs(p[0] - q[0]) + abs(p[1] - q[1]) == 1 for p, q in zip(path, path[1:]))
    walled = e.copy()
    walled[3, 4] = walled[4, 3] = ms.WALL  # the corner cut off
    assert mg.shortest_path(walled, (0, 0), (4, 4)) == []


def test_decision_square_and_distances_on_hand_mazes():
    a = inner_of(MAZE_A)
    assert mg.decision_square(a, (4, 2)) == (2, 0)
    assert mg.decision_square(a, (4, 0)) == (2, 0)
    assert mg.decision_square(a, (3, 0)) == (2, 0)
    for on_corner_path in ((1, 2), (0, 4), (2, 2), (4, 4), (0, 0)):
        assert mg.decision_square(a, on_corner_path) is None, on_corner_path
    # region 2 = squares with x, y in {3, 4}; open there: (3, 4) and (4, 4)
    d = mg.maze_distances(a, (4, 2), region=2)
    assert (d.decision_square, d.path_decision_cheese, d.path_decision_corner, d.path_cheese_corner,
            d.path_decision_region) == ((2, 0), 4, 10, 14, 9)
    assert d.euclid_decision_cheese == pytest.approx(math.sqrt(8))
    assert d.euclid_cheese_corner == pytest.approx(2.0)
    assert d.euclid_decision_corner == pytest.approx(math.sqrt(20))
    assert d.euclid_decision_region == pytest.approx(math.sqrt(17))  # to (3, 4)
    # region 5 covers the whole 5×5 maze, the decision square included
    assert mg.maze_distances(a, (4, 2), region=5).path_decision_region == 0

    c = inner_of(MAZE_C)  # the start is an end of the line: never a decision square
    for cheese in open_squares(c):
        assert mg.decision_square(c, cheese) is None, cheese
        assert mg.maze_distances(c, cheese) is None

    dd = inner_of(MAZE_D)  # the start is the middle of the line
    assert mg.decision_square(dd, (2, 0)) == (0, 0)
    assert mg.decision_square(dd, (1, 0)) == (0, 0)
    assert mg.decision_square(dd, (0, 2)) is None  # on the way to the corner
    d = mg.maze_distances(dd, (2, 0), region=1)
    assert (d.path_decision_cheese, d.path_decision_corner, d.path_cheese_corner, d.path_decision_region) \
        == (2, 4, 6, 4)
    assert (d.euclid_decision_cheese, d.euclid_cheese_corner) == (2.0, 2.0)
    assert d.euclid_decision_corner == d.euclid_decision_region == pytest.approx(math.sqrt(8))


# -- is_on_distribution -------------------------------------------------------------------------------
def test_procgen_and_random_mazes_are_on_distribution(hard_states, easy_states):
    states = hard_states[:100] + easy_states
    assert all(is_on_distribution(ms.inner_grid(s)) for s in states)
    assert {ms.layout(s).maze_dim for s in states} == set(range(3, 26, 2))
    rng = np.random.default_rng(0)
    for size in range(3, 26, 2):
        for _ in range(3):
            inner = random_maze(size, rng)
            assert inner.shape == (size, size) and is_on_distribution(inner), size
    assert is_on_distribution(inner_of(MAZE_A)) and is_on_distribution(inner_of(MAZE_W))


def test_off_distribution_mazes_are_rejected():
    a = inner_of(MAZE_A)
    loop = a.copy()
    loop[3, 4] = ms.EMPTY  # (4, 3) joins the dead end to the corner: a cycle
    odd_open = a.copy()
    odd_open[3, 3] = ms.EMPTY  # (3, 3): (odd, odd) squares are walls in procgen
    cut = a.copy()
    cut[3, 0] = ms.WALL  # (0, 3): the top part is cut off
    even_closed = a.copy()
    even_closed[4, 2] = ms.WALL  # (2, 4) is an (even, even) square
    for name, inner in {"loop": loop, "odd open": odd_open, "disconnected": cut,
                        "even closed": even_closed, "loops": inner_of(MAZE_E),
                        "even side": np.full((4, 4), ms.EMPTY)}.items():
        assert not is_on_distribution(inner), name


# -- grid and RGB observations agree -------------------------------------------------------------
def test_a_big_batch_renders_in_threads_to_the_same_images(hard_states, monkeypatch):
    """A batch from _PARALLEL_FROM states up is rendered by several threads at once; every image is
    the one a batch of one renders, also with the threads racing on a batch twice the size."""
    monkeypatch.setattr(maze_views, "_render_threads", lambda: 3)  # more threads than cores: more interleaving
    states = hard_states[:150]
    assert len(states) >= maze_views._PARALLEL_FROM
    one_by_one = np.stack([maze_views.render_rgb([state])[0] for state in states])
    assert len({image.tobytes() for image in one_by_one}) > 100  # the images differ: the test can see a mix-up
    for batch in (states, states[::-1] + states):
        expected = one_by_one if batch is states else np.concatenate([one_by_one[::-1], one_by_one])
        np.testing.assert_array_equal(maze_views.render_rgb(batch), expected)


@pytest.mark.parametrize("mode", ["hard", "easy"])
def test_grid_and_rgb_observations_agree(mode, hard_states, easy_states):
    states = (hard_states if mode == "hard" else easy_states)[10:22]
    grids = maze_views.grid_observations(states)
    images = maze_views.render_rgb(states)
    rng = np.random.default_rng(1)
    for state, grid, image in zip(states, grids, images):
        view = MazeState.from_bytes(state)
        where, t = view.layout, 64 / view.world_dim
        (mouse_px,), (cheese_px,) = np.argwhere(grid[..., 1]), np.argwhere(grid[..., 2])
        assert tuple(mouse_px) == grid_pixel(where, view.mouse)
        assert tuple(cheese_px) == grid_pixel(where, view.cheese)

        def box(px):  # the RGB tile of grid observation pixel (row, col)
            mask = np.zeros((64, 64), bool)
            mask[math.floor(px[0] * t):math.ceil((px[0] + 1) * t), math.floor(px[1] * t):math.ceil((px[1] + 1) * t)] = True
            return mask

        changed = (maze_views.render_rgb([view.without_cheese().to_bytes()])[0] != image).any(-1)
        assert changed.any() and not (changed & ~box(cheese_px)).any(), "cheese pixels outside its tile"
        (elsewhere,) = free_squares(view, 1, rng)
        moved = view.with_mouse(elsewhere)
        changed = (maze_views.render_rgb([moved.to_bytes()])[0] != image).any(-1)
        new_px = np.argwhere(maze_views.grid_observations([moved.to_bytes()])[0][..., 1])[0]
        assert changed.any() and not (changed & ~(box(mouse_px) | box(new_px))).any(), \
            "mouse pixels outside its old and new tiles"
        assert (changed & box(new_px)).any() and (changed & box(mouse_px)).any()


# -- a hand-made maze in an env ---------------------------------------------------------------------
def tile_colours(image: np.ndarray, world: int) -> np.ndarray:
    """(world, world, 3) mean colour of each tile's whole pixels, indexed [world y, world x]."""
    t = 64 / world
    out = np.zeros((world, world, 3))
    for row in range(world):
        for col in range(world):
            r0, c0 = math.ceil(row * t - 1e-9), math.ceil(col * t - 1e-9)
            r1, c1 = math.floor((row + 1) * t + 1e-9), math.floor((col + 1) * t + 1e-9)
            out[world - 1 - row, col] = image[r0:r1, c0:c1].reshape(-1, 3).mean(0)
    return out


@pytest.mark.parametrize("mode", ["hard", "easy"])
def test_ascii_maze_renders_in_the_env(mode):
    inner, mouse = maze_build.parse_ascii(MAZE_W)
    assert mouse == (0, 0) and inner[0, 6] == ms.CHEESE
    world, margin = WORLD[mode], (WORLD[mode] - 7) // 2
    expected = np.full((world, world), ms.WALL)
    expected[margin:margin + 7, margin:margin + 7] = inner
    grid_env, rgb_env = maze_build.make_env_from_maze(inner, mode=mode, obs="grid"), \
        maze_build.make_env_from_maze(inner, mode=mode, obs="rgb")
    try:
        state = MazeState.from_bytes(grid_env.get_state(0))
        assert (state.maze_dim, state.mouse, state.cheese) == (7, (0, 0), (6, 0))
        np.testing.assert_array_equal(state.grid, expected)
        obs = grid_env.reset()[0].numpy()  # reset() keeps the loaded maze: the env places nothing
        assert MazeState.from_bytes(grid_env.get_state(0)).to_bytes() == state.to_bytes()
        # the grid observation is the ASCII art, top row first, inside the wall margin
        art = [line for line in MAZE_W.split() if line]
        for row in range(world):
            for col in range(world):
                y, x = world - 1 - row - margin, col - margin
                char = art[6 - y][x] if 0 <= x < 7 and 0 <= y < 7 else "#"
                assert tuple(obs[row, col] > 0) == (char == "#", char == "M", char == "C"), (row, col, char)
        # the RGB view: every tile's colour is nearer the median wall colour if it is a wall,
        # nearer the median floor colour if open (the floor texture varies from level to level)
        colours = tile_colours(rgb_env.reset()[0].numpy(), world)
        walls = expected == ms.WALL
        floor = (expected == ms.EMPTY)
        floor[margin, margin] = False  # the mouse's tile
        wall_ref, floor_ref = np.median(colours[walls], 0), np.median(colours[floor], 0)
        assert np.linalg.norm(wall_ref - floor_ref) > 40
        near_wall = np.linalg.norm(colours - wall_ref, axis=-1) < np.linalg.norm(colours - floor_ref, axis=-1)
        np.testing.assert_array_equal(near_wall[walls], True)
        np.testing.assert_array_equal(near_wall[floor], False)
    finally:
        grid_env.close()
        rgb_env.close()


@pytest.mark.parametrize("obs", ["grid", "rgb"])
def test_ascii_maze_steps_to_the_cheese(obs):
    inner, mouse = maze_build.parse_ascii(MAZE_W)
    assert mg.shortest_path(inner, mouse, (6, 0)) == W_PATH
    env = maze_build.make_env_from_maze(inner, mouse, obs=obs)
    try:
        start = env.get_state(0)

        def step(action: int, square: tuple[int, int]) -> None:
            _, reward, done, finished = env.step(torch.tensor([action]))
            assert reward[0] == 0 and not done[0] and finished == []
            assert env.mouse_squares == [square] and MazeState.from_bytes(env.get_state(0)).mouse == square

        # bumping into the margin and into inner walls leaves the mouse in place
        for action in (LEFT, DOWN, UP):
            step(action, (0, 0))
        for action, square in zip(actions_along(W_PATH[:5]), W_PATH[1:5]):
            step(action, square)
        step(RIGHT, (2, 2))  # (3, 2) is a wall
        env.load_states([start])  # from the start again, straight to the cheese
        actions = actions_along(W_PATH)
        for action, square in zip(actions[:-1], W_PATH[1:-1]):
            step(action, square)
        _, reward, done, finished = env.step(torch.tensor([actions[-1]]))
        assert reward[0] == 10 and done[0]
        assert [(e.ret, e.length, e.reached_cheese, e.reached_corner, e.maze_dim) for e in finished] \
            == [(10.0, 14, True, False, 7)]
    finally:
        env.close()


def test_make_env_from_maze_places_the_requested_cheese_and_mouse():
    inner = inner_of(MAZE_A)
    env = maze_build.make_env_from_maze(inner, mouse=(0, 4), cheese=(4, 2), mode="easy", obs="grid")
    try:
        state = MazeState.from_bytes(env.get_state(0))
        assert (state.maze_dim, state.world_dim, state.mouse, state.cheese) == (5, 15, (0, 4), (4, 2))
        assert env.mouse_squares == [(0, 4)] and env.cheese_squares == [(4, 2)]
        with pytest.raises(ValueError, match="one state per env"):
            env.load_states([])
    finally:
        env.close()
    with pytest.raises(StateError, match=re.escape("(1, 1)")):
        maze_build.make_env_from_maze(inner, mouse=(1, 1))


# -- max_maze_size ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("rand_region,min_size", [(None, None), (3, None), (3, 5)])
def test_max_maze_size_gives_small_on_distribution_mazes(rand_region, min_size):
    n, rounds = 16, 12  # (1 reset + 12 auto-resets) × 16 envs = 208 episode starts
    env = MazeEnv(MazeEnvConfig(num_envs=n, rand_region=rand_region, max_maze_size=7, min_maze_size=min_size,
                                obs="grid", seed=3))
    try:
        obs = env.reset()
        sizes: list[int] = []
        for round_ in range(rounds + 1):
            actions = []
            for i in range(n):
                state = MazeState.from_bytes(env.get_state(i))
                assert state.maze_dim <= 7 and env.maze_dims[i] == state.maze_dim
                assert is_on_distribution(state.inner), state.inner
                assert state.mouse == (0, 0) and state.cheese not in (None, (0, 0))
                if rand_region is not None:
                    low = state.maze_dim - rand_region
                    assert min(state.cheese) >= low, (state.cheese, state.maze_dim)
                np.testing.assert_array_equal(obs[i, ..., 0].numpy() > 0, state.grid[::-1] == ms.WALL)
                sizes.append(state.maze_dim)
                # end the episode next step: the cheese next to the mouse
                square, action = ((1, 0), RIGHT) if state.inner[0, 1] != ms.WALL else ((0, 1), UP)
                env.set_state(i, state.with_cheese(square).to_bytes())
                actions.append(action)
            if round_ < rounds:
                obs, reward, done, _ = env.step(torch.tensor(actions))
                assert done.all() and (reward == 10).all()
        assert len(sizes) == n * (rounds + 1) >= 200
        assert set(sizes) == ({3, 5, 7} if min_size is None else {5, 7})
    finally:
        env.close()


# -- maze files -----------------------------------------------------------------------------------------
def test_load_maze_file(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("# a hand-made maze\nmaze: |\n" + "".join(f"  {line}\n" for line in MAZE_W.split()))
    loaded = maze_build.load_maze_file(path)
    inner, mouse = maze_build.parse_ascii(MAZE_W)
    np.testing.assert_array_equal(loaded.inner, inner)
    assert (loaded.mouse, loaded.cheese, loaded.mode, loaded.path) == (mouse, (6, 0), "hard", str(path))
    easy = tmp_path / "a.yaml"
    easy.write_text("mode: easy\nmaze: |\n" + "".join(f"  {line}\n" for line in MAZE_A.split()))
    loaded = maze_build.load_maze_file(str(easy))
    assert (loaded.mode, loaded.mouse, loaded.cheese, loaded.inner.shape) == ("easy", (0, 0), None, (5, 5))
    env = maze_build.make_env_from_maze(loaded.inner, loaded.mouse, mode=loaded.mode)
    try:
        assert MazeState.from_bytes(env.get_state(0)).world_dim == 15
    finally:
        env.close()


@pytest.mark.parametrize("content,problem", [
    ("maze: |\n  ....\n  ....\n  ....\n  ....\n", r"odd side from 3 to 25; got 4 rows"),
    ("maze: |\n  ...\n  .X.\n  ...\n", re.escape("unknown characters ['X']")),
    ("maze: |\n  ...\n  ..\n  ...\n", "odd side"),
    ("mode: medium\nmaze: |\n  ...\n  ...\n  ...\n", "mode must be one of"),
    ("mode: easy\nmaze: |\n" + ("  " + "." * 17 + "\n") * 17, "does not fit the 15×15 world"),
    ("size: 3\nmaze: |\n  ...\n  ...\n  ...\n", re.escape("unknown keys ['size']")),
    ("- just\n- a list\n", "expected a YAML mapping"),
    ("maze: [1, 2]\n", "must be a block of ASCII art"),
    ("maze: |\n  ...\n bad: [\n", "not valid YAML"),
])
def test_bad_maze_files_name_the_problem(tmp_path, content, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(StateError, match=problem) as caught:
        maze_build.load_maze_file(path)
    assert str(path) in str(caught.value)


# -- the maze benchmark ------------------------------------------------------------------------------
def test_maze_benchmark_smoke(tmp_path, capsys, monkeypatch):
    """``benchmark.py maze`` on a tiny setting prints its table and writes positive numbers."""
    import importlib.util
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("maze_benchmark_under_test", script)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    out = tmp_path / "maze.json"
    # run() directly, not main(): main() also retunes this process's allocator
    args = bench.build_parser().parse_args(["maze", "--reps", "20", "--steps", "4", "--num-envs", "4",
                                            "--maze-size", "5", "--repeats", "1", "--json", str(out)])
    assert bench.SUBCOMMANDS["maze"].run(args) == 0
    report = json.loads(out.read_text())
    assert report["state_edits"]["edits_per_sec"] > 0
    assert report["vector_field"]["maze_dim"] == 5 and report["vector_field"]["squares"] >= 8
    assert all(v > 0 for k, v in report["vector_field"]["seconds"].items() if k != "edit")
    assert set(report["env_steps"]["env_steps_per_sec"]) == {"grid", "rgb"}
    table = capsys.readouterr().out
    assert "edits/s" in table and "ImpalaPolicy(scale=4)" in table and "grid / rgb" in table


def test_cheese_reward_and_end_square(template):
    inner, mouse = maze_build.parse_ascii(MAZE_W)
    env = maze_build.make_env_from_maze(inner, mouse, obs="grid")
    env.cfg.cheese_reward = -10.0  # avoid_cheese fine-tuning penalises the cheese
    try:
        actions = actions_along(W_PATH)
        for action in actions[:-1]:
            env.step(torch.tensor([action]))
        _, reward, done, finished = env.step(torch.tensor([actions[-1]]))
        assert reward[0] == -10 and done[0]
        [episode] = finished
        assert episode.reached_cheese and episode.ret == -10.0 and episode.end_square == (6, 0)
    finally:
        env.close()


def test_to_ascii_is_parse_ascii_inverted(template):
    """ASCII → state → ASCII gives the same text, mouse and cheese included."""
    from shardlab.envs.maze_build import parse_ascii, to_ascii

    text = "..C\n.#.\nM.."
    inner, mouse = parse_ascii(text)
    assert to_ascii(ms.with_maze(template, inner, mouse)) == text
