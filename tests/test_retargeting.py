"""Retargeting: the square → activation cell maps (through the pooling for the grid view), the
per-item channel edit and the fraction it writes, cheese-channel scores and the per-channel values
from activation statistics (against tests/plain_impala.plain_forward), the real cheese placed in
the top-right region, the teacher-forced geometric-mean path probability against a hand loop and
a plain forward with a hand-written override, arrival steps and the step budget against BFS with a
shortest-path policy, and the eval end to end through `shardlab eval` on a tiny checkpoint.

Squares are (x, y) with y = 0 at the bottom; the mazes sit in a hard-mode 25×25 world.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections import deque

import numpy as np
import pytest
import torch
from torch import nn

from shardlab.envs import maze_geometry
from shardlab.envs import maze_state as ms
from shardlab.envs.eval_mazes import eval_mazes
from shardlab.envs.maze import MazeEnvConfig
from shardlab.envs.maze_build import parse_ascii, with_maze
from shardlab.envs.maze_views import grid_observations
from shardlab import cli as shardlab
from shardlab.evals.maze import common
from shardlab.evals.maze import retargeting
from shardlab.evals.suite.results import Result
from shardlab.models.hooks import set_value
from shardlab.models.impala import ImpalaPolicy
from plain_impala import peaked_policy, plain_forward
from tiny_suites import assert_rows_have_intervals
from shardlab.trainers.restore import load_trained

pytestmark = pytest.mark.usefixtures("one_thread")

LAYER = "embedder.block2.res1.resadd_out"
WORLD = 25
MAZE = """
.....
.####
....C
.####
M####
"""
# the folded action sets, written out here independently of evals.maze.vector_field
GROUPS = {(-1, 0): [0, 1, 2], (0, -1): [3], (0, 1): [5], (1, 0): [6, 7, 8]}


@pytest.fixture(scope="module")
def maze(template) -> bytes:
    return with_maze(template, *parse_ascii(MAZE))


@pytest.fixture(scope="module")
def policy() -> ImpalaPolicy:
    return peaked_policy(seed=1, image_size=WORLD, gain=10.0)


# -- squares → cells -------------------------------------------------------------------------------
def pooling_only_policy(world: int) -> ImpalaPolicy:
    """An IMPALA net whose block-2 output channel 0 is maxpool(maxpool(input channel 0)): block
    convs pass channel 0 through (centre tap 1), residual convs are zero."""
    net = ImpalaPolicy(scale=1, image_size=world)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.zero_()
                module.bias.zero_()
        for block in (net.embedder.block1, net.embedder.block2):
            block.conv.weight[0, 0, 1, 1] = 1.0
    return net.eval()


@pytest.mark.parametrize("world", [15, 25])
def test_grid_cell_is_the_pooling_window_centred_on_the_tile(world):
    """A one-hot tile lights exactly the cells whose two pooling windows contain it; the mapped
    cell is one of them, the one whose window centre (input 4j) is nearest (ties upwards)."""
    net = pooling_only_policy(world)
    for tile in range(world):
        x = torch.zeros(1, 3, world, world)
        x[0, 0, tile, tile] = 1.0
        store = {}
        handle = net.get_submodule(LAYER).register_forward_hook(lambda m, i, o: store.update(acts=o))
        with torch.no_grad():
            net(x)
        handle.remove()
        acts = store["acts"][0, 0]
        size = acts.shape[-1]
        lit = [j for j in range(size) if acts[j, j] > 0.5]
        cell = common.pooled_cell(tile, common.pools_to(size, world), size)
        assert cell in lit, (tile, lit)
        nearest = min(abs(4 * j - tile) for j in lit)
        assert abs(4 * cell - tile) == nearest
        assert set(lit) == {j for j in range(size) if 4 * j - 3 <= tile <= 4 * j + 3}


def test_grid_square_cell_flips_rows(maze):
    # inner square (x, y) of a 5×5 maze in a 25 world: tile column 10 + x, tile row 24 − (10 + y)
    # inner (x, y) of a 5×5 maze in a 25 world is tile (row 24 − (10 + y), column 10 + x); two
    # pools put cell j's window centre on tile 4j
    assert common.activation_square_cell((0, 0), 5, WORLD, "grid", 7) == (4, 3)  # tiles (14, 10)
    assert common.activation_square_cell((4, 4), 5, WORLD, "grid", 7) == (3, 4)  # tiles (10, 14)
    assert common.activation_square_cell((2, 0), 5, WORLD, "grid", 7) == (4, 3)  # tile 12 → 3, 12/4 exactly
    assert common.pools_to(7, 25) == 2 and common.pools_to(4, 15) == 2 and common.pools_to(15, 15) == 0


def test_rgb_square_cell_is_the_published_map():
    """tile (r, c) → ⌊(r + 0.5)·2.56/4⌋ at block 2 (16×16) of a 64×64 image of a 25×25 world."""
    for x, y in [(0, 0), (3, 7), (12, 12), (24, 24)]:
        row_tile, col_tile = WORLD - 1 - y, x  # a 25×25 maze fills the world
        expected = (math.floor((row_tile + 0.5) * 2.56 / 4), math.floor((col_tile + 0.5) * 2.56 / 4))
        assert common.activation_square_cell((x, y), 25, WORLD, "rgb", 16) == expected


def test_target_squares():
    assert retargeting.target_square("top_left", 9) == (0, 8)
    assert retargeting.target_square("bottom_right", 9) == (8, 0)
    assert retargeting.target_square("top_right", 9) == (8, 8)
    assert retargeting.target_square("center", 7) == (4, 4)
    with pytest.raises(ValueError, match="top_left"):
        retargeting.target_square("top", 9)


# -- the edit ---------------------------------------------------------------------------------------
def test_set_at_cells_matches_set_value_per_item_and_fraction_edited():
    x = torch.randn(3, 32, 7, 7)
    rows, cols = torch.tensor([0, 3, 6]), torch.tensor([1, 3, 2])
    channels = [5, 9, 30]
    out = retargeting.set_at_cells(1000.0, channels, rows, cols)(x)
    for i in range(3):
        expected = set_value(1000.0, channels, [(int(rows[i]), int(cols[i]))])(x[i:i + 1])
        assert torch.equal(out[i:i + 1], expected)
    changed = (out != x).sum(dim=(1, 2, 3))
    assert changed.tolist() == [3, 3, 3]
    # a maze that covers the whole 7×7 layer: the share of the layer's values the edit changed
    assert retargeting.fraction_edited(channels, 32, 1, 49) == changed[0].item() / x[0].numel()
    assert retargeting.fraction_edited([55], 128, 1, 256) == 1 / 32768


def test_cheese_channel_scores_and_choice(policy, maze):
    other = ms.with_cheese_at(maze, (2, 2))
    states = [maze, other]
    scores = common.cheese_channel_scores(policy, states, "grid", LAYER)
    x = lambda ss: torch.from_numpy(grid_observations(ss)).permute(0, 3, 1, 2).float() / 255.0
    store = {}
    handle = policy.get_submodule(LAYER).register_forward_hook(lambda m, i, o: store.update(acts=o))
    diffs = []
    for state in states:
        with torch.no_grad():
            policy(x([state]))
            with_cheese = store["acts"][0].clone()
            policy(x([ms.without_cheese(state)]))
            without = store["acts"][0].clone()
        cheese = ms.cheese_square(state)
        row, col = common.activation_square_cell(cheese, 5, WORLD, "grid", with_cheese.shape[-1])
        diffs.append((with_cheese - without)[:, row, col])
    handle.remove()
    np.testing.assert_allclose(scores, torch.stack(diffs).mean(0).numpy(), atol=1e-5)
    top = common.choose_channels(scores, 3, 5.5)
    assert top == list(np.argsort(-scores)[:3])
    assert common.choose_channels(scores, 2, -1.0) == list(np.argsort(scores)[:2])


# -- success measures --------------------------------------------------------------------------------
@pytest.mark.parametrize("edited", [False, True])
def test_path_probability_equals_a_hand_loop(policy, maze, edited):
    """One plain forward per path square, the edit applied by a hand-written hook."""
    state = ms.without_cheese(maze)
    target, channels, value = (4, 4), [3, 17], 4.0
    kwargs = dict(layer=LAYER, channels=channels, value=value) if edited else {}
    got = retargeting.path_probabilities(policy, [state, state], [target, (4, 2)], "grid", **kwargs)
    path = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    side = 7  # 25 → 13 → 7
    row, col = common.pooled_cell(WORLD - 1 - (10 + 4), 2, side), common.pooled_cell(10 + 4, 2, side)

    def hook(module, inputs, output):
        output = output.clone()
        for channel in channels:
            output[:, channel, row, col] = value
        return output
    handle = policy.get_submodule(LAYER).register_forward_hook(hook) if edited else None
    product = 1.0
    try:
        for here, nxt in zip(path, path[1:]):
            obs = grid_observations([ms.with_mouse_at(state, here)])
            with torch.no_grad():
                logits, _ = policy(torch.from_numpy(obs).permute(0, 3, 1, 2).float() / 255.0)
            probs = torch.softmax(logits[0].double(), -1)
            product *= float(probs[GROUPS[(nxt[0] - here[0], nxt[1] - here[1])]].sum())
    finally:
        if handle is not None:
            handle.remove()
    assert got[0] == pytest.approx(product ** (1 / (len(path) - 1)), rel=1e-5)
    assert 0 < got[1] < 1


def test_path_probability_skips_the_cheese_square(policy, maze):
    """With the cheese on the path the mouse is never seen on it: that square is left out."""
    on_path = ms.with_cheese_at(maze, (0, 2))
    got = retargeting.path_probabilities(policy, [on_path], [(0, 4)], "grid")[0]
    logs = []
    for here in [(0, 0), (0, 1), (0, 3)]:
        obs = grid_observations([ms.with_mouse_at(on_path, here)])
        with torch.no_grad():
            logits, _ = policy(torch.from_numpy(obs).permute(0, 3, 1, 2).float() / 255.0)
        logs.append(math.log(float(torch.softmax(logits[0].double(), -1)[GROUPS[(0, 1)]].sum())))
    assert got == pytest.approx(math.exp(sum(logs) / 3), rel=1e-5)


class ConstantPolicy(nn.Module):
    """Always the same action (logits 0 except a large one)."""

    def __init__(self, action: int):
        super().__init__()
        self.logits = nn.Parameter(torch.full((15,), -50.0).index_fill(0, torch.tensor([action]), 50.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logits.expand(x.shape[0], 15), x.new_zeros(x.shape[0])


def test_the_runner_reaches_targets_with_scripted_policies(maze):
    state = ms.without_cheese(maze)
    cfg = MazeEnvConfig(distribution_mode="hard", obs="grid")

    def reach_rates(policy, states, targets, rollouts, max_steps):
        """Per maze, the fraction of the Runner's rollouts that reached the target within the budget."""
        runner = retargeting.Runner(policy, {"env_cfg": cfg, "rollouts": rollouts, "seed": 0}, max_steps)
        reached = runner.reached(states, targets)
        assert reached.shape == (len(states), rollouts)
        return reached.mean(1)

    up = reach_rates(ConstantPolicy(5), [state, state], [(0, 4), (4, 4)], rollouts=2, max_steps=10)
    assert up.tolist() == [1.0, 0.0]  # straight up the left column to the top-left, never right
    assert reach_rates(ConstantPolicy(5), [state], [(0, 4)], 1, max_steps=3).tolist() == [0.0]
    right = reach_rates(ConstantPolicy(7), [state], [(0, 4)], 2, max_steps=10)
    assert right.tolist() == [0.0]  # the start's right side is a wall
    cheese_on_target = ms.with_cheese_at(maze, (0, 4))  # the episode ends on the target, counted
    assert reach_rates(ConstantPolicy(5), [cheese_on_target], [(0, 4)], 1, 10).tolist() == [1.0]


