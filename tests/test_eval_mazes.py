"""Seeded evaluation mazes: determinism, where each cheese mode puts the cheese, size filters, the
decision-square filter, and clear errors for filters no maze can pass.

Squares are (x, y) in inner-maze coordinates: x the column from the left, y the row from the bottom.
"""

from __future__ import annotations

import itertools
import re
import warnings

import numpy as np
import pytest

from shardlab.envs import eval_mazes as em
from shardlab.envs import maze_geometry as mg
from shardlab.envs import maze_state as ms
from shardlab.envs.eval_mazes import EvalMaze, eval_mazes
from shardlab.envs.maze_generate import is_on_distribution, random_maze

pytestmark = pytest.mark.usefixtures("one_thread")


def in_area(square: tuple[int, int], size: int, cheese: str, region: int) -> bool:
    """Independent reference for the cheese areas, square by square."""
    x, y = square
    middle = (size - 1) / 2  # the middle row and column belong to no quadrant
    if square == (0, 0):
        return False
    if cheese == "anywhere":
        return True
    if cheese == "outside_region":
        side = min(max(region, 1), size)
        return x < size - side or y < size - side
    quadrant = cheese.split(":")[1]
    vertical = y > middle if quadrant.startswith("top") else y < middle
    horizontal = x > middle if quadrant.endswith("right") else x < middle
    return vertical and horizontal


def check_maze(maze: EvalMaze, cheese: str, region: int, mode: str = "hard") -> np.ndarray:
    """The checks every eval maze passes; returns its inner grid."""
    where = ms.layout(maze.state)
    inner = ms.inner_grid(maze.state, where)
    assert where.world_dim == {"hard": 25, "easy": 15}[mode]
    assert maze.maze_dim == where.maze_dim
    assert ms.cheese_square(maze.state, where) == maze.cheese
    assert int((ms.grid(maze.state, where) == ms.CHEESE).sum()) == 1
    assert ms.mouse_square(maze.state, where) == (0, 0)
    assert in_area(maze.cheese, maze.maze_dim, cheese, region), (maze.cheese, maze.maze_dim, cheese)
    assert maze.decision_square == mg.decision_square(inner, maze.cheese)
    assert is_on_distribution(inner)
    return inner


# -- determinism ---------------------------------------------------------------------------------------
def test_same_call_same_bytes():
    first = eval_mazes(40, seed=7, cheese="quadrant:top_left", max_size=15)
    again = eval_mazes(40, seed=7, cheese="quadrant:top_left", max_size=15)
    assert [m.state for m in first] == [m.state for m in again]
    assert first == again  # metadata too
    assert [m.index for m in first] == list(range(40)) and {m.seed for m in first} == {7}
    assert len({m.state for m in first}) == 40
    other = eval_mazes(40, seed=8, cheese="quadrant:top_left", max_size=15)
    assert len({m.state for m in first} & {m.state for m in other}) < 5
    # a shorter set is a prefix of a longer one with the same seed and filters
    assert eval_mazes(15, seed=7, cheese="quadrant:top_left", max_size=15) == first[:15]
    assert eval_mazes(0, seed=7) == []


def test_source_names_the_procgen_level():
    maze = eval_mazes(3, seed=11, min_size=9)[2]
    rand_seed, index = maze.source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from procgen import ProcgenGym3Env
    env = ProcgenGym3Env(num=em.BATCH, env_name="maze", distribution_mode="hard", rand_seed=rand_seed)
    try:
        level = env.callmethod("get_state")[index]
    finally:
        env.close()
    assert ms.with_cheese_at(level, maze.cheese) == maze.state, "only the cheese was moved"


