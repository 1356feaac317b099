"""Activation patching on a small random policy: clean into clean and whole cut layers recover
exactly 1, single-channel and cheese-channel-at-cheese-cell recoveries match a plain-torch forward
with those values overridden by hand, the logit difference matches folded probabilities, the
clean/corrupted pairs differ only in the cheese, and the eval's defaults test a tenth of the layer's
channels, chosen on the checkpoint on mazes apart from the pairs; small-gap pairs are excluded and
counted, the headline recovery and its bootstrap interval match a plain forward and a hand-drawn
bootstrap, and every row is an estimate with an interval or a count/setting (the whole-layer patch
is a control, recovery 1)."""

from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from shardlab.envs import maze_state
from shardlab.envs.eval_mazes import eval_mazes
from shardlab.evals.maze.activation_patching import (ActivationPatching, Patcher, best_channel_estimate,
                                                     logit_difference, make_pairs, patched_logits, recovery,
                                                     recovery_estimate)
from shardlab.evals.maze.common import (PUBLISHED_CHEESE_CHANNELS, TrainEnv, cheese_channel_scores,
                                        cheese_channel_states, choose_channels, default_channel_count, first_move,
                                        named_channels)
from shardlab.evals.maze.inputs import cached_activations, hook_points, interp_mazes
from shardlab.evals.maze.vector_field import ACTION_GROUPS
from shardlab.evals.suite.context import EvalContext
from shardlab.models.impala import ImpalaPolicy
from plain_impala import peaked_policy, plain_forward
from tiny_suites import assert_rows_have_intervals

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


ENV = TrainEnv(obs="grid", mode="easy", max_size=9)


def _plain_lds(model, pairs, override=None) -> np.ndarray:
    """(3, N) per-pair LD of the clean, corrupted and patched runs, from the plain-torch forward."""
    moves = (pairs.towards_clean, pairs.towards_corrupted)
    with torch.no_grad():
        clean, _, clean_acts = plain_forward(model, pairs.clean)
        corrupted, _, _ = plain_forward(model, pairs.corrupted)
        patched, _, _ = plain_forward(model, pairs.corrupted, override=override(clean_acts) if override else None)
    return np.stack([logit_difference(z, *moves).numpy() for z in (clean, corrupted, patched)])


@pytest.fixture(scope="module")
def default_run(model, tmp_path_factory):
    """The eval with its default hypothesis on 6 pairs, ``min_logit_gap`` set between the plain
    forward's 2nd and 3rd smallest |LD_clean − LD_corrupted|, so exactly two pairs are skipped."""
    mazes = interp_mazes(ENV, 6, 0, "decision")
    pairs = make_pairs(model, [m.state for m in mazes], "grid", 0)
    clean, corrupted, _ = _plain_lds(model, pairs)
    gaps = np.sort(np.abs(clean - corrupted))
    assert gaps[2] - gaps[1] > 1e-3  # a threshold float32 rounding cannot move a pair across
    train_config = OmegaConf.create({"env": {"obs": "grid", "distribution_mode": "easy", "max_maze_size": 9}})
    ctx = EvalContext(model, train_config, str(tmp_path_factory.mktemp("patching")), seed=0, progress=False)
    config = ActivationPatching.Config(pairs=6, min_logit_gap=float(gaps[1:3].mean()), channel_mazes=8)
    threads = torch.get_num_threads()  # module fixtures run before the one_thread fixture
    torch.set_num_threads(1)
    try:
        result = ActivationPatching(config).run(ctx)
    finally:
        torch.set_num_threads(threads)
    return {metric.name: metric for metric in result.metrics}, config, mazes, pairs


def test_the_default_hypothesis_is_a_tenth_of_a_32_channel_layer(default_run):
    metrics, config, _, _ = default_run
    ranks = [name for name in metrics if re.fullmatch(r"cheese_channel/rank=\d+", name)]
    assert len(ranks) <= 3  # the old default chose 11 of the 32 channels
    assert config.top_channels is None and default_channel_count(32) == 3
    assert config.layer == LAYER and config.channels == "auto" and config.radius == 0
    assert metrics["cheese_channels/count"].value == 3 and metrics["cheese_channels/count"].kind == "setting"
    assert metrics["cheese_channels/fraction"].value == pytest.approx(3 / 32)
    assert metrics["cheese_channels/fraction"].kind == "setting"


def test_default_channel_count_is_a_tenth_of_the_layer():
    assert [default_channel_count(c) for c in (1, 5, 10, 30, 32, 64, 128)] == [1, 1, 1, 3, 3, 6, 12]


