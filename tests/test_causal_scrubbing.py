"""Causal scrubbing: resampled inputs agree (and differ) in exactly the named features; scrubbing
from the input itself recovers the original loss (loss recovered 1); scrubbed logits match a
plain-torch forward with the activation swapped in; the loss and cancellation numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from envs import maze_state
from evals.causal_scrubbing import (FEATURES, MazePool, Scrub, cancellation, loss_recovered, per_input_loss,
                                    scrubbed_logits)
from evals.maze_inputs import action_kl, cached_activations, interp_mazes
from evals.maze_interp_common import TrainEnv, policy_input
from models.impala import ImpalaPolicy
from plain_impala import peaked_policy, plain_forward

pytestmark = pytest.mark.usefixtures("one_thread")
LAYER = "embedder.block2.res1.resadd_out"


@pytest.fixture(scope="module")
def model() -> ImpalaPolicy:
    return peaked_policy()


@pytest.fixture(scope="module")
def pool() -> MazePool:
    env = TrainEnv(obs="grid", mode="easy", max_size=9)
    return MazePool([m.state for m in interp_mazes(env, 24, 0, mouse="random", min_size=5)])


def _features(state: bytes) -> dict[str, object]:
    inner = maze_state.inner_grid(state)
    return {"cheese_location": maze_state.cheese_square(state), "mouse_location": maze_state.mouse_square(state),
            "maze_layout": (inner == maze_state.WALL).tobytes() + bytes([inner.shape[0]])}


@pytest.mark.parametrize("named", [["cheese_location"], ["mouse_location"], ["maze_layout"],
                                   ["maze_layout", "mouse_location"], list(FEATURES)])
def test_resampled_inputs_agree_or_differ_in_the_named_features(pool, named):
    rng = np.random.default_rng(0)
    drawn = 0
    for index, state in enumerate(pool.states):
        original = _features(state)
        agree = pool.resample(index, set(named), set(), rng)
        differ = pool.resample(index, set(), set(named), rng)
        for other in (agree, differ):
            if other is not None:
                assert maze_state.layout(other).maze_dim == maze_state.layout(state).maze_dim
                assert maze_state.cheese_square(other) != maze_state.mouse_square(other)
        if agree is None or differ is None:
            continue
        drawn += 1
        for feature in named:
            assert _features(agree)[feature] == original[feature], feature
            assert _features(differ)[feature] != original[feature], feature
    assert drawn >= len(pool.states) // 2


def test_agreeing_on_everything_gives_back_the_input(pool):
    rng = np.random.default_rng(1)
    for index, state in enumerate(pool.states):
        assert pool.resample(index, set(FEATURES), set(), rng) == state


def test_scrubbing_from_the_input_itself_recovers_the_original_loss(model, pool):
    x = policy_input(model, pool.states, "grid")
    original, _ = cached_activations(model, x, [])
    scrub = Scrub(LAYER, ["cheese_location"])
    same = scrubbed_logits(model, x, [(scrub, x)])
    assert torch.equal(same, original)
    assert torch.equal(scrubbed_logits(model, x, []), original)
    other = scrubbed_logits(model, x, [(scrub, x.roll(1, 0))])  # every activation from another maze
    for loss in ("kl", "nll"):
        base = per_input_loss(original, original, loss)
        assert loss_recovered(base, per_input_loss(original, same, loss), per_input_loss(original, other, loss)) == 1.0
    assert torch.all(per_input_loss(original, original, "kl") == 0)


def test_scrubbed_logits_match_a_plain_forward_with_the_activation_swapped(model, pool):
    x = policy_input(model, pool.states, "grid")
    source = x.roll(3, 0)
    scrubs = [(Scrub(LAYER, ["maze_layout"], channels=[1, 5], cells=[[0, 1], [2, 2]]), source),
              (Scrub("embedder.block1.maxpool_out", ["cheese_location"], channels=[0]), x.roll(1, 0))]
    with torch.no_grad():
        _, _, source_acts = plain_forward(model, source)
        _, _, other_acts = plain_forward(model, x.roll(1, 0))

        def swap_cells(activation):
            out = activation.clone()
            for channel in (1, 5):
                for row, col in ((0, 1), (2, 2)):
                    out[:, channel, row, col] = source_acts[LAYER][:, channel, row, col]
            return out

        def swap_channel(activation):
            out = activation.clone()
            out[:, 0] = other_acts["embedder.block1.maxpool_out"][:, 0]
            return out

        override = {LAYER: swap_cells, "embedder.block1.maxpool_out": swap_channel}
        expected, _, _ = plain_forward(model, x, override=override)
    torch.testing.assert_close(scrubbed_logits(model, x, scrubs), expected, rtol=1e-4, atol=1e-5)


def test_losses_and_cancellation_numbers():
    original = torch.tensor([[0.0, 1.0, 2.0]]).repeat(2, 1)
    other = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])
    kl = per_input_loss(original, other, "kl")
    torch.testing.assert_close(kl, action_kl(original, other))
    assert kl[1] == 0 and kl[0] > 0
    nll = per_input_loss(original, other, "nll")  # greedy action 2
    torch.testing.assert_close(nll, -torch.log_softmax(other.double(), -1)[:, 2])
    numbers = cancellation(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0]))
    assert numbers == {"abs_mean_change": 0.0, "mean_abs_change": 1.0, "worst_increase": 1.0}
    assert loss_recovered(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([3.0])) == pytest.approx(0.5)
    assert np.isnan(loss_recovered(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([1.0])))
    with pytest.raises(ValueError, match="loss must be"):
        per_input_loss(original, other, "mse")


def test_a_maze_without_a_same_size_partner_cannot_swap_layouts(pool):
    alone = MazePool(pool.states[:1])
    rng = np.random.default_rng(0)
    assert alone.resample(0, {"cheese_location"}, set(), rng) is None  # needs another maze
    kept = alone.resample(0, {"maze_layout"}, set(), rng)  # same maze, cheese and mouse moved
    assert kept is not None and _features(kept)["maze_layout"] == _features(pool.states[0])["maze_layout"]