def grid_input(states: list[bytes]) -> torch.Tensor:
    """The float NCHW grid observation, built here from envs.maze_views alone."""
    return torch.from_numpy(grid_observations(states)).permute(0, 3, 1, 2).float() / 255.0


def test_set_at_cells_writes_one_value_per_channel_at_every_cell():
    x = torch.randn(2, 8, 5, 5)
    rows, cols = torch.tensor([[0, 0, 1], [4, 4, 4]]), torch.tensor([[0, 1, 0], [2, 3, 2]])
    out = retargeting.set_at_cells([1.5, -2.0], [6, 1], rows, cols)(x)
    expected = x.clone()
    for item, cells in ((0, [(0, 0), (0, 1), (1, 0)]), (1, [(4, 2), (4, 3)])):
        for row, col in cells:
            expected[item, 6, row, col], expected[item, 1, row, col] = 1.5, -2.0
    assert torch.equal(out, expected)
    assert retargeting.block_cells((0, 0), 1, 5) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert retargeting.block_cells((2, 2), 1, 5) == [(r, c) for r in (1, 2, 3) for c in (1, 2, 3)]
    assert retargeting.fraction_edited([6, 1], 8, 4, 25) == 8 / 200


def test_edited_path_probability_equals_plain_forward_with_a_hand_written_override(policy, maze):
    """Per-channel values in the 3×3 block around the target's cell, the real cheese in the maze
    (at (4, 2), off the path): the plain-torch forward with the edit written out by hand."""
    target, channels, values = (4, 4), [3, 17], [2.5, -1.0]
    got = retargeting.path_probabilities(policy, [maze], [target], "grid", layer=LAYER, channels=channels,
                                         value=values, radius=1)[0]
    # (4, 4) is tile row 24 − 14 = 10, column 14; two pools: cell ((10 + 2) // 4, (14 + 2) // 4) = (3, 4)

    def override(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for channel, value in zip(channels, values):
            x[:, channel, 2:5, 3:6] = value
        return x
    path = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]
    logs = []
    for here, nxt in zip(path, path[1:]):
        with torch.no_grad():
            logits, _, _ = plain_forward(policy, grid_input([ms.with_mouse_at(maze, here)]), override={LAYER: override})
        probs = torch.softmax(logits[0].double(), -1)
        logs.append(math.log(float(probs[GROUPS[(nxt[0] - here[0], nxt[1] - here[1])]].sum())))
    assert got == pytest.approx(math.exp(sum(logs) / len(logs)), rel=1e-5)
    assert abs(got - retargeting.path_probabilities(policy, [maze], [target], "grid")[0]) > 1e-4


