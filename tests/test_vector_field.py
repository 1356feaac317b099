"""Vector fields: folding the 15 procgen actions into five moves, one batched forward pass over
observations with the mouse on every open square, and field differences.

Squares are (x, y) in inner-maze coordinates, y = 0 at the bottom; observation row 0 is the top.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from shardlab.envs import maze_state as ms
from shardlab.envs.maze_build import parse_ascii, with_maze
from shardlab.envs.maze_generate import random_maze
from shardlab.envs.maze_views import render_rgb
from shardlab.evals.maze.vector_field import (ACTION_GROUPS, DOWN, FOLDED_ACTIONS, LEFT, NOOP, RIGHT, UP,
                                              VectorField, fold_actions, mouse_squares, vector_field,
                                              vector_field_diff)
from shardlab.models.impala import ImpalaPolicy, preprocess

pytestmark = pytest.mark.usefixtures("one_thread")

WORLD = 25  # hard mode
MAZE = """
.....
.###.
...#C
##.#.
M....
"""
# the procgen action sets of each move, written out independently of envs.maze's move table
EXPECTED_GROUPS = {LEFT: {0, 1, 2}, DOWN: {3}, UP: {5}, RIGHT: {6, 7, 8}, NOOP: {4, 9, 10, 11, 12, 13, 14}}


@pytest.fixture(scope="module")
def small(template) -> bytes:
    inner, mouse = parse_ascii(MAZE)
    return with_maze(template, inner, mouse)


def world_cell(square, maze_dim: int, world: int = WORLD) -> tuple[int, int]:
    """(row from the top, column) of an inner square in a grid observation."""
    margin = (world - maze_dim) // 2
    return world - 1 - (margin + square[1]), margin + square[0]


class TablePolicy(nn.Module):
    """Grid-observation policy whose logits are a table row chosen by the mouse's cell (channel 1)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mouse = x[:, 1].flatten(1)  # one 1.0 per observation, at the mouse
        return mouse @ self.table, mouse.sum(1)


class TinyConv(nn.Module):
    """A small random network for 64×64 RGB observations."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.fc = nn.Linear(4 * 16 * 16, 15)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.flatten(torch.relu(self.conv(x)).contiguous(), 1)
        return self.fc(hidden), hidden.sum(1)


def capture_inputs(module: nn.Module) -> list[torch.Tensor]:
    """Record every forward call's input batch."""
    seen: list[torch.Tensor] = []
    module.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    return seen


# -- folding ----------------------------------------------------------------------------------
def test_fold_actions_maps_each_action_to_its_move():
    assert FOLDED_ACTIONS == ("left", "down", "up", "right", "noop")
    assert {i: set(g) for i, g in enumerate(ACTION_GROUPS)} == EXPECTED_GROUPS
    folded = fold_actions(torch.eye(15))  # row a: all mass on action a
    for move, actions in EXPECTED_GROUPS.items():
        for action in range(15):
            assert folded[action, move].item() == (1.0 if action in actions else 0.0)


def test_fold_actions_sums_to_one_and_keeps_leading_dims():
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(4, 7, 15, generator=generator) * 3, -1)
    folded = fold_actions(probs)
    assert folded.shape == (4, 7, 5)
    torch.testing.assert_close(folded.sum(-1), torch.ones(4, 7))
    torch.testing.assert_close(folded[..., RIGHT], probs[..., 6:9].sum(-1))
    with pytest.raises(ValueError, match="15 action"):
        fold_actions(torch.ones(3, 5))


