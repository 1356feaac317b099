"""ReLU ablation: ablating nothing gives agreement 1 and KL 0; each ReLU (and all of them) replaced
by the identity matches a plain-torch forward without that ReLU; the pre-activation sites exist;
the eval's headline agreement is on folded moves (the raw action's is secondary), its rows match a
plain recomputation and carry intervals."""

from __future__ import annotations

import pytest
import torch

import shardlab.evals.maze.relu_ablation as relu_ablation
from shardlab.evals.maze.inputs import action_kl
from shardlab.evals.maze.relu_ablation import ablated_logits, agreement, check_relu_sites, pre_relu_site, relu_sites
from shardlab.models.hooks import hook_names
from shardlab.models.impala import ImpalaPolicy
from plain_impala import peaked_policy, plain_forward
from tiny_suites import assert_rows_have_intervals

pytestmark = pytest.mark.usefixtures("one_thread")
SITES = [f"embedder.block{b}.res{r}.relu{i}_out" for b in (1, 2, 3) for r in (1, 2) for i in (1, 2)] \
    + ["embedder.relu3_out", "embedder.relufc_out"]


@pytest.fixture(scope="module")
def model() -> ImpalaPolicy:
    return peaked_policy()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.rand(6, 3, 15, 15, generator=torch.Generator().manual_seed(3))


def test_relu_sites_and_their_inputs(model, x):
    assert relu_sites(model) == SITES
    names = set(hook_names(model))
    assert all(pre_relu_site(site) in names for site in SITES)
    check_relu_sites(model, x, SITES)
    with pytest.raises(ValueError, match="not a ReLU site"):
        pre_relu_site("embedder.block1.maxpool_out")


def test_the_check_notices_a_site_that_is_not_relu_of_its_input(model, x, monkeypatch):
    monkeypatch.setattr(relu_ablation, "pre_relu_site", lambda site: "embedder.block1.res1.conv1")
    with pytest.raises(ValueError, match="do not hold relu"):
        relu_ablation.check_relu_sites(model, x, ["embedder.block1.res1.relu1_out"])


def test_ablating_nothing_changes_nothing(model, x):
    with torch.no_grad():
        original = model(x)[0]
    logits = ablated_logits(model, x, [])
    assert torch.equal(logits, original)
    same_move, same_action = agreement(original, logits)
    assert same_action.mean() == 1 and same_move.mean() == 1 and action_kl(original, logits).max() == 0


@pytest.mark.parametrize("sites", [[site] for site in SITES] + [SITES])
def test_identity_relus_match_the_plain_forward(model, x, sites):
    with torch.no_grad():
        expected, _, _ = plain_forward(model, x, identity_relus=frozenset(sites))
        original = model(x)[0]
    logits = ablated_logits(model, x, sites)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(logits, original)  # the ReLU mattered for some input
    assert all(not m._forward_hooks for m in model.modules())


# -- the eval's rows ---------------------------------------------------------------------------
# procgen's 15 actions by the move each makes in the maze, written out here (not read from the env)
MOVE_OF_ACTION = {0: "left", 1: "left", 2: "left", 3: "down", 4: "noop", 5: "up", 6: "right", 7: "right",
                  8: "right", **{a: "noop" for a in range(9, 15)}}


def _folded_move(logits: torch.Tensor) -> list[str]:
    """The most likely move of each row: summed action probabilities per move."""
    probs = logits.double().softmax(-1)
    moves = sorted(set(MOVE_OF_ACTION.values()))
    totals = torch.stack([probs[:, [a for a, m in MOVE_OF_ACTION.items() if m == move]].sum(-1) for move in moves], -1)
    return [moves[i] for i in totals.argmax(-1).tolist()]


def _run(tmp_path, **config):
    from omegaconf import OmegaConf

    from shardlab.evals.suite.context import EvalContext

    train_config = OmegaConf.create({"env": {"obs": "grid", "distribution_mode": "easy", "max_maze_size": 7}})
    ctx = EvalContext(peaked_policy(seed=1, image_size=15, gain=30.0), train_config, str(tmp_path), seed=3,
                      progress=False)
    return relu_ablation.ReluAblation(relu_ablation.ReluAblation.Config(**config)).run(ctx)


def test_agreement_is_on_folded_moves_and_the_raw_action_is_secondary(tmp_path, monkeypatch):
    """Two procgen actions of one move (6 and 7: both right) are the same decision in the maze: the
    headline agreement counts them as agreeing, ``agreement/raw_action`` does not."""
    original = torch.zeros(6, 15)
    original[:, 6] = 5.0  # right, by action 6
    ablated = torch.zeros(6, 15)
    ablated[[0, 1, 2], 7] = 5.0  # right, by another action
    ablated[[3, 4], 6] = 5.0  # the same action
    ablated[5, 0] = 5.0  # left
    monkeypatch.setattr(relu_ablation, "check_relu_sites", lambda *args: None)
    monkeypatch.setattr(relu_ablation, "cached_activations", lambda model, x, layers: (original, {}))
    monkeypatch.setattr(relu_ablation, "ablated_logits", lambda model, x, sites: ablated)
    result = _run(tmp_path, mazes=6, mouse="start", relus=["embedder.relufc_out"])
    metrics = {m.name: m for m in result.metrics}
    moves = [a == b for a, b in zip(_folded_move(original), _folded_move(ablated))]
    assert sum(moves) == 5
    for name in ("relufc_out", "all"):
        assert metrics[f"{name}/agreement"].value == pytest.approx(5 / 6)
        assert metrics[f"{name}/agreement/raw_action"].value == pytest.approx(2 / 6)
        assert metrics[f"{name}/agreement"].n == 6 and metrics[f"{name}/agreement"].unit == "mazes"
    assert not any(name.endswith("move_agreement") for name in metrics)
    assert_rows_have_intervals(result.metrics)


def test_the_eval_rows_match_a_plain_recomputation(tmp_path):
    from shardlab.evals.maze.common import policy_input, train_env
    from shardlab.evals.maze.inputs import interp_mazes
    from omegaconf import OmegaConf

    sites = ["embedder.block2.res1.relu2_out", "embedder.relufc_out"]
    result = _run(tmp_path, mazes=5, mouse="random", relus=sites)
    metrics = {m.name: m for m in result.metrics}
    train_config = OmegaConf.create({"env": {"obs": "grid", "distribution_mode": "easy", "max_maze_size": 7}})
    policy = peaked_policy(seed=1, image_size=15, gain=30.0)
    x = policy_input(policy, [m.state for m in interp_mazes(train_env(train_config), 5, 3, "random")], "grid")
    with torch.no_grad():
        original = plain_forward(policy, x)[0]
    for name, ablated in (("block2.res1.relu2_out", sites[:1]), ("relufc_out", sites[1:]), ("all", sites)):
        with torch.no_grad():
            logits = plain_forward(policy, x, identity_relus=frozenset(ablated))[0]
        same = [a == b for a, b in zip(_folded_move(original), _folded_move(logits))]
        raw = (original.argmax(-1) == logits.argmax(-1)).double()
        kl = (original.log_softmax(-1).exp() * (original.log_softmax(-1) - logits.log_softmax(-1))).sum(-1)
        assert metrics[f"{name}/agreement"].value == pytest.approx(sum(same) / 5)
        assert metrics[f"{name}/agreement/raw_action"].value == pytest.approx(float(raw.mean()))
        assert metrics[f"{name}/kl"].value == pytest.approx(float(kl.mean()), rel=1e-3, abs=1e-6)
        assert metrics[f"{name}/kl"].n == 5
    assert_rows_have_intervals(result.metrics)
