"""Activation patching on a small random policy: clean into clean and whole cut layers recover
exactly 1, single-channel recovery matches a plain-torch forward with that channel overridden, the
logit difference matches folded probabilities, and the clean/corrupted pairs differ only in the
cheese."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs import maze_state
from envs.eval_mazes import eval_mazes
from evals.activation_patching import logit_difference, make_pairs, patched_logits, recovery
from evals.maze_inputs import cached_activations, hook_points
from evals.maze_interp_common import first_move
from evals.vector_field import ACTION_GROUPS
from models.impala import ImpalaPolicy
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