# -- fields -----------------------------------------------------------------------------------
def test_field_matches_the_table_policy_square_by_square(small):
    generator = torch.Generator().manual_seed(1)
    table = torch.randn(WORLD * WORLD, 15, generator=generator) * 2
    field = vector_field(TablePolicy(table), small, obs="grid")
    inner = ms.inner_grid(small)
    assert field.squares == mouse_squares(inner)
    assert (4, 2) not in field.squares  # the cheese square is left out by default
    assert len(field.squares) == int((inner == ms.EMPTY).sum())
    assert field.probs.shape == (len(field.squares), 5) and field.obs == "grid"
    for square in field.squares:
        row, col = world_cell(square, 5)
        expected = fold_actions(torch.softmax(table[row * WORLD + col], -1)).numpy()
        np.testing.assert_allclose(field.at(square), expected, atol=1e-6)
    np.testing.assert_allclose(field.probs.sum(1), 1.0, atol=1e-6)
    assert field.cheese == (4, 2) and field.state == small


def test_arrows_point_the_way_the_policy_moves(small):
    # RIGHT on even world columns, UP on odd ones (margin 10, so the parity of x)
    table = torch.zeros(WORLD * WORLD, 15)
    cols = torch.arange(WORLD * WORLD) % WORLD
    table[cols % 2 == 0, 7] = 20.0
    table[cols % 2 == 1, 5] = 20.0
    field = vector_field(TablePolicy(table), small, obs="grid")
    for square, (dx, dy) in zip(field.squares, field.arrows):
        if square[0] % 2 == 0:
            assert dx == pytest.approx(1, abs=1e-6) and dy == pytest.approx(0, abs=1e-6), square
        else:  # up is +y: the arrow points to the top of the picture
            assert dx == pytest.approx(0, abs=1e-6) and dy == pytest.approx(1, abs=1e-6), square
    np.testing.assert_allclose(field.noop, 0, atol=1e-6)


def test_grid_observations_have_the_mouse_on_each_square(small):
    policy = TablePolicy(torch.zeros(WORLD * WORLD, 15))
    seen = capture_inputs(policy)
    field = vector_field(policy, small, obs="grid")
    assert len(seen) == 1
    batch = seen[0]
    assert batch.shape == (len(field.squares), 3, WORLD, WORLD)
    for k, square in enumerate(field.squares):
        mouse = batch[k, 1]
        assert int((mouse > 0).sum()) == 1
        assert mouse[world_cell(square, 5)].item() == 1.0
    # walls and cheese are the same in every observation
    assert (batch[:, 0] == batch[:1, 0]).all() and (batch[:, 2] == batch[:1, 2]).all()
    assert batch[0, 2][world_cell((4, 2), 5)].item() == 1.0


def test_rgb_observations_show_the_mouse_on_each_square(small):
    torch.manual_seed(0)
    policy = TinyConv()
    seen = capture_inputs(policy)
    field = vector_field(policy, small, obs="rgb")
    assert len(seen) == 1
    images = (seen[0].permute(0, 2, 3, 1) * 255).round().numpy().astype(np.uint8)
    k = len(field.squares)
    assert images.shape == (k, 64, 64, 3)
    assert len({image.tobytes() for image in images}) == k, "two squares gave the same image"
    # most observations do not have the mouse at a given pixel: the median is the mouse-free maze,
    # and each image differs from it inside its square's tile (the sprite is 1–2 pixels wide)
    background = np.median(images.astype(np.int16), axis=0)
    scale = 64 / WORLD
    for image, (x, y) in zip(images, field.squares):
        rows, cols = np.nonzero(np.abs(image - background).sum(-1) > 30)
        assert len(rows), (x, y)
        centre = ((10 + x + 0.5) * scale, (WORLD - 1 - (10 + y) + 0.5) * scale)  # margin 10
        assert abs(cols.mean() + 0.5 - centre[0]) <= scale / 2, (x, y)
        assert abs(rows.mean() + 0.5 - centre[1]) <= scale / 2, (x, y)


@pytest.mark.parametrize("obs", ["grid", "rgb"])
def test_one_batched_forward_pass(small, obs):
    torch.manual_seed(0)
    policy = TablePolicy(torch.zeros(WORLD * WORLD, 15)) if obs == "grid" else TinyConv()
    batches: list[int] = []
    policy.register_forward_hook(lambda _, args, out: batches.append(args[0].shape[0]))
    field = vector_field(policy, small, obs=obs)
    assert batches == [len(field.squares)]


