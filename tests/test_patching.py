"""Activation patching on a small random policy: clean into clean and whole cut layers recover
exactly 1, single-channel and cheese-channel-at-cheese-cell recoveries match a plain-torch forward
with those values overridden by hand, the logit difference matches folded probabilities, the
clean/corrupted pairs differ only in the cheese, and the eval's defaults test the cheese channels
chosen on the checkpoint (the whole-layer patch is a control, recovery 1)."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from shardlab.envs import maze_state
from shardlab.envs.eval_mazes import eval_mazes
from shardlab.evals.maze.activation_patching import (ActivationPatching, Patcher, logit_difference, make_pairs,
                                                     patched_logits, recovery)
from shardlab.evals.maze.common import (PUBLISHED_CHEESE_CHANNELS, TrainEnv, cheese_channel_scores,
                                        cheese_channel_states, choose_channels, first_move, named_channels)
from shardlab.evals.maze.inputs import cached_activations, hook_points, interp_mazes
from shardlab.evals.maze.vector_field import ACTION_GROUPS
from shardlab.evals.suite.context import EvalContext
from shardlab.models.impala import ImpalaPolicy
from plain_impala import peaked_policy, plain_forward

pytestmark = pytest.mark.usefixtures("one_thread")

# a cut: the whole forward pass runs through it, so patching it all hands over the clean run
CUTS = [f"embedder.block{b}.{p}" for b in (1, 2, 3) for p in ("maxpool_out", "res1.resadd_out", "res2.resadd_out")] \
    + ["embedder.relu3_out", "embedder.relufc_out"]


@pytest.fixture(scope="module")
def model() -> ImpalaPolicy:
    return peaked_policy()  # logits of order 1, so logit differences are not ~0


@pytest.fixture(scope="module")
def states() -> list[bytes]:
    mazes = eval_mazes(6, 0, max_size=9, mode="easy", require_decision_square=True)
    return [maze_state.with_mouse_at(m.state, m.decision_square) for m in mazes]


@pytest.fixture(scope="module")
def pairs(model, states):
    return make_pairs(model, states, "grid", seed=0)


def test_pairs_move_only_the_cheese_to_a_square_with_another_first_move(pairs, states):
    assert pairs.without_corruption == 0 and len(pairs.clean) == len(states)
    difference = (pairs.clean != pairs.corrupted).any(dim=(2, 3))  # (N, channels wall/mouse/cheese)
    assert not difference[:, :2].any() and difference[:, 2].all()
    assert (pairs.towards_clean != pairs.towards_corrupted).all()
    for state, move in zip(states, pairs.towards_clean.tolist()):
        inner = maze_state.inner_grid(state)
        assert move == first_move(inner, maze_state.mouse_square(state), maze_state.cheese_square(state))


def test_logit_difference_is_the_log_ratio_of_folded_probabilities():
    logits = torch.randn(5, 15, generator=torch.Generator().manual_seed(0))
    a, b = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([3, 2, 1, 0, 4])
    probs = logits.double().softmax(-1)
    folded = lambda i, move: probs[i, list(ACTION_GROUPS[move])].sum()  # noqa: E731
    expected = torch.stack([folded(i, a[i]).log() - folded(i, b[i]).log() for i in range(5)])
    torch.testing.assert_close(logit_difference(logits, a, b), expected)


def test_recovery_formula():
    clean, corrupted = torch.tensor([2.0, 4.0]), torch.tensor([0.0, 0.0])
    assert recovery(torch.tensor([1.0, 2.0]), clean, corrupted) == pytest.approx(0.5)
    assert recovery(clean, clean, corrupted) == 1.0 and recovery(corrupted, clean, corrupted) == 0.0
    assert np.isnan(recovery(clean, clean, clean))


def test_patching_clean_into_clean_recovers_one_everywhere(model, pairs):
    moves = (pairs.towards_clean, pairs.towards_corrupted)
    layers = hook_points(model)
    clean_logits, clean_acts = cached_activations(model, pairs.clean, layers)
    corrupted_logits, _ = cached_activations(model, pairs.corrupted, [])
    clean_ld, corrupted_ld = logit_difference(clean_logits, *moves), logit_difference(corrupted_logits, *moves)
    assert (clean_ld - corrupted_ld).abs().max() > 1e-3
    for layer in layers:
        for channels in (None, [0]):
            logits = patched_logits(model, pairs.clean, layer, clean_acts[layer], channels)
            assert torch.equal(logits, clean_logits), layer
            assert recovery(logit_difference(logits, *moves), clean_ld, corrupted_ld) == pytest.approx(1.0, abs=1e-12)


def test_patching_a_whole_cut_layer_recovers_exactly_one(model, pairs):
    moves = (pairs.towards_clean, pairs.towards_corrupted)
    clean_logits, clean_acts = cached_activations(model, pairs.clean, CUTS)
    corrupted_logits, _ = cached_activations(model, pairs.corrupted, [])
    clean_ld, corrupted_ld = logit_difference(clean_logits, *moves), logit_difference(corrupted_logits, *moves)
    for layer in CUTS:
        logits = patched_logits(model, pairs.corrupted, layer, clean_acts[layer])
        torch.testing.assert_close(logits, clean_logits, rtol=1e-5, atol=1e-6)
        assert recovery(logit_difference(logits, *moves), clean_ld, corrupted_ld) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("layer,channel", [("embedder.block1.maxpool_out", 3), ("embedder.block2.res1.resadd_out", 7),
                                           ("embedder.block2.res2.relu1_out", 0), ("embedder.relufc_out", 11)])
def test_single_channel_recovery_matches_a_plain_forward(model, pairs, layer, channel):
    moves = (pairs.towards_clean, pairs.towards_corrupted)
    with torch.no_grad():
        clean_logits, _, clean_acts = plain_forward(model, pairs.clean)
        corrupted_logits, _, _ = plain_forward(model, pairs.corrupted)

        def override(activation):
            out = activation.clone()
            out[:, channel] = clean_acts[layer][:, channel]
            return out

        patched, _, _ = plain_forward(model, pairs.corrupted, override={layer: override})
    expected = recovery(logit_difference(patched, *moves), logit_difference(clean_logits, *moves),
                        logit_difference(corrupted_logits, *moves))
    _, acts = cached_activations(model, pairs.clean, [layer])
    logits = patched_logits(model, pairs.corrupted, layer, acts[layer], [channel])
    clean_ld = logit_difference(cached_activations(model, pairs.clean, [])[0], *moves)
    corrupted_ld = logit_difference(cached_activations(model, pairs.corrupted, [])[0], *moves)
    recovered = recovery(logit_difference(logits, *moves), clean_ld, corrupted_ld)
    assert recovered == pytest.approx(expected, rel=1e-3, abs=1e-4)


# -- the cheese-channel hypothesis -------------------------------------------------------------------
LAYER = "embedder.block2.res1.resadd_out"  # 4×4 for the 15-pixel grid view: two maxpools


def _cell(state: bytes, square: tuple[int, int]) -> tuple[int, int]:
    """The 4×4 block-2 cell of an inner square, worked out here from the grid view: world tile
    (row from the top, col), then two maxpool(3, 2, 1) halvings, cell j centred on tile 4j."""
    where = maze_state.layout(state)
    margin = (where.world_dim - where.maze_dim) // 2
    row, col = where.world_dim - 1 - (margin + square[1]), margin + square[0]
    return min((row + 2) // 4, 3), min((col + 2) // 4, 3)


def _cheese_cell_override(pairs, channels, radius, clean_acts):
    """An override writing the clean run's ``channels`` into the corrupted run at each pair's clean
    and corrupted cheese cells (and their neighbours within ``radius``), one value at a time."""
    def override(activation):
        out = activation.clone()
        for index, (state, moved) in enumerate(zip(pairs.clean_states, pairs.corrupted_cheese)):
            cells = set()
            for row, col in (_cell(state, maze_state.cheese_square(state)), _cell(state, moved)):
                cells |= {(r, c) for r in range(row - radius, row + radius + 1)
                          for c in range(col - radius, col + radius + 1) if 0 <= r < 4 and 0 <= c < 4}
            for channel in channels:
                for row, col in cells:
                    out[index, channel, row, col] = clean_acts[LAYER][index, channel, row, col]
        return out
    return override


def _plain_recovery(model, pairs, override=None):
    moves = (pairs.towards_clean, pairs.towards_corrupted)
    with torch.no_grad():
        clean, _, clean_acts = plain_forward(model, pairs.clean)
        corrupted, _, _ = plain_forward(model, pairs.corrupted)
        patched, _, _ = plain_forward(model, pairs.corrupted, override=override(clean_acts) if override else None)
    return recovery(logit_difference(patched, *moves), logit_difference(clean, *moves),
                    logit_difference(corrupted, *moves))


@pytest.fixture(scope="module")
def model64(model):
    return copy.deepcopy(model).double()  # float64 on both sides, so the recoveries agree to ~1e-12


@pytest.fixture(scope="module")
def pairs64(pairs):
    return dataclasses.replace(pairs, clean=pairs.clean.double(), corrupted=pairs.corrupted.double())


@pytest.mark.parametrize("radius", [0, 1])
def test_cheese_channel_recoveries_match_a_plain_forward_patched_by_hand(model64, pairs64, radius):
    model, pairs, channels = model64, pairs64, [1, 4, 9]
    every = list(range(32))
    expected = {
        "cheese_channels/cheese_cells": _plain_recovery(
            model, pairs, lambda acts: {LAYER: _cheese_cell_override(pairs, channels, radius, acts)}),
        "cheese_channels/all_cells": _plain_recovery(
            model, pairs, lambda acts: {LAYER: _cheese_cell_override(pairs, channels, 4, acts)}),
        "all_channels/cheese_cells": _plain_recovery(
            model, pairs, lambda acts: {LAYER: _cheese_cell_override(pairs, every, radius, acts)}),
    }
    got = Patcher(model, pairs, "grid", [LAYER]).hypothesis(LAYER, channels, radius)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    # the cells are a restriction: fewer values patched than the whole channels
    assert got["cheese_channels/cheese_cells"] != got["cheese_channels/all_cells"] or radius == 1


def test_per_pair_cells_are_the_two_cheese_squares(model, pairs):
    patcher = Patcher(model, pairs, "grid", [LAYER, "embedder.relufc_out"])
    cells = patcher.cells(LAYER, 0)
    for index, (state, moved) in enumerate(zip(pairs.clean_states, pairs.corrupted_cheese)):
        assert maze_state.cheese_square(pairs.clean_states[index]) != moved
        expected = {_cell(state, maze_state.cheese_square(state)), _cell(state, moved)}
        assert {tuple(cell) for cell in cells[index].nonzero().tolist()} == expected
    with pytest.raises(ValueError, match="no cells"):
        patcher.cells("embedder.relufc_out", 0)


@pytest.fixture(scope="module")
def default_run(model, tmp_path_factory):
    train_config = OmegaConf.create({"env": {"obs": "grid", "distribution_mode": "easy", "max_maze_size": 9}})
    ctx = EvalContext(model, train_config, str(tmp_path_factory.mktemp("patching")), seed=0, progress=False)
    config = ActivationPatching.Config(pairs=6, min_logit_gap=0.0, channel_mazes=8, top_channels=3)
    threads = torch.get_num_threads()  # module fixtures run before the one_thread fixture
    torch.set_num_threads(1)
    try:
        result = ActivationPatching(config).run(ctx)
    finally:
        torch.set_num_threads(threads)
    return {metric.name: metric.value for metric in result.metrics}, config


def test_defaults_patch_the_cheese_channels_chosen_on_the_checkpoint_at_the_cheese_cells(model, default_run):
    metrics, config = default_run
    assert config.layer == LAYER and config.channels == "auto" and config.radius == 0
    env = TrainEnv(obs="grid", mode="easy", max_size=9)
    scores = cheese_channel_scores(model, cheese_channel_states(env, 8, 1), "grid", LAYER)
    channels = choose_channels(scores, 3, 1.0)
    assert [metrics[f"cheese_channel/rank={rank}"] for rank in range(3)] == channels
    assert "cheese_channel/rank=3" not in metrics
    mazes = interp_mazes(env, 6, 0, "decision")
    pairs = make_pairs(model, [m.state for m in mazes], "grid", 0)
    expected = _plain_recovery(model, pairs, lambda acts: {LAYER: _cheese_cell_override(pairs, channels, 0, acts)})
    # float32 forwards by two routes: equal up to float32 rounding of a difference of logit differences
    assert metrics["recovery/cheese_channels/cheese_cells"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert metrics["pairs_used"] == 6


def test_the_whole_layer_patch_is_a_control_that_recovers_one(default_run):
    metrics, _ = default_run
    assert metrics["control/whole_layer/block2.res1.resadd_out"] == pytest.approx(1.0, abs=1e-6)
    assert not [name for name in metrics if name.startswith("layer/")]  # never reported as a finding
    assert metrics["recovery/cheese_channels/cheese_cells"] != pytest.approx(1.0, abs=1e-3)
    assert "channel/block2.res1.resadd_out/max" in metrics


def test_published_channels_need_a_128_channel_layer():
    assert named_channels("published", 128, LAYER) == list(PUBLISHED_CHEESE_CHANNELS)
    assert named_channels("auto", 32, LAYER) is None
    assert named_channels([3, 1], 32, LAYER) == [3, 1]
    with pytest.raises(ValueError, match="has 32; use channels: auto"):
        named_channels("published", 32, LAYER)
    with pytest.raises(ValueError, match=">= 32"):
        named_channels([40], 32, LAYER)


@pytest.mark.parametrize("bad", [{"channels": "cheesy"}, {"channels": []}, {"channels": [1, 1]},
                                 {"channels": [-1]}, {"radius": -1}, {"top_channels": 0}])
def test_bad_channel_configs_are_one_line_value_errors(bad):
    with pytest.raises(ValueError) as error:
        ActivationPatching.Config(**bad)
    assert "\n" not in str(error.value)
