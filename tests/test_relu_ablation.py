"""ReLU ablation: ablating nothing gives agreement 1 and KL 0; each ReLU (and all of them) replaced
by the identity matches a plain-torch forward without that ReLU; the pre-activation sites exist."""

from __future__ import annotations

import pytest
import torch

import shardlab.evals.maze.relu_ablation as relu_ablation
from shardlab.evals.maze.inputs import action_kl
from shardlab.evals.maze.relu_ablation import ablated_logits, agreement, check_relu_sites, pre_relu_site, relu_sites
from shardlab.models.hooks import hook_names
from shardlab.models.impala import ImpalaPolicy
from plain_impala import peaked_policy, plain_forward

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
    same_action, same_move = agreement(original, logits)
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