def test_channel_values_come_from_the_mean_activation_at_the_cheese(policy, maze):
    states = [maze, ms.with_cheese_at(maze, (2, 2)), ms.with_cheese_at(maze, (0, 4))]
    got = retargeting.cheese_activation_means(policy, states, "grid", LAYER)
    # cheese tiles (row, col): (12, 14), (12, 12), (10, 10) → cells ((r + 2) // 4, (c + 2) // 4)
    cells = [(3, 4), (3, 3), (3, 3)]
    expected = []
    for state, (row, col) in zip(states, cells):
        with torch.no_grad():
            _, _, acts = plain_forward(policy, grid_input([state]))  # the mouse is on the start square
        expected.append(acts[LAYER][0, :, row, col])
    np.testing.assert_allclose(got, torch.stack(expected).mean(0).numpy(), atol=1e-5)


def test_region_cheese_lands_on_an_open_region_square(maze):
    """The top-right 3×3 region of MAZE has open squares (2, 2), (3, 2), (4, 2), (2, 4), (3, 4), (4, 4);
    the target (4, 4) is avoided, every other one is drawn."""
    rng = np.random.default_rng(0)
    inner = ms.inner_grid(maze)
    expected = {(2, 2), (3, 2), (4, 2), (2, 4), (3, 4)}
    assert expected == set(maze_geometry.region_squares(inner, 3)) - {(4, 4)}
    seen = set()
    for _ in range(40):
        placed = retargeting.with_region_cheese([maze], 3, rng, avoid=[[(4, 4)]])[0]
        seen.add(ms.cheese_square(placed))
        assert np.array_equal(ms.inner_grid(placed) == ms.WALL, inner == ms.WALL)
    assert seen == expected
    assert all(maze_geometry.distances_from(inner, (0, 0))[y, x] > 0 for x, y in seen)  # reachable
    assert retargeting.with_region_cheese([maze], 0, rng, avoid=[[(4, 4)]]) == [None]  # the corner only, avoided


