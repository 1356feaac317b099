"""Retargeting: the square → activation cell maps (through the pooling for the grid view), the
per-item channel edit and the fraction it writes, cheese-channel scores, the teacher-forced
geometric-mean path probability against a hand loop, rollout reach rates with scripted policies,
and the eval end to end through `shardlab eval` on a tiny checkpoint.

Squares are (x, y) with y = 0 at the bottom; the mazes sit in a hard-mode 25×25 world.
"""

from __future__ import annotations

import json
import math
import os
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from envs import maze_state as ms
from envs.maze import MazeEnvConfig
from envs.maze_build import parse_ascii, with_maze
from envs.maze_views import grid_observations
from evals import cli as shardlab
from evals import maze_interp_common as common
from evals import retargeting
from models.hooks import set_value
from models.impala import ImpalaPolicy
from plain_impala import peaked_policy

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
# the folded action sets, written out here independently of evals.vector_field
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
    assert retargeting.fraction_edited(channels, x.shape[1:]) == changed[0].item() / x[0].numel()
    assert retargeting.fraction_edited([55], (128, 16, 16)) == 1 / 32768


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


def test_reach_rates_with_scripted_policies(maze):
    state = ms.without_cheese(maze)
    cfg = MazeEnvConfig(distribution_mode="hard", obs="grid")
    up = retargeting.reach_rates(ConstantPolicy(5), [state, state], [(0, 4), (4, 4)], cfg, rollouts=2,
                                 max_steps=10, seed=0)
    assert up.tolist() == [1.0, 0.0]  # straight up the left column to the top-left, never right
    assert retargeting.reach_rates(ConstantPolicy(5), [state], [(0, 4)], cfg, 1, max_steps=3, seed=0).tolist() == [0.0]
    right = retargeting.reach_rates(ConstantPolicy(7), [state], [(0, 4)], cfg, 2, max_steps=10, seed=0)
    assert right.tolist() == [0.0]  # the start's right side is a wall
    cheese_on_target = ms.with_cheese_at(maze, (0, 4))  # the episode ends on the target, counted
    assert retargeting.reach_rates(ConstantPolicy(5), [cheese_on_target], [(0, 4)], cfg, 1, 10, 0).tolist() == [1.0]


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tiny_maze_checkpoint) -> str:
    return tiny_maze_checkpoint


def test_retargeting_end_to_end(checkpoint, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent("""
        seed: 2
        evals:
          retargeting: {mazes: 3, targets: [top_left, bottom_right], channel_mazes: 6, top_channels: 2,
                        rollouts: 2, max_steps: 20}
    """))
    out = tmp_path / "out"
    # a command-line override adds the value scan to the suite's config
    assert shardlab.main(["eval", checkpoint, "--suite", str(suite), "--out", str(out),
                          "retargeting.scan_values=[0,5.5]"]) == 0
    document = json.loads((out / "results.json").read_text())
    rows = {row["name"]: row for row in document["results"]}
    assert rows["fraction_edited"]["value"] == pytest.approx(2 / (32 * 4 * 4))  # 15×15 grid → 4×4 at block 2
    assert {rows["channels/rank=0"]["value"], rows["channels/rank=1"]["value"]} <= set(range(32))
    for target in ("top_left", "bottom_right"):
        for condition in retargeting.CONDITIONS:
            assert 0 < rows[f"{target}/path_prob/{condition}/mean"]["value"] < 1
            assert 0 <= rows[f"{target}/reach/{condition}"]["value"] <= 1
            assert rows[f"{target}/reach/{condition}"]["n"] == 3
        # the scan at the configured value repeats the edited condition exactly
        assert rows[f"{target}/scan/value=5.5/path_prob/mean"]["value"] == pytest.approx(
            rows[f"{target}/path_prob/edited/mean"]["value"], abs=1e-6)
        assert 0 < rows[f"{target}/scan/value=0/path_prob/mean"]["value"] < 1
    pngs = document["artifacts"]["retargeting"]
    assert sorted(os.path.basename(p) for p in pngs) == ["retargeting.png", "retargeting_scan.png"]
    assert all(open(p, "rb").read(4) == b"\x89PNG" for p in pngs)


def test_unknown_target_is_bad_input(checkpoint, tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("evals:\n  retargeting: {targets: [top_centre]}\n")
    assert shardlab.main(["eval", checkpoint, "--suite", str(suite), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "top_centre" in err and "top_left" in err
    assert not (tmp_path / "o" / "results.json").exists()