# -- cheese modes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cheese,region", [
    ("anywhere", 5), ("quadrant:top_left", 5), ("quadrant:top_right", 5), ("quadrant:bottom_left", 5),
    ("quadrant:bottom_right", 5), ("outside_region", 5), ("outside_region", 0), ("outside_region", 9),
])
def test_cheese_lands_in_its_area(cheese, region):
    mazes = eval_mazes(100, seed=hash(cheese) % 1000 + region, cheese=cheese, region=region)
    assert len(mazes) == 100
    for maze in mazes:
        check_maze(maze, cheese, region)
    sizes = {m.maze_dim for m in mazes}
    assert len(sizes) >= 8, f"procgen's sizes should all show up, got {sorted(sizes)}"
    if cheese == "quadrant:bottom_left":
        assert 3 not in sizes, "a 3×3 maze's bottom-left quadrant is the start square only"
    if cheese == "outside_region":
        assert all(m.maze_dim > max(region, 1) for m in mazes), "a region covering the maze leaves no room"
    # the cheese is spread over the area, not stuck in one spot
    assert len({m.cheese for m in mazes}) > 30


def test_quadrants_split_at_the_middle():
    assert em.cheese_area(3, "quadrant:top_right").tolist() == [[False] * 3, [False] * 3, [False, False, True]]
    area = em.cheese_area(7, "quadrant:bottom_left")
    assert {(int(x), int(y)) for y, x in np.argwhere(area)} == {(x, y) for x in range(3) for y in range(3)} - {(0, 0)}
    for size, quadrant in itertools.product(range(3, 26, 2), em.QUADRANTS):
        area = em.cheese_area(size, f"quadrant:{quadrant}")
        assert area.sum() == (size // 2) ** 2 - (quadrant == "bottom_left")
        expected = {(x, y) for x in range(size) for y in range(size) if in_area((x, y), size, f"quadrant:{quadrant}", 5)}
        assert {(int(x), int(y)) for y, x in np.argwhere(area)} == expected


def test_cheese_is_uniform_over_the_area():
    """Many draws for one maze hit every allowed open square about equally often."""
    state = eval_mazes(1, seed=3, min_size=7, max_size=7)[0].state
    where = ms.layout(state)
    inner = ms.inner_grid(state, where)
    rng = np.random.default_rng(0)
    for cheese, require in (("outside_region", False), ("anywhere", True)):
        counts: dict[tuple[int, int], int] = {}
        for _ in range(draws := 1200):
            square, _ = em._place_cheese(state, where, cheese, 5, require, rng)
            counts[square] = counts.get(square, 0) + 1
        allowed = {(x, y) for y in range(7) for x in range(7) if inner[y, x] != ms.WALL
                   and in_area((x, y), 7, cheese, 5) and (not require or mg.decision_square(inner, (x, y)))}
        assert set(counts) == allowed
        assert len(allowed) >= 5
        mean = draws / len(allowed)
        assert 0.5 * mean < min(counts.values()) and max(counts.values()) < 1.5 * mean, counts


# -- size and decision-square filters -----------------------------------------------------------------
@pytest.mark.parametrize("mode,min_size,max_size", [("hard", 5, 9), ("hard", 25, 25), ("hard", 3, 3),
                                                    ("easy", 3, 25), ("easy", 11, 15), ("hard", 4, 8)])
def test_size_filters(mode, min_size, max_size):
    mazes = eval_mazes(60, seed=min_size, min_size=min_size, max_size=max_size, mode=mode)
    allowed = {d for d in range(3, {"hard": 25, "easy": 15}[mode] + 1, 2) if min_size <= d <= max_size}
    assert {m.maze_dim for m in mazes} == allowed  # within the range, and every size in it shows up
    for maze in mazes:
        check_maze(maze, "anywhere", 5, mode)


@pytest.mark.parametrize("cheese", ["anywhere", "quadrant:top_right", "quadrant:bottom_right", "outside_region"])
def test_decision_square_filter(cheese):
    mazes = eval_mazes(60, seed=21, cheese=cheese, require_decision_square=True)
    for maze in mazes:
        inner = check_maze(maze, cheese, 5)
        assert maze.decision_square is not None
        # the decision square is where the paths to the cheese and to the corner part
        to_cheese = mg.shortest_path(inner, (0, 0), maze.cheese)
        to_corner = mg.shortest_path(inner, (0, 0), mg.corner(inner))
        k = to_cheese.index(maze.decision_square)
        assert to_corner[:k + 1] == to_cheese[:k + 1] and to_corner[k + 1] != to_cheese[k + 1]
    if cheese == "quadrant:top_right":  # no 3×3 or 5×5 maze has a top-right square that qualifies
        assert min(m.maze_dim for m in mazes) >= 7
    # the smallest sizes where the area can hold such a cheese (3×3 is inside the region of 5)
    smallest = 7 if cheese in ("quadrant:top_right", "outside_region") else 3
    small = eval_mazes(30, seed=22, cheese=cheese, max_size=smallest, require_decision_square=True)
    assert all(m.decision_square is not None for m in small)


def test_without_the_filter_some_mazes_have_no_decision_square():
    mazes = eval_mazes(100, seed=5, cheese="anywhere")
    missing = sum(m.decision_square is None for m in mazes)
    assert 0 < missing < 100


def test_decision_possible_matches_real_mazes():
    """The static rule behind the impossible-filter errors: exhaustive on the four 3×3 trees,
    sampled for 5×5 and 7×7."""
    for size, samples in ((3, 200), (5, 1500), (7, 1500)):
        rng = np.random.default_rng(size)
        seen = np.zeros((size, size), bool)
        trees = set()
        for _ in range(samples):
            inner = random_maze(size, rng)
            trees.add(inner.tobytes())
            corner_path = set(mg.shortest_path(inner, (0, 0), mg.corner(inner)))
            for y, x in np.argwhere(inner != ms.WALL):
                if (int(x), int(y)) in corner_path or seen[y, x]:
                    continue
                seen[y, x] |= mg.decision_square(inner, (int(x), int(y))) is not None
        if size == 3:
            assert len(trees) == 4
        np.testing.assert_array_equal(seen, em.decision_possible(size))


# -- impossible filters -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    (dict(min_size=9, max_size=7), "min_size 9 > max_size 7"),
    (dict(min_size=4, max_size=4), r"no maze size in \[4, 4\]"),
    (dict(min_size=17, mode="easy"), "easy mazes have odd sizes 3 to 15"),
    (dict(min_size=27), "min_size 27 > max_size 25"),
    (dict(min_size=27, max_size=29), r"no maze size in \[27, 29\]: hard mazes have odd sizes 3 to 25"),
    (dict(cheese="quadrant:bottom_left", max_size=3), "no maze of size 3 has an open square"),
    (dict(cheese="quadrant:top_right", max_size=5, require_decision_square=True),
     "no maze of size 3 to 5 .* with a decision square"),
    (dict(cheese="outside_region", region=25), r"cheese='outside_region' \(region 25\)"),
    (dict(cheese="outside_region", region=15, mode="easy"), "region 15"),
    (dict(cheese="quadrant:middle"), "cheese must be one of"),
    (dict(cheese="corner"), "cheese must be one of"),
    (dict(region=-1), "region must be >= 0"),
    (dict(mode="medium"), "mode must be one of"),
])
def test_impossible_filters_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        eval_mazes(5, seed=0, **kwargs)


def test_negative_count_raises():
    with pytest.raises(ValueError, match=re.escape("n must be >= 0")):
        eval_mazes(-1, seed=0)


def test_possible_edge_cases_do_not_raise():
    """Narrow but possible: size 3 with a decision square; the region just smaller than the maze."""
    for maze in eval_mazes(10, seed=1, max_size=3, require_decision_square=True):
        assert maze.decision_square == (0, 0)  # in a 3×3 maze the paths can only part at the start
    for maze in eval_mazes(10, seed=2, cheese="outside_region", region=24, min_size=25):
        assert min(maze.cheese) == 0  # the bottom row or the left column