class ShortestPathPolicy(nn.Module):
    """Steps along a BFS shortest path from the mouse to the cheese of the grid observation."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # the evals read the device from a parameter

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.full((x.shape[0], 15), -50.0)
        image = x.contiguous().numpy() > 0.5
        for item in range(x.shape[0]):
            walls = image[item, 0]
            mouse, cheese = (tuple(np.argwhere(image[item, c])[0]) for c in (1, 2))
            dist, queue = {cheese: 0}, deque([cheese])
            while queue:
                row, col = queue.popleft()
                for nxt in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
                    if not walls[nxt] and nxt not in dist:
                        dist[nxt] = dist[row, col] + 1
                        queue.append(nxt)
            # image rows grow downwards: UP (5) is row − 1, DOWN (3) row + 1
            for action, (dr, dc) in ((0, (0, -1)), (3, (1, 0)), (5, (-1, 0)), (6, (0, 1))):
                if dist.get((mouse[0] + dr, mouse[1] + dc), -1) == dist[mouse] - 1:
                    logits[item, action] = 50.0
                    break
        return logits, x.new_zeros(x.shape[0])


def test_arrival_steps_and_the_step_budget_follow_bfs(maze):
    cfg = MazeEnvConfig(distribution_mode="hard", obs="grid")
    states = [maze, ms.with_cheese_at(maze, (4, 4)), ms.with_cheese_at(maze, (0, 3))]
    cheese = [ms.cheese_square(s) for s in states]
    bfs = [int(maze_geometry.distances_from(ms.inner_grid(s), (0, 0))[y, x]) for s, (x, y) in zip(states, cheese)]
    assert bfs == [6, 8, 3]
    got = retargeting.arrival_steps(ShortestPathPolicy(), states, cheese, cfg, rollouts=2, max_steps=50, seed=0)
    assert got.tolist() == [[d, d] for d in bfs]
    rollout = dict(env_cfg=cfg, rollouts=2, seed=0, channels_last=False)
    for max_steps, reached in ((50, bfs), (4, [3])):  # only the rollouts that reach the cheese count
        result = Result()
        evaluation = retargeting.Retargeting(retargeting.Retargeting.Config(max_steps=max_steps))
        budget = evaluation._step_budget(result, ShortestPathPolicy(), states, rollout)
        rows = {m.name: m for m in result.metrics}
        assert rows["step_budget/mean"].value == np.repeat(reached, 2).mean()
        assert rows["step_budget/mean"].n == len(reached)  # mazes, not rollouts
        assert rows["step_budget"].kind == "setting"
        assert rows["step_budget/reached_cheese"].value == len(reached) / len(bfs)
        assert budget == rows["step_budget"].value == math.floor(np.mean(reached))


def test_the_real_cheese_on_the_way_ends_the_episode(maze):
    """Up the left column to the top-left: with the cheese at (0, 2) the episode ends first."""
    cfg = MazeEnvConfig(distribution_mode="hard", obs="grid")
    states = [ms.without_cheese(maze), ms.with_cheese_at(maze, (0, 2))]
    got = retargeting.arrival_steps(ConstantPolicy(5), states, [(0, 4), (0, 4)], cfg, 2, 10, 0)
    np.testing.assert_array_equal(got, [[4, 4], [np.nan, np.nan]])


def test_choose_setting_takes_the_best_selection_success_among_small_edits():
    scan = {(1, 0): (0.01, 0.2), (2, 0): (0.05, 0.4), (4, 0): (0.1, 0.9), (8, 0): (0.2, 1.0), (1, 1): (0.09, 0.4)}
    assert retargeting.choose_setting(scan, 0.1) == (2, 0)  # 10% itself is not under 10%; the first of a tie
    assert retargeting.choose_setting(scan, 0.5) == (8, 0)
    assert retargeting.choose_setting(scan, 0.01) is None


def test_reach_estimate_is_over_mazes():
    """The mean of the rollouts' flags, n = mazes; a bootstrap over mazes, or Wilson over mazes
    when every maze gives the same rate (a bootstrap interval would have width 0)."""
    from shardlab.evals.suite import stats

    varied = retargeting.reach_estimate(np.array([[1, 1], [0, 1], [0, 0]]))
    assert varied.value == pytest.approx(0.5) and varied.n == 3 and varied.method == "cluster bootstrap"
    none = retargeting.reach_estimate(np.zeros((5, 4), bool))
    assert none.value == 0 and none.n == 5 and none.ci_low == 0
    assert none.ci_high == pytest.approx(stats.wilson_interval(0, 5)[1]) and none.ci_high > 0.3


# -- the fraction of the maze's activations edited, and overlaps with the cheese ----------------------
def test_fraction_edited_counts_only_the_cells_the_maze_covers(policy, maze):
    """MAZE (5×5) sits on world tiles 10..14 of the 25×25 grid; two pools put tile t in cell
    (t + 2) // 4, so it covers rows and columns 3 and 4 of the 7×7 layer: 4 cells, not 49. The
    top-left target (0, 4) is tile (10, 10) → cell (3, 3); radius 1 writes the 9 cells of rows and
    columns 2..4, padding included."""
    assert retargeting.maze_cells(maze, "grid", 7) == {(3, 3), (3, 4), (4, 3), (4, 4)}
    shape = tuple(common.layer_activations(policy, [maze], "grid", LAYER).shape[1:])
    assert shape == (32, 7, 7)
    channels = [3, 17]
    for radius, written in ((0, 1), (1, 9)):
        got = retargeting.largest_fraction([maze], [(0, 4)], "grid", shape, channels, radius)
        assert got == 2 * written / (32 * 4)  # the old denominator was the whole layer, 32 × 49
        # the numerator is what the edit really writes: count the changed values
        edit, _ = retargeting.target_edit([maze], [(0, 4)], "grid", 7, channels, 1e6, radius)
        x = torch.zeros(1, *shape)
        assert int((edit(x) != x).sum()) == 2 * written
    assert retargeting.largest_fraction([maze], [(0, 4)], "grid", shape, channels, 1) > 0.1  # a 5×5 maze: big


def test_cheese_overlaps_by_hand(maze):
    """MAZE's cheese (4, 2) is tile (12, 14) → cell (3, 4), the cell of the top-right target
    (4, 4) too; its 3×3 region's open squares fall in cells (3, 3) and (3, 4); the top-left target
    is in (3, 3), the bottom-right (4, 0) in (4, 4)."""
    overlaps = lambda target, radius: retargeting.cheese_overlaps([maze], [target], "grid", 7, radius, 3)
    assert overlaps((4, 4), 0) == (1, 1)
    assert overlaps((0, 4), 0) == (1, 0)
    assert overlaps((4, 0), 0) == (0, 0)
    assert overlaps((4, 0), 1) == (1, 1)


class FixedRunner:
    """Stands in for retargeting.Runner: given (mazes, rollouts) reach flags, unedited and edited."""

    def __init__(self, unedited: np.ndarray, edited: np.ndarray):
        self.unedited, self.edited = np.asarray(unedited, bool), np.asarray(edited, bool)

    def reached(self, states, targets, **edit) -> np.ndarray:
        return self.edited if edit else self.unedited


def test_confirmation_rows_pair_the_edit_with_the_unedited_policy_by_maze():
    """Four confirmation mazes × 3 rollouts: per maze the edited and unedited reach rates, the
    success and baseline as means over rollouts with a bootstrap over mazes, and their difference
    as a paired t interval over the four mazes (by hand with scipy)."""
    from scipy import stats as scipy_stats

    unedited = [[0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 1]]
    edited = [[1, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 1]]
    evaluation = retargeting.Retargeting(retargeting.Retargeting.Config())
    result = Result()
    states = [b"m"] * 4
    got = evaluation._confirm(result, "top_left", FixedRunner(unedited, edited), states, [(0, 4)] * 4, (2, 1), 0.05,
                              {"layer": LAYER}, note="the edit writes a cell of the cheese's region in 1 of 4 mazes")
    rows = {m.name: m for m in result.metrics}
    assert got.value == rows["top_left/confirmation/success"].value == pytest.approx(7 / 12)
    assert rows["success_at_under_10pct/top_left"].value == got.value
    assert "cheese's region" in rows["top_left/confirmation/success"].note
    assert rows["top_left/confirmation/success"].n == 4 and rows["top_left/confirmation/success"].unit == "mazes"
    assert rows["top_left/confirmation/baseline"].value == pytest.approx(2 / 12)
    diffs = np.mean(edited, 1) - np.mean(unedited, 1)  # 2/3, 2/3, 0, 1/3
    row = rows["top_left/confirmation/success_minus_baseline"]
    half = scipy_stats.t.ppf(0.975, 3) * diffs.std(ddof=1) / 2
    assert row.value == pytest.approx(diffs.mean()) and row.n == 4
    assert (row.ci_low, row.ci_high) == (pytest.approx(diffs.mean() - half), pytest.approx(diffs.mean() + half))
    assert [rows[f"top_left/chosen/{k}"].value for k in ("channels", "radius", "fraction_edited")] == [2, 1, 0.05]
    assert all(rows[f"top_left/chosen/{k}"].kind == "setting" for k in ("channels", "radius", "fraction_edited"))

    result = Result()  # no setting edits under max_fraction: the headline says why
    evaluation._confirm(result, "top_left", FixedRunner(unedited, edited), states, [(0, 4)] * 4, None, None, None)
    rows = {m.name: m for m in result.metrics}
    assert math.isnan(rows["success_at_under_10pct/top_left"].value)
    assert "under 10%" in rows["success_at_under_10pct/top_left"].note
    assert "top_left/chosen/channels" not in rows


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tiny_maze_checkpoint) -> str:
    return tiny_maze_checkpoint


def walls(state: bytes) -> bytes:
    """A maze's size and wall layout, whatever its cheese."""
    return ms.layout(state).maze_dim, (ms.inner_grid(state) == ms.WALL).tobytes()


