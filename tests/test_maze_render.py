"""Maze pictures: tile ↔ activation-cell and tile ↔ pixel coordinates, y-up grid view, overlay
directions in both views, and PNG files (valid, sensible size, written atomically, no pyplot).

Squares are (x, y) in inner-maze coordinates, y = 0 at the bottom.
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
from matplotlib.image import imread

from shardlab.envs import maze_state as ms
from shardlab.envs.maze_build import parse_ascii, with_maze
from shardlab.envs.maze_generate import random_maze
from shardlab.envs.maze_geometry import decision_square, shortest_path
from shardlab.envs.maze_views import render_rgb
from shardlab.evals.maze import render as mr

pytestmark = pytest.mark.usefixtures("one_thread")

MAZE = """
.....
.###.
...#C
##.#.
M....
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small(template) -> bytes:
    inner, mouse = parse_ascii(MAZE)
    return with_maze(template, inner, mouse)


def stub_field(squares, arrow, noop=0.0) -> SimpleNamespace:
    """A field with the same arrow on every square."""
    k = len(squares)
    return SimpleNamespace(squares=list(squares), arrows=np.tile(np.array(arrow, float), (k, 1)),
                           noop=np.full(k, noop))


# -- coordinates ------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [15, 25])
@pytest.mark.parametrize("side", [8, 16, 32, 64])
def test_activation_cell_is_the_documented_formula(world, side):
    for tile in range(world):
        exact = (tile + Fraction(1, 2)) * Fraction(64, world) * side / 64
        assert mr.activation_cell(tile, world, side) == int(exact)  # floor of a positive fraction


def test_activation_cell_block2_values():
    # block 2 of IMPALA (16×16) over a 25-tile world: ⌊(t + 0.5)·2.56/4⌋
    assert [mr.activation_cell(t, 25, 16) for t in (0, 1, 2, 12, 23, 24)] == [0, 0, 1, 8, 15, 15]