def test_impala_policy_batch_matches_single_observations(small):
    torch.manual_seed(0)
    policy = ImpalaPolicy().to(memory_format=torch.channels_last)
    policy.train()
    field = vector_field(policy, small, obs="rgb")
    assert policy.training, "vector_field must restore the policy's training mode"
    assert field.probs.shape == (len(field.squares), 5)
    np.testing.assert_allclose(field.probs.sum(1), 1.0, atol=1e-5)
    for square in (field.squares[0], field.squares[-1]):
        image = render_rgb([ms.with_mouse_at(small, square)])
        with torch.inference_mode():
            logits, _ = policy.eval()(preprocess(torch.from_numpy(image)))
        expected = fold_actions(torch.softmax(logits, -1))[0].numpy()
        np.testing.assert_allclose(field.at(square), expected, atol=1e-5)


def test_full_size_maze(template):
    rng = np.random.default_rng(3)
    inner = random_maze(25, rng)
    state = ms.with_cheese_at(with_maze(template, inner), (24, 24))
    field = vector_field(TablePolicy(torch.randn(WORLD * WORLD, 15, generator=torch.Generator().manual_seed(2))),
                         state, obs="grid")
    assert len(field.squares) == int((inner != ms.WALL).sum()) - 1  # all open squares but the cheese
    np.testing.assert_allclose(field.probs.sum(1), 1.0, atol=1e-6)
    torch.manual_seed(0)
    rgb = vector_field(TinyConv(), state, obs="rgb")
    assert rgb.squares == field.squares and rgb.probs.shape == field.probs.shape


def test_options_and_errors(small):
    policy = TablePolicy(torch.zeros(WORLD * WORLD, 15))
    with_cheese = vector_field(policy, small, obs="grid", include_cheese=True)
    assert (4, 2) in with_cheese.squares
    assert vector_field(policy, ms.MazeState.from_bytes(small), obs="grid", device="cpu").state == small
    with pytest.raises(ValueError, match="obs must be"):
        vector_field(policy, small, obs="pixels")
    field = vector_field(policy, small, obs="grid")
    with pytest.raises(KeyError):
        field.at((1, 1))  # a wall
    with pytest.raises(ValueError, match="probs has shape"):
        VectorField(field.inner, field.squares, field.probs[:, :4])


# -- differences ------------------------------------------------------------------------------
def test_vector_field_diff(small, template):
    generator = torch.Generator().manual_seed(4)
    table_a, table_b = torch.randn(2, WORLD * WORLD, 15, generator=generator)
    a = vector_field(TablePolicy(table_a), small, obs="grid")
    b = vector_field(TablePolicy(table_b), small, obs="grid")
    np.testing.assert_array_equal(vector_field_diff(a, a).probs, 0)
    diff = vector_field_diff(a, b)
    assert diff.squares == a.squares
    np.testing.assert_allclose(diff.probs, a.probs - b.probs)
    np.testing.assert_allclose(diff.arrows, a.arrows - b.arrows, atol=1e-6)

    # cheese moved: the fields share all squares but the two cheese squares
    moved = vector_field(TablePolicy(table_b), ms.with_cheese_at(small, (0, 2)), obs="grid")
    diff = vector_field_diff(a, moved)
    assert set(diff.squares) == set(a.squares) - {(0, 2)}
    for square in diff.squares:
        np.testing.assert_allclose(diff.at(square), a.at(square) - moved.at(square))

    inner, mouse = parse_ascii(MAZE.replace("M....", "M..#."))
    other = vector_field(TablePolicy(table_b), with_maze(template, inner, mouse), obs="grid")
    with pytest.raises(ValueError, match="different mazes"):
        vector_field_diff(a, other)