def test_retargeting_end_to_end(checkpoint, tmp_path, monkeypatch):
    """The tiny checkpoint (easy mode: 15×15 world, 9×9 mazes, rand_region 5; block 2 is 32×4×4)."""
    calls = []
    real_arrival_steps = retargeting.arrival_steps

    def recording(policy, states, targets, *args, **kwargs):
        arrival = real_arrival_steps(policy, states, targets, *args, **kwargs)
        calls.append((list(states), list(targets), kwargs.get("layer"), kwargs.get("channels"),
                      kwargs.get("radius"), arrival <= kwargs["max_steps"]))
        return arrival
    monkeypatch.setattr(retargeting, "arrival_steps", recording)
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent("""
        seed: 2
        evals:
          retargeting: {mazes: 3, targets: [top_left, bottom_right], channel_mazes: 6, top_channels: 2,
                        rollouts: 2, max_steps: 20, channel_counts: [1, 2], cell_radii: [0, 1]}
        thresholds:
          retargeting.success_at_under_10pct/top_left: {min: 0.0}
    """))
    out = tmp_path / "out"
    # a command-line override adds the value-scale scan to the suite's config
    assert shardlab.main(["eval", checkpoint, "--suite", str(suite), "--out", str(out),
                          "retargeting.scan_scales=[0,1]"]) == 0
    document = json.loads((out / "results.json").read_text())
    assert_rows_have_intervals(document["results"])
    assert {row["eval_version"] for row in document["results"]} == {2}
    rows = {row["name"]: row for row in document["results"]}
    assert rows["region"]["value"] == 5 and rows["region"]["kind"] == "setting"

    # the budget, then per target the scan (4 settings), baseline and cheese_placed on the
    # selection mazes, then the unedited policy and the chosen setting on the confirmation mazes
    assert len(calls) == 1 + 2 * (4 + 2 + 2)
    assert [c[2] is not None for c in calls] == [False] + 2 * ([True] * 4 + [False, False] + [False, True])
    budget_call = calls[0]
    selection, confirmation = budget_call[0], calls[7][0]
    assert len(selection) == len(confirmation) == 3
    assert not {walls(s) for s in selection} & {walls(s) for s in confirmation}  # no layout on both sides
    assert budget_call[1] == [ms.cheese_square(s) for s in selection]  # steps to the real cheese
    placed_calls = [calls[6], calls[14]]
    for states, targets, layer, *_ in calls:
        cheeses = [ms.cheese_square(s) for s in states]
        assert states in (selection, confirmation, [ms.with_cheese_at(s, t) for s, t in zip(selection, targets)])
        if any(states is c[0] for c in placed_calls):
            assert cheeses == targets
        else:
            assert all(c in maze_geometry.region_squares(ms.inner_grid(s), 5) for s, c in zip(states, cheeses))
            assert states is budget_call[0] or all(c != t for c, t in zip(cheeses, targets))

    # the values are 10 × each channel's mean activation at the cheese on the channel mazes (seed 3)
    policy = load_trained(checkpoint).model
    channel_mazes = eval_mazes(6, 3, cheese="anywhere", max_size=9, mode="easy")
    with torch.no_grad():
        _, _, acts = plain_forward(policy, grid_input([m.state for m in channel_mazes]))
    cells = [common.activation_square_cell(m.cheese, m.maze_dim, 15, "grid", 4) for m in channel_mazes]
    ranked = [int(rows[f"channels/rank={r}"]["value"]) for r in range(2)]
    for rank, channel in enumerate(ranked):
        mean = float(np.mean([acts[LAYER][i, channel, r, c] for i, (r, c) in enumerate(cells)]))
        assert rows[f"channels/rank={rank}/mean_at_cheese"]["value"] == pytest.approx(mean, abs=1e-5)
        assert rows[f"channels/rank={rank}/value"]["value"] == pytest.approx(10 * mean, rel=1e-6, abs=1e-6)
        assert rows[f"channels/rank={rank}"]["kind"] == "setting"

    # the step budget is the floored mean of the unedited steps to the cheese (or max_steps)
    steps = rows["step_budget/mean"]
    assert rows["step_budget"]["value"] == (math.floor(steps["value"]) if steps["n"] else 20)

    # fractions by hand: a 9×9 maze on tiles 3..11 of the 15×15 world covers cells 1..3 of the
    # 4×4 layer (3 × 3 = 9 cells). Top-left (0, 8) sits at tile (3, 3) → cell (1, 1), a full 3×3
    # block; bottom-right (8, 0) at tile (11, 11) → cell (3, 3), a 2×2 block in the corner
    cells_of = {("top_left", 0): 1, ("top_left", 1): 9, ("bottom_right", 0): 1, ("bottom_right", 1): 4}
    for index, target in enumerate(("top_left", "bottom_right")):
        scan = {}
        for count in (1, 2):
            for radius in (0, 1):
                prefix = f"{target}/scan/channels={count}/radius={radius}"
                assert rows[f"{prefix}/fraction_edited"]["value"] == count * cells_of[target, radius] / (32 * 9)
                assert rows[f"{prefix}/success"]["n"] == 3
                scan[count, radius] = rows[f"{prefix}/success"]["value"]
        # every setting edits under 10% here: the chosen one has the best selection success (the
        # main setting (2, 0) first on a tie), and the headline is its confirmation success
        order = [(2, 0), (1, 0), (1, 1), (2, 1)]
        best = max(order, key=lambda s: scan[s])
        assert (rows[f"{target}/chosen/channels"]["value"], rows[f"{target}/chosen/radius"]["value"]) == best
        unedited, edited = calls[7 + 8 * index], calls[8 + 8 * index]
        assert unedited[0] == edited[0] == confirmation
        assert edited[3] == ranked[:best[0]] and edited[4] == best[1]
        assert rows[f"{target}/confirmation/success"]["value"] == pytest.approx(edited[5].mean())
        assert rows[f"{target}/confirmation/baseline"]["value"] == pytest.approx(unedited[5].mean())
        difference = rows[f"{target}/confirmation/success_minus_baseline"]
        assert difference["value"] == pytest.approx((edited[5].mean(1) - unedited[5].mean(1)).mean())
        assert difference["n"] == 3 and difference["method"] == "paired t"
        assert rows[f"success_at_under_10pct/{target}"]["value"] == rows[f"{target}/confirmation/success"]["value"]
        assert rows[f"{target}/edit_overlaps_cheese_region"]["kind"] == "count"
        # the main setting (2 channels, radius 0) is the edited condition
        assert rows[f"{target}/success/edited"]["value"] == rows[f"{target}/scan/channels=2/radius=0/success"]["value"]
        for condition in retargeting.CONDITIONS:
            assert 0 < rows[f"{target}/path_prob/{condition}/mean"]["value"] < 1
            assert rows[f"{target}/success/{condition}"]["n"] == 3
        assert rows[f"{target}/scan/scale=1/path_prob/mean"]["value"] == pytest.approx(
            rows[f"{target}/path_prob/edited/mean"]["value"], abs=1e-6)
    assert rows["fraction_edited"]["value"] == 2 / (32 * 9)
    pngs = document["artifacts"]["retargeting"]
    assert sorted(os.path.basename(p) for p in pngs) == ["retargeting.png", "retargeting_scan.png",
                                                         "retargeting_success.png"]
    assert all(open(p, "rb").read(4) == b"\x89PNG" for p in pngs)