def test_channels_are_chosen_on_mazes_that_share_no_layout_with_the_pairs(model, default_run):
    metrics, _, mazes, _ = default_run
    states, excluded = cheese_channel_states(ENV, 8, 1, exclude=[m.state for m in mazes])
    walls = lambda state: maze_state.inner_grid(state) == maze_state.WALL  # noqa: E731
    for state in states:  # an independent check of the layout key: wall grids compared directly
        assert not any(walls(state).shape == walls(m.state).shape and np.array_equal(walls(state), walls(m.state))
                       for m in mazes)
    assert metrics["cheese_channels/selection_mazes"].value == len(states) == 8 - excluded
    assert metrics["cheese_channels/selection_mazes_excluded"].value == excluded
    channels = choose_channels(cheese_channel_scores(model, states, "grid", LAYER), 3, 1.0)
    assert [metrics[f"cheese_channel/rank={rank}"].value for rank in range(3)] == channels
    # a shared layout is dropped, wherever cheese and mouse are
    drawn, _ = cheese_channel_states(ENV, 8, 1)
    moved = maze_state.without_cheese(drawn[0])
    kept, dropped = cheese_channel_states(ENV, 8, 1, exclude=[moved])
    assert dropped >= 1 and drawn[0] not in kept and len(kept) == 8 - dropped


def test_small_gap_pairs_are_excluded_counted_and_recovery_matches_a_plain_forward(model, default_run):
    metrics, config, _, pairs = default_run
    assert metrics["pairs_used"].value == 4 and metrics["pairs_skipped_small_gap"].value == 2
    assert all(metrics[name].kind == "count" for name in ("pairs_used", "pairs_skipped_small_gap",
                                                          "mazes_without_corruption"))
    channels = [int(metrics[f"cheese_channel/rank={rank}"].value) for rank in range(3)]
    clean, corrupted, _ = _plain_lds(model, pairs)
    kept = pairs.subset(torch.from_numpy(np.abs(clean - corrupted) > config.min_logit_gap))
    clean, corrupted, patched = _plain_lds(
        model, kept, lambda acts: {LAYER: _cheese_cell_override(kept, channels, 0, acts)})
    expected = (patched.mean() - corrupted.mean()) / (clean.mean() - corrupted.mean())
    got = metrics["recovery/cheese_channels/cheese_cells"]
    # float32 forwards by two routes: equal up to float32 rounding of a difference of logit differences
    assert got.value == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert got.n == 4 and got.unit == "maze pairs" and got.method == "bootstrap"
    everything = _plain_lds(model, pairs, lambda acts: {LAYER: _cheese_cell_override(pairs, channels, 0, acts)})
    assert abs(recovery(everything[2], everything[0], everything[1]) - expected) > 1e-3  # skipping mattered
    # the interval: the same resamples drawn here by hand (seed 0, 2000 draws of 4 pairs), ratio recomputed
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(2000):
        index = rng.integers(0, 4, 4)
        gap = clean[index].mean() - corrupted[index].mean()
        draws.append((patched[index].mean() - corrupted[index].mean()) / gap if gap != 0 else np.nan)
    low, high = np.quantile(np.array(draws)[np.isfinite(draws)], [0.025, 0.975])
    # a resample's small gap magnifies the float32 rounding of the two routes, hence 1e-3
    assert got.ci_low == pytest.approx(low, rel=1e-3, abs=1e-5)
    assert got.ci_high == pytest.approx(high, rel=1e-3, abs=1e-5)
    assert low < expected < high
    assert metrics["clean_logit_diff"].value == pytest.approx(clean.mean(), rel=1e-5, abs=1e-6)


def test_every_row_is_an_estimate_with_an_interval_or_a_count_or_setting(default_run):
    metrics, _, _, _ = default_run
    assert_rows_have_intervals(list(metrics.values()))
    assert metrics["channel/block2.res1.resadd_out/max"].note  # exploratory: chosen on the same pairs


def test_the_whole_layer_patch_is_a_control_that_recovers_one(default_run):
    metrics, _, _, _ = default_run
    assert metrics["control/whole_layer/block2.res1.resadd_out"].value == pytest.approx(1.0, abs=1e-6)
    assert not [name for name in metrics if name.startswith("layer/")]  # never reported as a finding
    assert metrics["recovery/cheese_channels/cheese_cells"].value != pytest.approx(1.0, abs=1e-3)
    assert "channel/block2.res1.resadd_out/max" in metrics


def test_a_gap_too_small_to_normalise_by_gives_an_undefined_recovery_with_a_reason():
    tied = recovery_estimate([0.5, 0.5], [1.0, -1.0], [0.0, 0.0])  # mean gap 0 though each pair's is 1
    assert not tied.defined and "too small to normalise by" in tied.note and tied.n == 2
    empty = recovery_estimate([], [], [], 0.05)
    assert not empty.defined and "no maze pair" in empty.note and empty.n == 0
    assert not best_channel_estimate(np.zeros((3, 2)), [1.0, -1.0], [0.0, 0.0]).defined
    patched = np.array([[0.0, 1.0, 0.5], [2.0, 2.0, 1.0]])
    best = best_channel_estimate(patched, [2.0, 2.0, 2.0], [0.0, 0.0, 0.0])
    assert best.value == pytest.approx(max(recovery(row, [2.0] * 3, [0.0] * 3) for row in patched))


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