@pytest.mark.parametrize("maze_dim,world,side", [(25, 25, 16), (11, 25, 16), (15, 15, 8), (7, 25, 32)])
def test_hot_cell_lands_on_its_tile(maze_dim, world, side):
    margin = (world - maze_dim) // 2
    for x, y in [(0, 0), (maze_dim - 1, 0), (0, maze_dim - 1), (maze_dim // 2, 1), (maze_dim - 1, maze_dim - 1)]:
        cell = (mr.activation_cell(world - 1 - (margin + y), world, side), mr.activation_cell(margin + x, world, side))
        channel = np.zeros((side, side))
        channel[cell] = 1.0
        tiles = mr.tile_activation_map(channel, maze_dim, world)
        assert tiles.shape == (maze_dim, maze_dim)
        assert tiles[y, x] == 1.0
        hot = {(int(a), int(b)) for b, a in zip(*np.nonzero(tiles))}
        assert hot == set(mr.cell_squares(cell, side, maze_dim, world))
        # a cell covers at most ⌈world/side⌉ tiles a side, all next to the square
        assert all(abs(a - x) < -(-world // side) and abs(b - y) < -(-world // side) for a, b in hot)


def test_plot_activation_grid_view_puts_the_hot_cell_on_the_tile():
    fig, ax = mr.new_figure()
    inner = np.full((25, 25), ms.EMPTY)
    mr.plot_maze(ax, inner)
    square = (20, 3)
    channel = np.zeros((16, 16))
    channel[mr.activation_cell(24 - 3, 25, 16), mr.activation_cell(20, 25, 16)] = 5.0
    image = mr.plot_activation(ax, channel, 25, 25, alpha=0.6)
    left, right, bottom, top = tuple(image.get_extent())
    assert image.origin == "lower" and (left, right, bottom, top) == (-0.5, 24.5, -0.5, 24.5)
    values = np.asarray(image.get_array())
    # the data point (x, y) lies in array element [y, x] for origin "lower" and this extent
    assert values[square[1], square[0]] == 5.0 and values[24 - square[1], square[0]] == 0.0


def test_plot_activation_agent_view_covers_the_tile_centre():
    fig, ax = mr.new_figure()
    mr.plot_agent_view(ax, np.zeros((64, 64, 3), np.uint8), maze_dim=11, world_dim=25)
    square = (9, 2)
    cx, cy = mr.tile_centre_px(square, 11, 25)
    channel = np.zeros((16, 16))
    channel[mr.activation_cell(24 - (7 + 2), 25, 16), mr.activation_cell(7 + 9, 25, 16)] = 1.0
    image = mr.plot_activation(ax, channel, 11, 25)
    assert tuple(image.get_extent()) == (0, 64, 64, 0)
    values = np.asarray(image.get_array())
    assert values[int(cy * 16 / 64), int(cx * 16 / 64)] == 1.0  # the cell under the tile's centre


def test_tile_centre_px_matches_procgen_render(small):
    # the mouse sprite (1–2 pixels at 2.56 px per tile) lies inside its tile's pixel box
    for a, b in [((0, 0), (4, 4)), ((2, 1), (0, 4)), ((4, 3), (2, 2))]:
        images = render_rgb([ms.with_mouse_at(small, a), ms.with_mouse_at(small, b)]).astype(int)
        changed = np.abs(images[0] - images[1]).sum(-1) > 30
        for square in (a, b):
            cx, cy = mr.tile_centre_px(square, 5, 25)
            box = changed[int(cy - 1.28):int(np.ceil(cy + 1.28)), int(cx - 1.28):int(np.ceil(cx + 1.28))]
            assert box.any(), square
        far = np.ones_like(changed)
        for square in (a, b):
            cx, cy = mr.tile_centre_px(square, 5, 25)
            far[max(0, int(cy) - 3):int(cy) + 4, max(0, int(cx) - 3):int(cx) + 4] = False
        assert not (changed & far).any()


# -- drawing ----------------------------------------------------------------------------------
def test_grid_view_has_y_up(tmp_path):
    inner, _ = parse_ascii(MAZE.replace("C", "."))
    path = mr.save_maze_png(tmp_path / "maze.png", inner, size_inches=5, dpi=100)
    pixels = imread(path)[..., :3].mean(-1)
    assert pixels.shape == (500, 500)
    for y in range(5):
        for x in range(5):
            # new_figure's axes span 2%–98% of the figure; row 0 of the PNG is its top
            col = int(10 + (x + 0.5) / 5 * 480)
            row = int(10 + (5 - 1 - y + 0.5) / 5 * 480)
            dark = pixels[row, col] < 0.5
            assert dark == (inner[y, x] == ms.WALL), (x, y)


def test_vector_field_arrows_point_up_in_both_views():
    squares = [(0, 0), (2, 1), (4, 4)]
    fig, ax = mr.new_figure()
    mr.plot_maze(ax, np.full((5, 5), ms.EMPTY))
    up = mr.plot_vector_field(ax, stub_field(squares, (0.0, 1.0)))
    np.testing.assert_allclose(up.X, [0, 2, 4])
    np.testing.assert_allclose(up.Y, [0, 1, 4])
    assert np.all(up.V > 0) and np.allclose(up.U, 0)
    right = mr.plot_vector_field(ax, stub_field(squares, (1.0, 0.0), noop=0.5))
    assert np.all(right.U > 0) and np.allclose(right.V, 0)

    fig, ax = mr.new_figure()
    frame = mr.plot_agent_view(ax, np.zeros((64, 64, 3), np.uint8), maze_dim=5, world_dim=25)
    up = mr.plot_vector_field(ax, stub_field(squares, (0.0, 1.0)))
    np.testing.assert_allclose(np.stack([up.X, up.Y], 1), frame.points(squares))
    assert np.all(up.V < 0) and np.allclose(up.U, 0)  # image rows grow downwards
    assert ax.get_ylim() == (64, 0)


def test_overlays_need_a_maze_on_the_axes():
    fig, ax = mr.new_figure()
    with pytest.raises(ValueError, match="plot_maze"):
        mr.plot_path(ax, [(0, 0), (1, 0)])
    line = mr.plot_path(ax, [(0, 0), (1, 0)], frame=mr.Frame(5))
    np.testing.assert_allclose(line.get_ydata(), [0, 0])


# -- files ------------------------------------------------------------------------------------
def overlays(state: bytes) -> dict:
    inner = ms.inner_grid(state)
    cheese = ms.cheese_square(state)
    corner = (inner.shape[0] - 1,) * 2
    squares = [(x, y) for y in range(inner.shape[0]) for x in range(inner.shape[0])
               if inner[y, x] == ms.EMPTY]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), len(squares))
    field = SimpleNamespace(squares=squares, noop=probs[:, 4],
                            arrows=np.stack([probs[:, 3] - probs[:, 0], probs[:, 2] - probs[:, 1]], 1))
    return dict(field=field,
                paths=[shortest_path(inner, (0, 0), cheese), shortest_path(inner, (0, 0), corner)],
                squares={"decision": decision_square(inner, cheese) or (0, 0), "corner": corner},
                activation=rng.random((16, 16)))


def check_png(path: Path, side: int = 500) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.shape[:2] == (side, side) and image.shape[2] in (3, 4)
    assert image[..., :3].std() > 0.05, "blank picture"
    return image


@pytest.mark.parametrize("view", ["grid", "agent"])
def test_png_with_every_overlay(tmp_path, small, template, view):
    rng = np.random.default_rng(5)
    big = ms.with_cheese_at(with_maze(template, random_maze(25, rng)), (22, 20))
    pyplot_before = "matplotlib.pyplot" in sys.modules
    backend = matplotlib.get_backend() if pyplot_before else None
    for name, state in (("small", small), ("big", big)):
        out = mr.save_maze_png(tmp_path / "pics" / f"{name}-{view}.png", state, view=view,
                               title=f"{name} {view}", **overlays(state))
        assert out == tmp_path / "pics" / f"{name}-{view}.png"
        check_png(out)
    assert sorted(p.name for p in (tmp_path / "pics").iterdir()) == [f"big-{view}.png", f"small-{view}.png"]
    # no pyplot figures or backend switches
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_before
    if pyplot_before:
        assert matplotlib.get_backend() == backend
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def test_png_from_maze_state_and_inner_grid(tmp_path, small):
    check_png(mr.save_maze_png(tmp_path / "a.png", ms.MazeState.from_bytes(small), size_inches=3), side=300)
    inner = ms.inner_grid(small)
    out = mr.save_maze_png(tmp_path / "b.png", inner, activation=np.ones((16, 16)), world_dim=25)
    check_png(out)


def test_png_errors_leave_no_files(tmp_path, small):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="view"):
        mr.save_maze_png(target, small, view="top")
    with pytest.raises(ValueError, match="agent view"):
        mr.save_maze_png(target, ms.inner_grid(small), view="agent")
    with pytest.raises(ValueError, match="world_dim"):
        mr.save_maze_png(target, ms.inner_grid(small), activation=np.ones((16, 16)))
    with pytest.raises(ValueError, match="square"):  # fails while drawing: the old file survives
        mr.save_maze_png(target, small, activation=np.ones((4, 5)))
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.png"]
    check_png(mr.save_maze_png(target, small))  # replaces the old file
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