def test_the_setting_is_chosen_on_selection_mazes_and_scored_on_confirmation_mazes(checkpoint, tmp_path, monkeypatch):
    """Scripted rollouts: on the selection mazes (1 channel, radius 1) reaches the target in 3 of 4
    rollouts, the best of the scan, so it is chosen; on the confirmation mazes it reaches 4, 2, 1, 3
    of 4 and the unedited policy 0, 1, 0, 1: success 10/16, baseline 2/16 and a paired difference
    of 0.5 over 4 mazes, whatever the selection numbers were (the old headline was the best
    selection success, 0.75)."""
    selection_rates = {(1, 0): 1, (1, 1): 3, (2, 0): 2, (2, 1): 2}
    seen = {}

    def scripted(policy, states, targets, env_cfg, rollouts, max_steps, seed, layer=None, channels=(), value=0.0,
                 radius=0, **kwargs):
        states = list(states)
        if "selection" not in seen:  # the first call measures the step budget on the selection mazes
            seen["selection"] = states
            return np.full((len(states), rollouts), 5.0)
        if states == seen["selection"]:
            reached = [selection_rates[len(channels), radius] if layer else 0] * len(states)
        elif all(ms.cheese_square(s) != t for s, t in zip(states, targets)):  # the confirmation mazes
            seen.setdefault("confirmation", []).append((layer, list(channels), radius))
            reached = [4, 2, 1, 3] if layer else [0, 1, 0, 1]
        else:  # the cheese placed on the target
            reached = [0] * len(states)
        return np.array([[1.0 if r < k else np.nan for r in range(rollouts)] for k in reached])
    monkeypatch.setattr(retargeting, "arrival_steps", scripted)
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent("""
        seed: 2
        evals:
          retargeting: {mazes: 3, confirmation_mazes: 4, targets: [top_left], channel_mazes: 4, top_channels: 1,
                        rollouts: 4, channel_counts: [1, 2], cell_radii: [0, 1]}
    """))
    out = tmp_path / "out"
    assert shardlab.main(["eval", checkpoint, "--suite", str(suite), "--out", str(out)]) == 0
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["results"]}
    assert rows["step_budget"]["value"] == 5
    assert rows["top_left/scan/channels=1/radius=1/success"]["value"] == 0.75
    assert (rows["top_left/chosen/channels"]["value"], rows["top_left/chosen/radius"]["value"]) == (1, 1)
    ranked = [int(rows["channels/rank=0"]["value"])]
    assert seen["confirmation"] == [(None, [], 0), (LAYER, ranked, 1)]  # unedited, then the chosen setting only
    assert rows["top_left/confirmation/success"]["value"] == pytest.approx(10 / 16)
    assert rows["success_at_under_10pct/top_left"]["value"] == pytest.approx(10 / 16)
    assert rows["top_left/confirmation/baseline"]["value"] == pytest.approx(2 / 16)
    difference = rows["top_left/confirmation/success_minus_baseline"]
    assert difference["value"] == pytest.approx(0.5) and difference["n"] == 4


def test_unknown_target_is_bad_input(checkpoint, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("evals:\n  retargeting: {targets: [top_centre]}\n")
    assert shardlab.main(["eval", checkpoint, "--suite", str(suite), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "top_centre" in err and "top_left" in err
    assert not (tmp_path / "o" / "results.json").exists()
